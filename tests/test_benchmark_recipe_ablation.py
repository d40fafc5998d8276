"""``benchmarks/recipe_ablation_digits.py`` at its smallest setting: both CFG rows train (2 steps),
each is sampled at CFG 1 and 2, and the JSON, the table and the summary line are written. The
real measurement (300 steps, 500 samples) runs for tens of minutes: docs/training.md gives its
command and figures. The balance rows' settings are checked without training."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "recipe_ablation_digits.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("recipe_ablation_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
        sys.path.remove(str(SCRIPT.parent))


def test_balance_rows_are_the_default_and_the_authors_balance_at_digits_and_ldm4_resolution(bench):
    rows = bench.study_rows("balance")
    assert [r.init["loss"]["w_cos"] for r in rows] == pytest.approx([1.0, 100 / 64, 100 / 12288])
    assert {r.init["loss"]["w_mse"] for r in rows} == {1.0}
    assert {str(r.phases) for r in rows} == {str(bench.FIXED_10)}  # equal budget, same phase
    assert [r.init["guidance_alignment"] for r in bench.study_rows("cfg")] == ["combined", "branches"]


def test_balance_rows_at_16x16_use_the_authors_balance_at_d256(bench):
    rows = bench.study_rows("balance", size=16)
    assert [r.init["loss"]["w_cos"] for r in rows] == pytest.approx([1.0, 100 / 256, 100 / 12288])
    assert [r.name for r in rows][1] == "W4A4 w_cos 100/256 (author at D=256)"


def test_size_16_points_the_student_config_at_a_16x16_teacher_trained_once(bench, tmp_path):
    from saq_lightning.commands.run_config import load_run_parts

    base = ROOT / "configs" / "digits_w4a4.yaml"
    config, teacher = bench.sized_base(base, 16, 2, tmp_path / "out", tmp_path / "teachers")
    assert teacher["steps"] == 2 and Path(teacher["weights"]).is_file()
    parts = load_run_parts(["--config", str(config)])
    assert tuple(parts.setup.teacher.sample_shape) == (1, 16, 16)
    # everything but the teacher is the 8x8 study's config (same student, phases, loss, optimizer)
    import yaml

    ours, theirs = yaml.safe_load(config.read_text()), yaml.safe_load(base.read_text())
    assert ours["model"]["init_args"].pop("teacher") != theirs["model"]["init_args"].pop("teacher")
    assert ours == theirs
    # a teacher trained for another step count is refused, not silently reused
    with pytest.raises(ValueError, match="trained for 2 steps, not --teacher_steps 3"):
        bench.sized_base(base, 16, 3, tmp_path / "out", tmp_path / "teachers")


def test_size_16_without_teacher_steps_exits_with_a_message(bench, tmp_path):
    with pytest.raises(SystemExit, match="--size 16 needs --teacher_steps"):
        bench.sized_base(ROOT / "configs" / "digits_w4a4.yaml", 16, None, tmp_path)


def test_the_smallest_cfg_study_trains_both_rows_and_writes_json_table_and_summary(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(SCRIPT), "--study", "cfg", "--out", str(tmp_path / "out"),
            "--results", str(tmp_path / "results"), "--max_steps", "2", "--samples", "20",
            "--trajectories", "64", "--seeds", "0", "--name", "smoke"]
    # generous deadline: generate + two tiny fits + sampling, on a loaded 2-core machine
    done = subprocess.run(args, check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "results" / "smoke.json").read_text())
    assert payload["rows"] == ["W4A4 combined", "W4A4 branches"]
    cells = {(r["row"], r["guidance_scale"], r["solver"]) for r in payload["results"]}
    assert cells == {(row, g, s) for row in ("FP", "W4A4 combined", "W4A4 branches")
                     for g in (1.0, 2.0) for s in ("dpm1", "dpm2")}
    assert all(r["final_deviation"] is None for r in payload["results"] if r["row"] == "FP")
    assert all(r["final_deviation"] > 0 for r in payload["results"] if r["row"] != "FP")
    last = done.stdout.strip().splitlines()[-1]
    assert last == payload["summary"] and last.startswith("cfg: FD at 10 steps")
    assert (tmp_path / "out" / "smoke.md").read_text().count("| W4A4 branches |") == 4
