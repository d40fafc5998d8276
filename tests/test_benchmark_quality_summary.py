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
