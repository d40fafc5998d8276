"""``evaluate`` on bad input: clear errors, raised before any network runs."""

from __future__ import annotations

import numpy as np
import pytest

from saq_lightning.cli import main
from saq_lightning.metrics.evaluation import EvaluationSettings, evaluate_samples
from saq_lightning.metrics.inception import INCEPTION_URL
from saq_lightning.metrics.npz_format import SampleFormatError


def digits(n: int, labels: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"arr_0": rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)}
    if labels:
        arrays["arr_1"] = np.arange(n) % 10
    return arrays


def save(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_float_samples_are_refused_with_the_file_field_and_a_fix(tmp_path):
    path = save(tmp_path / "s.npz", arr_0=np.zeros((4, 8, 8, 1), np.float32))
    with pytest.raises(SampleFormatError, match=r"s\.npz:arr_0: images must be uint8 .*\.astype\(np\.uint8\)"):
        evaluate_samples(path)


def test_the_cli_prints_the_same_clear_error_and_exits_2(tmp_path, capsys):
    path = save(tmp_path / "s.npz", arr_0=np.zeros((4, 1, 8, 8), np.uint8))
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--samples", path])
    assert stop.value.code == 2 and "this looks like NCHW" in capsys.readouterr().err
    with pytest.raises(SampleFormatError, match="this looks like NCHW"):
        main(["evaluate", "--samples", path, "--traceback"])


def test_images_in_zero_one_are_refused(tmp_path):
    path = save(tmp_path / "s.npz", arr_0=np.ones((20, 8, 8, 1), np.uint8))
    with pytest.raises(SampleFormatError, match=r"images in \[0, 1\] cast to uint8"):
        evaluate_samples(path)


def test_a_reference_of_another_resolution_is_refused(tmp_path):
    samples = save(tmp_path / "s.npz", arr_0=np.full((4, 32, 32, 3), 9, np.uint8))
    reference = save(tmp_path / "r.npz", arr_0=np.full((4, 64, 64, 3), 9, np.uint8))
    with pytest.raises(SampleFormatError, match=r"r\.npz has images of 64x64x3 \(HxWxC\) but the samples .* are 32x32x3"):
        evaluate_samples(samples, reference, ["fid"])


def test_digit_metrics_refuse_a_reference_of_other_images(tmp_path):
    samples = save(tmp_path / "s.npz", **digits(20))
    reference = save(tmp_path / "r.npz", arr_0=np.full((30, 16, 16, 1), 9, np.uint8))
    with pytest.raises(SampleFormatError, match="has images of 16x16x1"):
        evaluate_samples(samples, reference, ["digits_fd"])


def test_missing_inception_weights_say_which_file_and_where_to_get_it(tmp_path):
    samples = save(tmp_path / "s.npz", arr_0=np.full((4, 32, 32, 3), 9, np.uint8))
    missing = tmp_path / "none.pth"
    with pytest.raises(FileNotFoundError, match=rf"Inception weights not found at {missing} .*{INCEPTION_URL}"):
        evaluate_samples(samples, samples, ["fid"], EvaluationSettings(inception_weights=str(missing)))


def test_missing_reference_file_is_named(tmp_path):
    samples = save(tmp_path / "s.npz", **digits(20))
    with pytest.raises(FileNotFoundError, match=r"reference file .*nothere\.npz not found"):
        evaluate_samples(samples, str(tmp_path / "nothere.npz"), ["digits_fd"])


def test_fewer_samples_than_a_metric_needs_is_an_error(tmp_path):
    samples = save(tmp_path / "s.npz", **digits(1))
    with pytest.raises(ValueError, match=r"digits_fd needs at least 2 samples, .*s\.npz has 1"):
        evaluate_samples(samples, metrics=["digits_fd"])


def test_kid_asked_for_with_fewer_samples_than_its_subset_size_is_an_error(tmp_path):
    samples = save(tmp_path / "s.npz", arr_0=np.full((50, 32, 32, 3), 9, np.uint8))
    with pytest.raises(ValueError, match=r"kid needs at least 1000 samples"):
        evaluate_samples(samples, samples, ["kid"])


def test_by_default_metrics_the_sample_count_cannot_support_are_skipped_with_a_note(tmp_path):
    samples = save(tmp_path / "s.npz", arr_0=np.full((4, 32, 32, 3), 9, np.uint8))
    result = evaluate_samples(samples)  # no reference: IS only, which needs 10 samples
    assert result.metrics == {}
    assert result.notes["inception_score"] == "skipped: needs 10 samples (is_splits)"


def test_class_accuracy_needs_labels(tmp_path):
    samples = save(tmp_path / "s.npz", **digits(20, labels=False))
    with pytest.raises(SampleFormatError, match="digits_accuracy needs class labels"):
        evaluate_samples(samples, metrics=["digits_accuracy"])


def test_clip_score_needs_prompts(tmp_path):
    samples = save(tmp_path / "s.npz", arr_0=np.full((4, 32, 32, 3), 9, np.uint8))
    with pytest.raises(ValueError, match="clip_score needs prompts"):
        evaluate_samples(samples, metrics=["clip_score"])


def test_unknown_metric_names_the_choices(tmp_path):
    samples = save(tmp_path / "s.npz", **digits(20))
    with pytest.raises(ValueError, match=r"unknown metrics \['fidd'\]; choose from"):
        evaluate_samples(samples, metrics=["fidd"])


def test_inception_metrics_without_a_reference_ask_for_one(tmp_path):
    samples = save(tmp_path / "s.npz", arr_0=np.full((40, 32, 32, 3), 9, np.uint8))
    with pytest.raises(ValueError, match=r"\['fid'\] need a reference"):
        evaluate_samples(samples, metrics=["fid"])


def test_each_metric_names_its_result_keys_once_and_every_key_has_a_label():
    from saq_lightning.metrics.evaluation import LABELS, METRICS

    keys = [key for m in METRICS.values() for key in m.keys]
    assert len(keys) == len(set(keys)) == len(LABELS)
    assert list(METRICS["sfid"].keys) == ["sfid_approx"]
    assert list(METRICS["is"].keys) == ["inception_score", "inception_score_std"]


def test_missing_clip_weights_are_refused_before_any_network_runs(tmp_path, monkeypatch):
    from saq_lightning.metrics import inception

    def no_network(*args, **kwargs):
        raise AssertionError("the Inception network ran before the CLIP weights were checked")

    monkeypatch.setattr(inception, "InceptionExtractor", no_network)
    samples = save(tmp_path / "s.npz", arr_0=np.full((20, 32, 32, 3), 9, np.uint8),
                   prompts=np.array(["a dog"] * 20))
    (tmp_path / "inception.pth").write_bytes(b"")
    settings = EvaluationSettings(inception_weights=str(tmp_path / "inception.pth"), clip_model="ViT-B-32",
                                  clip_weights=str(tmp_path / "none.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"CLIP weights not found at .*none\.safetensors"):
        evaluate_samples(samples, metrics=["is", "clip_score"], settings=settings)


def test_labels_outside_the_digits_classes_are_an_error_not_accuracy_zero(tmp_path, capsys):
    arrays = digits(20)
    arrays["arr_1"] = arrays["arr_1"] + 10  # e.g. the labels of another dataset
    path = save(tmp_path / "s.npz", **arrays)
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--samples", path, "--metrics", "[digits_accuracy]", "--device", "cpu"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "s.npz: arr_1 holds labels [10, 11, 12, 13, 14]" in err and "0..9" in err
    assert not (tmp_path / "eval.json").exists()


@pytest.mark.parametrize("reference", [["--reference", "digits"], []], ids=["digits-reference", "default"])
def test_wrong_size_digit_samples_name_the_size_not_inception(tmp_path, capsys, reference):
    path = save(tmp_path / "s.npz", arr_0=np.random.default_rng(0).integers(0, 256, (20, 16, 16, 1), dtype=np.uint8))
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--samples", path, *reference, "--device", "cpu"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "16x16x1" in err and "8x8x1" in err
    assert "weights" not in err and len([line for line in err.splitlines() if line.startswith("error:")]) == 1
