"""Crop-resistant hash: segmentation as ImageHash, by connected-component labelling, then a dhash per
segment."""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from simbench.data.images import UnreadableImage, open_image
from simbench.features.fasthash.batch import failure_reason, original_size
from simbench.features.fasthash.kernels import dhash_bits
from simbench.features.fasthash.transforms import LANCZOS


@dataclass
class Segments:
    """Segments of the segmentation image, in ImageHash's order: labels (S, S) int32 (0 = none) and, per
    segment, its pixel count, centroid (row, col) and bounding box (min_row, min_col, max_row, max_col)."""

    labels: np.ndarray
    sizes: np.ndarray
    centroids: np.ndarray
    boxes: np.ndarray


def find_segments(pixels: np.ndarray, segment_threshold: float = 128, min_segment_size: int = 500) -> Segments:
    """The bright ("hill") and dark ("valley") regions of ImageHash.crop_resistant_hash, after Steinebach,
    Liu and Yannikos, "Efficient Cropping-Resistant Robust Image Hashing" (ARES 2014, DOI 10.1109/ARES.2014.85).

    ImageHash grows each region by a set-based flood fill (4-neighbours) from the first remaining pixel in
    row-major order: hills first, then valleys. That is connected-component labelling, in the order of each
    component's first pixel. Its quirks are kept so that the segments are the same: the valley search stops
    once its count of segmented pixels (which includes the 4 * S pixels of the frame around the image and
    leaves out the pixel of one-pixel regions) reaches S * S; regions must have more than min_segment_size
    pixels. Where ImageHash would run out of valleys (and raise), the segments found so far are returned.
    """
    from scipy import ndimage

    n_rows, n_cols = pixels.shape
    hills = pixels > segment_threshold
    regions = []  # (label image, label, size) in ImageHash's order
    counted = 2 * (n_rows + n_cols)  # the frame of pixels around the image, pre-marked as segmented
    target = n_rows * n_cols
    for mask, is_valley in ((hills, False), (~hills, True)):
        # 4-connected components, ordered by their first pixel in row-major order
        labels, n = ndimage.label(mask)
        if n == 0:
            continue
        flat = labels.ravel()
        ids, first = np.unique(flat, return_index=True)
        keep = ids > 0
        ids, first = ids[keep], first[keep]
        counts = np.bincount(flat, minlength=n + 1)
        for lab in ids[np.argsort(first, kind="stable")]:
            if is_valley and counted >= target:
                break
            size = int(counts[lab])
            counted += size if size > 1 else 0  # a one-pixel region never enters ImageHash's set
            regions.append((labels, int(lab), size, is_valley))
    out = np.zeros(pixels.shape, np.int32)
    sizes, centroids, boxes = [], [], []
    rr, cc = np.indices(pixels.shape)
    for labels, lab, size, _ in regions:
        if size <= min_segment_size:
            continue
        member = labels == lab
        out[member] = len(sizes) + 1
        r, c = rr[member], cc[member]
        sizes.append(size)
        centroids.append((r.mean(), c.mean()))
        boxes.append((r.min(), c.min(), r.max(), c.max()))
    return Segments(out, np.array(sizes, np.int64), np.array(centroids, np.float64).reshape(-1, 2),
                    np.array(boxes, np.int64).reshape(-1, 4))


@dataclass(frozen=True)
class CropResistantSpec:
    """Parameters of the crop-resistant hash (ImageHash.crop_resistant_hash with dhash segment hashes)."""

    hash_size: int = 8
    limit_segments: int | None = None
    segment_threshold: int = 128
    min_segment_size: int = 500
    segmentation_image_size: int = 300
    compat: bool = False
    min_decode_size: int = 300


@dataclass
class SegmentHashes:
    """Segment hashes of one image: bits (K, nbits), centroids (K, 2) x, y in original pixels, sizes (K,),
    and the original image size (width, height)."""

    bits: np.ndarray
    points: np.ndarray
    sizes: np.ndarray
    image_size: tuple[int, int]


def crop_resistant_hash(image: Image.Image, spec: CropResistantSpec,
                        original_size: tuple[int, int] | None = None) -> SegmentHashes:
    """Crop-resistant hash, after Steinebach, Liu and Yannikos (ARES 2014) as ImageHash.crop_resistant_hash.

    Segment a blurred greyscale thumbnail into bright and dark regions, then dhash the bounding box of each
    region in the image. `image` may be a reduced decode of the original (fast path): boxes are scaled to it,
    and points are reported in original_size pixels.
    """
    size = spec.segmentation_image_size
    w, h = image.size
    ow, oh = original_size or (w, h)
    # greyscale thumbnail, blurred then median filtered, as ImageHash
    thumb = image.convert("L").resize((size, size), LANCZOS)
    thumb = thumb.filter(ImageFilter.GaussianBlur()).filter(ImageFilter.MedianFilter())
    seg = find_segments(np.array(thumb).astype(np.float32), spec.segment_threshold, spec.min_segment_size)
    boxes, sizes, centroids = seg.boxes, seg.sizes, seg.centroids
    if len(sizes) == 0:
        # no segment: one segment spanning the whole image
        boxes = np.array([[0, 0, size - 1, size - 1]])
        sizes = np.array([size * size])
        centroids = np.array([[(size - 1) / 2.0, (size - 1) / 2.0]])
    if spec.limit_segments:
        # keep the largest segments (a stable sort, as Python's sorted)
        order = np.argsort(-sizes, kind="stable")[:spec.limit_segments]
        boxes, sizes, centroids = boxes[order], sizes[order], centroids[order]
    # dhash of each segment's bounding box, cut from the image (ImageHash's float box, PIL rounds it)
    scale_w, scale_h = float(w) / size, float(h) / size
    crops = []
    for min_r, min_c, max_r, max_c in boxes:
        box = (min_c * scale_w, min_r * scale_h, (max_c + 1) * scale_w, (max_r + 1) * scale_h)
        crop = image.crop(box).convert("L").resize((spec.hash_size + 1, spec.hash_size), LANCZOS)
        crops.append(np.asarray(crop))
    bits = dhash_bits(np.stack(crops))
    # centroids (row, col) in segmentation pixels -> (x, y) in original pixels, at pixel centres
    points = np.column_stack([(centroids[:, 1] + 0.5) * ow / size, (centroids[:, 0] + 0.5) * oh / size])
    return SegmentHashes(bits, points.astype(np.float32), sizes.astype(np.float32), (ow, oh))


def crop_resistant_batch(spec: CropResistantSpec, items: Sequence[tuple[int, str]]
                         ) -> tuple[list[tuple[int, SegmentHashes]], list[tuple[int, str]]]:
    """Segment hashes of a batch of (row, path); compat decodes in full, otherwise a draft decode."""
    done, skipped = [], []
    for row, path in items:
        try:
            if spec.compat:
                image = open_image(path)
                original = image.size
            else:
                d = max(spec.min_decode_size, spec.segmentation_image_size)
                image = open_image(path, draft=(d, d), mode="L")
                original = original_size(path, image.size)
            done.append((row, crop_resistant_hash(image, spec, original)))
        except UnreadableImage as exc:
            skipped.append((row, str(exc)))
        except Exception as exc:
            skipped.append((row, failure_reason(exc)))
    return done, skipped


def reference_crop_resistant(spec: CropResistantSpec, items: Sequence[tuple[int, str]]
                             ) -> tuple[list[tuple[int, SegmentHashes]], list[tuple[int, str]]]:
    """The reference: imagehash.crop_resistant_hash per image (slow: a Python flood fill). Points are zeros."""
    import imagehash

    done, skipped = [], []
    for row, path in items:
        try:
            image = open_image(path)
            multi = imagehash.crop_resistant_hash(
                image, functools.partial(imagehash.dhash, hash_size=spec.hash_size), spec.limit_segments,
                spec.segment_threshold, spec.min_segment_size, spec.segmentation_image_size)
        except UnreadableImage as exc:
            skipped.append((row, str(exc)))
            continue
        except Exception as exc:  # e.g. ImageHash's flood fill running out of valleys
            skipped.append((row, failure_reason(exc)))
            continue
        bits = np.array([np.asarray(s.hash).ravel() for s in multi.segment_hashes], dtype=bool)
        k = len(bits)
        done.append((row, SegmentHashes(bits, np.zeros((k, 2), np.float32), np.zeros(k, np.float32),
                                        image.size)))
    return done, skipped
