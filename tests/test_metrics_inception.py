"""Inception metrics through the real code path, offline: a random-weight file of the exact FID
Inception architecture (torch-fidelity's) is written by the test and loaded via the local-path
option. Images are few and tiny (Inception resizes them to 299x299; ~0.3 s per image on a CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from saq_lightning.metrics.evaluation import EvaluationSettings, evaluate_samples
from saq_lightning.metrics.inception import INCEPTION_URL, InceptionExtractor
from saq_lightning.metrics.reference_stats import InceptionReference

N = 8  # images per set


class _RandomInit(FeatureExtractorInceptionV3):
    """torch-fidelity's network keeping its random initialisation (ignores the state dict it loads)."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return None


def write_random_inception(folder) -> str:
    """A state dict of the FID Inception architecture with He-normal convolutions (PyTorch's
    default init shrinks activations through 90 layers until every image looks alike)."""
    empty = folder / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(0)
    net = _RandomInit("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    state = net.state_dict()
    for name, tensor in state.items():
        if name.endswith("conv.weight"):
            torch.nn.init.normal_(tensor, 0.0, (2.0 / tensor[0].numel()) ** 0.5)
    path = folder / "inception-random.pth"
    torch.save(state, path)
    return str(path)


def image_set(seed: int, shift: int = 0) -> np.ndarray:
    """``N`` smooth 16x16 RGB images (random 4x4 colour fields, upsampled), brightened by ``shift``."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(N, 3, 4, 4, generator=g) * 200
    x = torch.nn.functional.interpolate(low, size=(16, 16), mode="bilinear", align_corners=False) + shift
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inception")
    weights = write_random_inception(root)
    real, shifted = root / "real.npz", root / "shifted.npz"
    np.savez(real, arr_0=image_set(1))
    np.savez(shifted, arr_0=image_set(1, shift=60))
    return {"root": root, "weights": weights, "real": str(real), "shifted": str(shifted)}


def settings(files, **kw) -> EvaluationSettings:
    kw.setdefault("stats_cache", str(files["root"] / "cache"))
    return EvaluationSettings(inception_weights=files["weights"], batch_size=N, device="cpu", is_splits=2, **kw)


@pytest.fixture(scope="module")
def self_result(files):
    return evaluate_samples(files["real"], files["real"], ["fid", "sfid", "is", "precision_recall"], settings(files))


@pytest.fixture(scope="module")
def shifted_result(files, self_result):  # runs second: the reference statistics come from the cache
    return evaluate_samples(files["shifted"], files["real"], ["fid", "sfid"], settings(files))


def test_fid_of_a_set_against_itself_is_zero(self_result, shifted_result):
    assert abs(self_result.metrics["fid"]) < 1e-6 * shifted_result.metrics["fid"]


def test_fid_against_a_brightened_set_is_positive(shifted_result):
    assert shifted_result.metrics["fid"] > 1e-3


def test_sfid_is_zero_against_itself_positive_when_shifted_and_labelled_approximate(self_result, shifted_result):
    assert abs(self_result.metrics["sfid_approx"]) < 1e-6 * shifted_result.metrics["sfid_approx"]
    assert shifted_result.metrics["sfid_approx"] > 0
    assert self_result.notes["sfid_approx"].startswith("approximate")
    assert "sFID (approx.)" in self_result.to_markdown()


def test_precision_recall_of_a_set_against_itself_are_one_and_is_is_at_least_one(self_result):
    assert self_result.metrics["precision"] == 1.0 and self_result.metrics["recall"] == 1.0
    assert self_result.metrics["inception_score"] >= 1.0 - 1e-9


def test_reference_statistics_are_cached_and_reused(files, self_result, shifted_result):
    assert self_result.notes["reference_stats"].startswith("computed and cached at")
    assert shifted_result.notes["reference_stats"].startswith("cached")
    (cache,) = (files["root"] / "cache").glob("real.inception.*.stats.npz")
    ref = InceptionReference.load(cache)
    assert ref.image_shape == (16, 16, 3) and ref.pool.n == N and ref.features.shape == (N, 2048)


def test_a_statistics_file_serves_as_reference_with_the_same_fid(files, shifted_result):
    (cache,) = (files["root"] / "cache").glob("real.inception.*.stats.npz")
    again = evaluate_samples(files["shifted"], str(cache), ["fid"], settings(files))
    assert again.metrics["fid"] == pytest.approx(shifted_result.metrics["fid"], rel=1e-9)


def test_a_different_file_at_the_cache_path_is_never_overwritten(files, tmp_path, self_result):
    (cache,) = (files["root"] / "cache").glob("real.inception.*.stats.npz")
    ref = InceptionReference.load(cache)
    stale = tmp_path / cache.name
    InceptionReference(ref.pool, ref.spatial, ref.features, ref.image_shape, {**ref.meta, "key": "other"}).save(stale)
    before = stale.read_bytes()
    with pytest.raises(FileExistsError, match="holds statistics of another reference/network"):
        evaluate_samples(files["real"], files["real"], ["fid"], settings(files, stats_cache=str(tmp_path)))
    assert stale.read_bytes() == before


def test_pool_features_equal_torchmetrics_inception_with_the_same_local_weights(files):
    from torchmetrics.image.fid import NoTrainInceptionV3

    # antialias=False: torch-fidelity's TF1-compatible resize, as our extractor (and FID's definition) uses
    theirs = NoTrainInceptionV3("inception-v3-compat", ["2048"], files["weights"], antialias=False)
    images = torch.from_numpy(np.load(files["real"])["arr_0"][:3]).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = theirs(images)
    torch.testing.assert_close(InceptionExtractor(files["weights"])(images).pool, expected, rtol=1e-5, atol=1e-6)


def test_extractor_gives_pool_logit_and_spatial_features_for_grey_images(files):
    feats = InceptionExtractor(files["weights"])(torch.zeros(2, 1, 8, 8, dtype=torch.uint8) + 128)
    assert feats.pool.shape == (2, 2048) and feats.logits.shape == (2, 1008)
    assert feats.spatial.shape == (2, 7 * 17 * 17)  # ADM's first 7 channels of mixed_6/conv


def test_missing_weights_file_names_the_path_and_where_to_get_it(tmp_path):
    missing = tmp_path / "inception.pth"
    with pytest.raises(FileNotFoundError, match=rf"Inception weights not found at {missing}.*{INCEPTION_URL}"):
        InceptionExtractor(missing)


def test_a_weights_file_that_is_not_the_inception_state_dict_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="is not torch-fidelity's FID Inception state dict"):
        InceptionExtractor(path)


def test_result_files_hold_json_and_a_markdown_table(tmp_path, self_result):
    self_result.write(tmp_path / "eval.json", tmp_path / "eval.md")
    data = json.loads((tmp_path / "eval.json").read_text())
    assert set(data["metrics"]) >= {"fid", "sfid_approx", "inception_score", "precision", "recall"}
    assert data["num_samples"] == N and data["image_shape"] == [16, 16, 3]
    assert "| FID |" in (tmp_path / "eval.md").read_text()
