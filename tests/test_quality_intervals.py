"""Error bars of the quality tables: intervals over training seeds and paired bootstrap differences
(``saq_lightning/metrics/intervals.py``, ``benchmarks/quality_digits.py``'s cells and
``benchmarks/quality_intervals.py``)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from saq_lightning.metrics.intervals import paired_bootstrap_difference, seed_interval

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def quality():
    yield _load("quality_digits")
    sys.modules.pop("quality_digits", None)


@pytest.fixture(scope="module")
def intervals_script():
    yield _load("quality_intervals")
    sys.modules.pop("quality_intervals", None)


def test_seed_interval_is_students_t_with_n_minus_1_degrees_of_freedom():
    from scipy.stats import t

    iv = seed_interval([1.0, 2.0, 3.0])
    lo, hi = t.interval(0.95, 2, loc=2.0, scale=1.0 / math.sqrt(3))  # sd 1 over sqrt(n)
    assert (iv.mean, iv.sd, iv.n) == (2.0, 1.0, 3)
    assert iv.lo == pytest.approx(lo, abs=1e-12) and iv.hi == pytest.approx(hi, abs=1e-12)


def test_seed_prediction_interval_for_one_new_seed_is_wider_by_sqrt_n_plus_1():
    iv = seed_interval([0.30, 0.34, 0.35])
    half, pred_half = (iv.hi - iv.lo) / 2, (iv.pred_hi - iv.pred_lo) / 2
    assert pred_half / half == pytest.approx(math.sqrt(3 + 1), rel=1e-12)


def test_one_seed_has_no_interval():
    iv = seed_interval([0.4])
    assert iv.mean == 0.4 and iv.n == 1 and math.isnan(iv.lo) and math.isnan(iv.pred_hi)


def test_non_finite_seed_values_are_refused():
    with pytest.raises(ValueError, match="non-finite"):
        seed_interval([0.3, float("nan")])


def _mean_stat(values: list[np.ndarray]):
    return lambda k, idx: float(values[k][idx].mean())


def test_identical_rows_differ_by_exactly_zero_and_are_a_tie():
    x = np.random.default_rng(0).normal(size=100)
    d = paired_bootstrap_difference(_mean_stat([x]), 1, _mean_stat([x.copy()]), 1, 100, draws=200)
    assert (d.estimate, d.lo, d.hi) == (0.0, 0.0, 0.0) and d.tie


def test_pairing_over_shared_x_T_removes_the_noise_both_rows_share():
    # per-x_T values with sd 1 shared by both rows; A is B + 0.05 on every x_T: paired, the difference
    # is exactly 0.05 in every draw, although unpaired means of 100 values have sd 0.1 each
    x = np.random.default_rng(1).normal(size=100)
    d = paired_bootstrap_difference(_mean_stat([x + 0.05]), 1, _mean_stat([x]), 1, 100, draws=300)
    assert d.lo == pytest.approx(0.05, abs=1e-12) and d.hi == pytest.approx(0.05, abs=1e-12)
    assert not d.tie


def test_training_seed_spread_widens_the_difference_interval_into_a_tie():
    x = np.random.default_rng(2).normal(size=100)
    one_seed = paired_bootstrap_difference(_mean_stat([x + 0.05]), 1, _mean_stat([x]), 1, 100, draws=400)
    # three training seeds of A, offsets -0.3 / +0.05 / +0.4 around the same mean shift
    seeds = [x - 0.3, x + 0.05, x + 0.4]
    three = paired_bootstrap_difference(_mean_stat(seeds), 3, _mean_stat([x]), 1, 100, draws=400)
    assert three.estimate == pytest.approx(one_seed.estimate, abs=1e-12)
    assert not one_seed.tie and three.tie
    assert three.hi - three.lo > 0.3


def test_one_seed_bootstrap_agrees_with_scipys_paired_percentile_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(3)
    b = rng.normal(size=200)
    a = b + rng.normal(0.1, 0.5, size=200)
    ours = paired_bootstrap_difference(_mean_stat([a]), 1, _mean_stat([b]), 1, 200, draws=4000, seed=1)
    ref = bootstrap((a, b), lambda u, v, axis=-1: u.mean(axis) - v.mean(axis), paired=True, vectorized=True,
                    n_resamples=4000, method="percentile", random_state=2).confidence_interval
    # two independent Monte Carlo estimates of the same percentiles: agree to ~0.01 (interval ~0.14 wide)
    assert ours.lo == pytest.approx(ref.low, abs=0.012) and ours.hi == pytest.approx(ref.high, abs=0.012)


def _result(row, seed, solver, fd, dev=None):
    return {"row": row, "train_seed": seed, "solver": solver, "steps": 10, "guidance_scale": 2.0, "fd": fd,
            "class_accuracy": 1.0, "final_deviation": dev, "distance_to_fp_dpm2": 0.1}


def test_quality_cells_average_the_training_seeds_and_carry_their_interval(quality):
    results = [_result("FP", None, "dpm1", 0.9), _result("M", 0, "dpm1", 0.30, 0.1),
               _result("M", 1, "dpm1", 0.34, 0.1), _result("M", 2, "dpm1", 0.35, 0.1)]
    cells = {c["row"]: c for c in quality.aggregate(results)}
    assert cells["M"]["fd"] == pytest.approx(0.33, abs=1e-12) and cells["M"]["train_seeds"] == [0, 1, 2]
    assert cells["M"]["fd_interval"]["lo"] == pytest.approx(seed_interval([0.30, 0.34, 0.35]).lo, abs=1e-12)
    assert "fd_interval" not in cells["FP"]  # one run: no interval
    line = next(ln for ln in quality.markdown_table(results).splitlines() if ln.startswith("| M "))
    half = (cells["M"]["fd_interval"]["hi"] - cells["M"]["fd_interval"]["lo"]) / 2
    assert f"0.330 ± {half:.3f}" in line


def test_merge_keeps_every_training_seed_of_a_row(quality, tmp_path):
    import json

    payload = {"commit": "c", "samples": 10, "max_steps": 5, "guidance_scale": 2.0, "ptq": {}, "seconds": 1.0}
    for k in (0, 1):
        (tmp_path / f"p{k}.json").write_text(json.dumps({**payload, "results": [
            _result("FP", None, "dpm1", 0.9), _result("M", k, "dpm1", 0.3 + k / 10)]}))
    merged = quality.merge_payloads([tmp_path / "p0.json", tmp_path / "p1.json"])
    assert sorted((r["row"], r["train_seed"]) for r in merged["results"]) == [("FP", None), ("M", 0), ("M", 1)]


def test_bootstrapped_fd_on_all_samples_is_the_tables_torchmetrics_fd(quality, intervals_script, tmp_path):
    from saq_lightning.data.digits import digits_split
    from saq_lightning.metrics.digits_classifier import load_digits_classifier
    from saq_lightning.metrics.digits_quality import digits_fd
    from saq_lightning.metrics.digits_spaces import classifier_features, pixel_features
    from saq_lightning.metrics.feature_stats import feature_stats

    classifier, _ = load_digits_classifier()
    real, _ = digits_split("all")
    samples = (real[:60] + 0.3 * torch.randn(60, 1, 8, 8, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    ref = {"fd": feature_stats(classifier_features(classifier, real).numpy()),
           "pixel_fd": feature_stats(pixel_features(real).numpy())}
    fig = intervals_script.RowFigures([samples], classifier, None)
    ours = fig.statistic("fd", ref)(0, np.arange(60))
    assert ours == pytest.approx(digits_fd(classifier, samples, real), rel=1e-6)


def test_interval_script_compares_rows_from_their_kept_samples(quality, intervals_script, tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(40, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.arange(40) % 10
    cell = "dpm1@10@cfg2"
    quality.save_samples(tmp_path, "fp", None, cell, base, labels)
    quality.save_samples(tmp_path, "fp", None, "dpm2@10@cfg2", base, labels)
    for k in (0, 1):  # the "student" is FP itself at every seed: every difference is 0
        quality.save_samples(tmp_path, "w4a4_mixed_order", k, cell, base, labels)
    results = [_result("FP", None, "dpm1", 0.9), _result("FP", None, "dpm2", 0.4)]
    results += [_result("W4A4 mixed-order", k, "dpm1", 0.5) for k in (0, 1)]
    entries = intervals_script.compare_all({"results": results}, [tmp_path], draws=20)
    claims = {e["claim"]: e for e in entries}
    first = claims["MOTA student (DPM-1) beats FP DPM-1"]
    assert first["fd"]["estimate"] == pytest.approx(0.0, abs=1e-9) and first["fd"]["tie"]
    assert first["distance_to_fp_dpm2"]["estimate"] == pytest.approx(0.0, abs=1e-9)
    assert "distance_to_fp_dpm2" not in claims["MOTA student (DPM-1) matches FP DPM-2 (dual acceleration)"]
    assert intervals_script.verdict(first["fd"]) == "tie"


def test_a_statistic_biased_up_by_resampling_keeps_the_interval_around_the_estimate():
    # a statistic that grows with the number of repeated indices (as an FD of a resample does): the
    # draws all sit above the estimate, and a percentile interval would exclude the estimate itself
    x = np.random.default_rng(4).normal(size=200)

    def biased(values):
        return lambda k, idx: float(values[idx].mean()) + (len(idx) - len(np.unique(idx))) / len(idx)

    d = paired_bootstrap_difference(biased(x + 0.02), 1, lambda k, idx: 0.0, 1, 200, draws=500)
    assert d.lo < d.estimate < d.hi
    assert d.resampling_shift == pytest.approx(0.368, abs=0.02)  # (1 - 1/e) of n distinct: ~36.8 % repeats
    # the noise is the mean's: sd 1/sqrt(200) -> half-width ~1.96 * 0.0707 (+ the repeats' own spread)
    assert (d.hi - d.lo) / 2 == pytest.approx(0.139, abs=0.03)


def test_a_rerun_seed_is_checked_against_the_one_new_seed_prediction_interval(intervals_script):
    table = [_result("M", k, "dpm1", fd) for k, fd in enumerate([0.30, 0.34, 0.35])]
    rerun = [_result("M", 3, "dpm1", 0.36), _result("FP", None, "dpm1", 0.9)]
    iv = seed_interval([0.30, 0.34, 0.35])
    cells = [c for c in intervals_script.rerun_check(table, rerun) if c["figure"] == "fd"]
    assert cells == [{"row": "M", "solver": "dpm1", "steps": 10, "guidance_scale": 2.0, "figure": "fd", "seed": 3,
                      "value": 0.36, "table_seeds": [0, 1, 2], "pred_lo": iv.pred_lo, "pred_hi": iv.pred_hi,
                      "inside": True}]
    far = intervals_script.rerun_check(table, [_result("M", 3, "dpm1", iv.pred_hi + 0.01)])
    assert not next(c for c in far if c["figure"] == "fd")["inside"]


def test_a_rerun_cell_whose_table_seeds_agree_exactly_is_no_check_and_not_counted(intervals_script):
    # two seeds at equal class accuracy: a zero-width interval that any other value would "miss"
    table = [_result("M", k, "dpm1", 0.5) for k in (0, 1)]
    cells = [c for c in intervals_script.rerun_check(table, [_result("M", 2, "dpm1", 0.6)]) if c["figure"] == "fd"]
    assert cells[0]["inside"] is None and cells[0]["pred_lo"] == cells[0]["pred_hi"] == 0.5
    assert intervals_script.rerun_counts(cells) == {"inside": 0, "total": 0, "no_spread": 1}
    assert "1 cells not checked" in intervals_script.rerun_markdown(cells)


def test_rows_whose_seeds_span_files_get_their_seed_means_from_the_joined_results(intervals_script):
    a = {"commit": "aaa", "samples": 500, "x_T_seed": 0, "train_seeds": [0, 1],
         "results": [_result("M", 0, "dpm1", 0.30), _result("M", 1, "dpm1", 0.34), _result("FP", None, "dpm1", 0.9)]}
    b = {"commit": "bbb", "samples": 500, "x_T_seed": 0, "train_seeds": [2],
         "results": [_result("M", 2, "dpm1", 0.35), _result("FP", None, "dpm1", 0.9)]}
    cells, text = intervals_script.joined_means(intervals_script.joined([a, b], [Path("a.json"), Path("b.json")]))
    assert [c["row"] for c in cells] == ["M"]  # FP is one file's: its means are that file's
    assert cells[0]["train_seeds"] == [0, 1, 2]
    assert cells[0]["fd"] == pytest.approx(0.33, abs=1e-12)
    assert cells[0]["fd_interval"] == seed_interval([0.30, 0.34, 0.35]).as_dict()
    assert "| M | DPM-Solver-1 | 0.330 ± " in text


def test_result_files_join_rows_the_first_lacks_and_keep_each_files_commit(intervals_script):
    def payload(commit, rows, x_T_seed=0):
        return {"commit": commit, "samples": 500, "x_T_seed": x_T_seed, "train_seeds": [0, 1],
                "results": [{"row": r, "train_seed": 0, "fd": v} for r, v in rows]}

    first = payload("aaa", [("FP", 1.0), ("W4A4 solver-aware DPM-2", 2.0)])
    later = payload("bbb", [("FP", 9.0), ("W4A4 solver-aware DPM-2, grid anchor", 3.0)])
    joined = intervals_script.joined([first, later], [Path("a.json"), Path("b.json")])
    assert [(r["row"], r["fd"]) for r in joined["results"]] == [
        ("FP", 1.0), ("W4A4 solver-aware DPM-2", 2.0), ("W4A4 solver-aware DPM-2, grid anchor", 3.0)]
    assert joined["commits"] == ["aaa", "bbb"]
    assert joined["row_commits"]["FP"] == ["aaa"]
    with pytest.raises(ValueError, match=r"c\.json: x_T_seed 1, but a\.json has 0"):
        intervals_script.joined([first, payload("ccc", [], x_T_seed=1)], [Path("a.json"), Path("c.json")])


def test_intervals_of_several_result_files_go_beside_the_first_without_out(intervals_script):
    folders = intervals_script.output_folders(None, [Path("runs/a/x.json"), Path("runs/b/y.json")])
    assert Path("runs/a") in folders and BENCH / "results" in folders
    assert Path("elsewhere") in intervals_script.output_folders(Path("elsewhere"), [Path("runs/a/x.json")])


@pytest.fixture(scope="module")
def versions_script():
    yield _load("quality_versions")
    sys.modules.pop("quality_versions", None)


def test_the_same_samples_in_two_runs_differ_by_zero_in_the_cells_both_have(quality, versions_script, tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(40, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.arange(40) % 10
    key = quality.Row("M").key
    for run, cells in (("a", ("dpm1@10@cfg2", "dpm2@10@cfg2")), ("b", ("dpm1@10@cfg2",))):
        for cell in cells:
            quality.save_samples(tmp_path / run, key, 0, cell, base, labels)
    a = {"results": [_result("M", 0, "dpm1", 0.5), _result("M", 0, "dpm2", 0.4)]}
    b = {"results": [_result("M", 0, "dpm1", 0.5)]}
    entries = versions_script.compare_versions("M", a, tmp_path / "a", b, tmp_path / "b", draws=20)
    assert [(e["solver"], e["a_seeds"], e["b_seeds"]) for e in entries] == [("dpm1", [0], [0])]
    for figure in ("fd", "pixel_fd"):
        assert entries[0][figure]["estimate"] == pytest.approx(0.0, abs=1e-9)
        assert versions_script.verdict(entries[0][figure]) == "tie"


def test_runs_from_other_x_T_are_refused_naming_the_file(versions_script):
    with pytest.raises(ValueError, match=r"old\.json: x_T_seed 1, but new\.json has 0"):
        versions_script.check_same_x_T({"samples": 500, "x_T_seed": 0}, {"samples": 500, "x_T_seed": 1},
                                       Path("new.json"), Path("old.json"))


def test_a_later_file_adds_the_training_seeds_a_row_lacks_and_the_first_file_keeps_its_own(intervals_script):
    def payload(commit, seeds_values):
        return {"commit": commit, "samples": 500, "x_T_seed": 0, "train_seeds": sorted(seeds_values),
                "results": [{"row": "M", "train_seed": k, "fd": v} for k, v in seeds_values.items()]}

    joined = intervals_script.joined([payload("aaa", {0: 1.0, 1: 2.0}), payload("bbb", {1: 9.0, 2: 3.0})],
                                     [Path("a.json"), Path("b.json")])
    assert [(r["train_seed"], r["fd"], r["commit"]) for r in joined["results"]] == [
        (0, 1.0, "aaa"), (1, 2.0, "aaa"), (2, 3.0, "bbb")]
    assert joined["row_commits"] == {"M": ["aaa", "bbb"]}
