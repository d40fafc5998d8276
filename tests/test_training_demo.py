"""The demo chain (teacher table -> generate -> fit -> compare) on a tiny config, and how the demo
rewrites a training config so that everything it writes stays under its own folder."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from test_generate_cli import config  # noqa: F401 - the tiny generate/fit config fixture

from saq_lightning.commands.demo import demo, demo_run_config

REPO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits_w4a4.yaml"


def test_the_run_config_writes_only_under_the_demo_folder(tmp_path):
    path = demo_run_config(REPO_CONFIG, tmp_path, max_steps=7)
    cfg = yaml.safe_load(path.read_text())
    assert path == tmp_path / "digits_w4a4.yaml"
    assert cfg["data"]["init_args"]["shards"] == str(tmp_path / "trajectories")
    assert cfg["trainer"]["default_root_dir"] == str(tmp_path / "run")
    assert cfg["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path / "run")
    checkpoint = next(c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint"))
    assert checkpoint["init_args"]["dirpath"] == str(tmp_path / "run" / "checkpoints")
    assert cfg["trainer"]["max_steps"] == 7
    assert Path(cfg["model"]["init_args"]["teacher"]) == (REPO_CONFIG.parent / "models" / "digits.yaml").resolve()


def test_demo_chain_reports_fp_naive_and_trained_students_and_a_rerun_reuses_the_checkpoint(
        config, tmp_path):  # noqa: F811
    _, tiny_config = config
    kwargs = {"out": str(tmp_path / "demo"), "num_samples": 20, "teacher_steps": 2,
              "config": str(tiny_config), "compare_samples": 20, "compare_steps": 5,
              "student_orders": [1, 2]}
    results = demo(**kwargs)
    rows = {(r["model"], r["solver"]): r for r in results["comparison"]}
    assert set(rows) == {("FP", "dpm2"), ("FP", "dpm1"), ("naive W4A4", "dpm1"),
                         ("trained W4A4", "dpm1"), ("naive W4A4", "dpm2"), ("trained W4A4", "dpm2")}
    assert rows[("FP", "dpm2")]["nfe"] == 10 and rows[("trained W4A4", "dpm1")]["nfe"] == 5
    assert all(r["fd"] >= 0 and 0 <= r["class_accuracy"] <= 1 for r in rows.values())
    assert results["training"]["global_step"] == 4
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert saved["comparison"] == results["comparison"] and "teacher" in saved
    assert (tmp_path / "demo" / "trained_dpm1.png").is_file()
    again = demo(**{**kwargs, "student_orders": [1]})  # finished run: resumed, nothing to train
    assert again["training"]["global_step"] == 4 and len(again["comparison"]) == 4
    assert again["training"]["checkpoint"] == results["training"]["checkpoint"]
