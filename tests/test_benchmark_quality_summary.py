"""``benchmarks/quality_digits.py``'s outputs: the headline ratio line and the Markdown table.

The benchmark itself trains four students and runs for about an hour on this machine; these tests
check what it writes from a given set of results (the numbers are made up).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality_digits.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("quality_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _result(row: str, solver: str, steps: int, fd: float, acc: float = 1.0, dev: float | None = None) -> dict:
    return {"row": row, "solver": solver, "steps": steps, "fd": fd, "class_accuracy": acc,
            "final_deviation": dev}


def test_headline_is_each_w4a4_rows_dpm1_fd_over_fp_dpm2_fd_at_10_steps(bench):
    results = [
        _result("FP", "dpm2", 10, 0.5), _result("FP", "dpm1", 10, 0.9),
        _result("W4A4 naive", "dpm1", 10, 2.2), _result("W4A4 naive", "dpm2", 10, 0.1),
        _result("W4A4 same-input", "dpm1", 10, 0.8),
        _result("W4A4 mixed-order", "dpm1", 10, 0.6),
        _result("W4A4 mixed-order + mixstep", "dpm1", 10, 0.55),
        _result("W4A4 mixed-order", "dpm1", 20, 0.05),  # other step counts do not enter
    ]
    assert bench.headline(results) == "fd_ratio naive=4.40 same_input=1.60 mixed_order=1.20 mixstep=1.10"


def test_headline_leaves_out_rows_that_were_not_run(bench):
    results = [_result("FP", "dpm2", 10, 0.5), _result("W4A4 mixed-order", "dpm1", 10, 0.75)]
    assert bench.headline(results) == "fd_ratio mixed_order=1.50"


def test_table_has_a_line_per_row_and_solver_and_a_column_per_step_count(bench):
    results = [
        _result("FP", "dpm1", 5, 1.25), _result("FP", "dpm1", 10, 0.875),
        _result("W4A4 naive", "dpm1", 5, 2.5, 0.95, 0.125), _result("W4A4 naive", "dpm1", 10, 1.5, 0.99, 0.0625),
        _result("W4A4 naive", "dpm2", 5, 3.0, 0.9, 0.25),
    ]
    lines = bench.markdown_table(results).splitlines()
    assert lines[0] == "| row | solver | 5 steps | 10 steps |"
    assert lines[2:] == [
        "| FP | DPM-Solver-1 | 1.250 / 100.0% | 0.875 / 100.0% |",  # FP's own deviation is not shown
        "| W4A4 naive | DPM-Solver-1 | 2.500 / 95.0% / 0.125 | 1.500 / 99.0% / 0.062 |",
        "| W4A4 naive | DPM-Solver-2 | 3.000 / 90.0% / 0.250 |  |",  # a setting that was not run
    ]


def test_headline_gives_each_ptq_rows_dpm1_fd_over_its_policys_ptq_naive_row(bench):
    results = [
        _result("W4A8 PTQ naive", "dpm1", 10, 2.0), _result("W4A8 BRECQ", "dpm1", 10, 1.0),
        _result("W4A8 SA-PTQ (fp first-order)", "dpm1", 10, 0.5),
        _result("W4A4 BRECQ", "dpm1", 10, 1.0),  # no W4A4 naive row: no W4A4 ratios
    ]
    assert bench.headline(results) == "W4A8 fd_over_ptq_naive brecq=0.50 saptq_fp1=0.25"


def test_ptq_headline_names_are_rows_of_quality_digits_ptq(bench):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from quality_digits_ptq import PTQ_ROWS
    finally:
        sys.path.remove(str(SCRIPT.parent))
    names = {r.name for r in PTQ_ROWS}
    for policy in ("W8A8", "W4A8", "W4A4"):
        assert f"{policy} PTQ naive" in names
        assert {f"{policy} {row}" for row in bench.PTQ_HEADLINE} <= names


@pytest.fixture(scope="module")
def ptq_bench(bench):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import quality_digits_ptq
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return quality_digits_ptq


def test_reconstructed_ptq_rows_take_seeds_and_the_naive_ones_do_not(bench, ptq_bench):
    rows = {r.name: r for r in ptq_bench.PTQ_ROWS}
    assert bench.is_trained(rows["W4A4 BRECQ"]) and bench.is_trained(rows["W4A4 SA-QLoRA from SA-PTQ"])
    assert not bench.is_trained(rows["W4A4 PTQ naive"])


def test_ptq_rows_keep_their_samples_under_the_trained_rows_key_rule(bench, ptq_bench):
    """``quality_intervals.py`` finds a row's samples by its name through ``Row(name).key``."""
    for row in ptq_bench.PTQ_ROWS:
        assert row.key == bench.Row(row.name).key
    assert bench.Row("W4A4 BRECQ (grid + intermediate)").key == "w4a4_brecq_grid_intermediate"


def test_a_ptq_seed_is_the_reconstruction_seed_in_a_folder_of_its_own_and_seed_0_keeps_the_old_one(ptq_bench,
                                                                                                      tmp_path):
    from types import SimpleNamespace

    row = next(r for r in ptq_bench.PTQ_ROWS if r.name == "W4A4 SA-PTQ (fp second-order)")
    args = SimpleNamespace(ptq_iters=3000, ptq_act_iters=1000, ptq_samples=1024, ptq_calibration_samples=None)

    def option(cli: list[str], name: str) -> str:
        return cli[cli.index(name) + 1]

    seed0, seed2 = ptq_bench._ptq_args(row, tmp_path, args, 0), ptq_bench._ptq_args(row, tmp_path, args, 2)
    assert option(seed0, "--ptq.output") == str(tmp_path / "ptq_w4a4_mixed_order_fp_second_order")
    assert option(seed2, "--ptq.output") == str(tmp_path / "ptq_w4a4_mixed_order_fp_second_order_seed2")
    assert (option(seed0, "--ptq.seed"), option(seed2, "--ptq.seed")) == ("0", "2")


def _payload(tmp_path, name: str, results: list[dict], commit: str = "abc1234", seconds: float = 10.0) -> Path:
    import json

    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"commit": commit, "samples": 500, "max_steps": 800, "guidance_scale": 2.0,
                                "seconds": seconds, "results": results,
                                "ptq": {"iters": 3000, "act_iters": 1000, "samples": 1024}}))
    return path


def test_merge_keeps_each_cell_once_from_the_first_file_and_the_longest_time(bench, tmp_path):
    a = _payload(tmp_path, "a", [_result("FP", "dpm1", 10, 0.9), _result("W4A4 BRECQ", "dpm1", 10, 1.0)], seconds=60)
    b = _payload(tmp_path, "b", [_result("FP", "dpm1", 10, 0.8), _result("W4A8 BRECQ", "dpm1", 10, 0.7)], seconds=90)
    merged = bench.merge_payloads([a, b])
    assert [(r["row"], r["fd"]) for r in merged["results"]] == [("FP", 0.9), ("W4A4 BRECQ", 1.0), ("W4A8 BRECQ", 0.7)]
    assert merged["seconds"] == 90 and merged["commit"] == "abc1234"


def test_merge_refuses_results_of_another_commit_naming_the_file_and_field(bench, tmp_path):
    a = _payload(tmp_path, "a", [_result("FP", "dpm1", 10, 0.9)])
    b = _payload(tmp_path, "b", [_result("FP", "dpm1", 10, 0.9)], commit="def5678")
    with pytest.raises(ValueError, match=r"b\.json: commit is 'def5678'"):
        bench.merge_payloads([a, b])


def test_rows_with_intermediate_buckets_share_a_calibration_only_among_themselves(ptq_bench, tmp_path):
    rows = {r.name: r for r in ptq_bench.PTQ_ROWS}
    naive, fp1, control = rows["W4A4 PTQ naive"], rows["W4A4 SA-PTQ (fp first-order)"], \
        rows["W4A4 BRECQ (grid + intermediate)"]
    assert [r.calibrated_at_intermediate_points for r in (naive, fp1, control)] == [False, True, True]

    def calibration(folder):
        path = folder / "ptq_state" / "calibration.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    calibration(ptq_bench.ptq_folder(tmp_path, naive, None)).write_text("grid only")
    target = ptq_bench.ptq_folder(tmp_path, fp1, None)
    ptq_bench._share_calibration(tmp_path, fp1, target)
    assert not (target / "ptq_state" / "calibration.pt").exists()  # computed by its own ptq run
    calibration(ptq_bench.ptq_folder(tmp_path, control, 1)).write_text("grid and intermediate")
    ptq_bench._share_calibration(tmp_path, fp1, target)
    assert (target / "ptq_state" / "calibration.pt").read_text() == "grid and intermediate"
