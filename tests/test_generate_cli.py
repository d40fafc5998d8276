"""The command line chain on one YAML: ``generate --config`` -> ``fit --config`` ->
``fit --config --ckpt_path last`` (continues) and ``--ckpt_path <file>`` (hyperparameters from
the checkpoint re-parse)."""

from __future__ import annotations

import pytest
import torch
import yaml
from test_training_helpers import TINY_POLICY, save_tiny_teacher

from saq_lightning.cli import main
from saq_lightning.commands.generate import HELP, parse_options
from saq_lightning.data import load_manifest
from saq_lightning.distributed import Placement, environment_placement


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    spec = save_tiny_teacher(root / "teacher")
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 4, "logger": False,
            "enable_progress_bar": False, "enable_model_summary": False,
            "default_root_dir": str(root / "run"),
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(root / "run" / "ckpt"), "save_last": True,
                               "save_top_k": 0, "every_n_train_steps": 2}},
            ],
        },
        "mixstep": {"phases": [{"student_steps": 10}, {"student_steps": 5}], "batches_per_phase": 2},
        "model": {
            "class_path": "saq_lightning.lightning.module.SAQLightningModule",
            "init_args": {
                "teacher": {"kind": spec.kind, "name": spec.name, "weights": spec.weights,
                            "schedule": spec.schedule, "conditioning": spec.conditioning},
                "policy": TINY_POLICY,
                "calibration": {"num_samples": 2, "max_values_per_bucket": 128},
                "generation": {"trajectories_per_phase": 4, "trajectories_per_shard": 2},
            },
        },
        "data": {"class_path": "saq_lightning.data.TrajectoryDataModule",
                 "init_args": {"shards": str(root / "shards"), "batch_size": 4}},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, path


def test_generate_then_fit_then_resume_from_last_on_one_config(config):
    root, path = config
    main(["generate", "--config", str(path), "--progress", "false"])
    manifest = load_manifest(root / "shards")
    assert manifest.phase_counts == {0: 4 * 10, 1: 4 * 5} and manifest.meta["model_id"] == "tiny"
    main(["fit", "--config", str(path)])
    last = root / "run" / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4
    main(["fit", "--config", str(path), "--ckpt_path", "last", "--trainer.max_steps", "6"])
    assert torch.load(last, weights_only=True)["global_step"] == 6
    # an explicit file path: LightningCLI re-parses the checkpoint's hyperparameters as the
    # module's init args, so they must be plain and complete
    main(["fit", "--config", str(path), "--ckpt_path", str(last), "--trainer.max_steps", "8"])
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 8 and ckpt["hyper_parameters"]["policy"]["lora_rank"] == 2


def test_generate_refuses_a_config_without_mixstep_phases(config, tmp_path, capsys):
    _, path = config
    cfg = yaml.safe_load(path.read_text())
    del cfg["mixstep"]
    other = tmp_path / "no_mixstep.yaml"
    other.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as stop:  # a user error: one line, exit 2
        main(["generate", "--config", str(other), "--progress", "false"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err and "no mixstep schedule" in err, err


def test_generate_help_lists_its_options(capsys):
    main(["generate", "--help"])
    assert capsys.readouterr().out == HELP


def test_generate_options_are_split_from_the_config_overrides():
    opts, rest = parse_options(["--config", "a.yaml", "--devices", "2", "--model.seed", "3"])
    assert opts.devices == 2 and rest == ["--config", "a.yaml", "--model.seed", "3"]


@pytest.mark.parametrize("env, expected", [
    ({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}, Placement(2, 4, 0)),          # torchrun
    ({"SLURM_NTASKS": "2", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1",
      "SLURM_LOCALID": "1"}, Placement(1, 2, 1)),                                       # srun step
    ({"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, None),  # batch script, no srun
    ({}, None),
])
def test_rank_and_world_size_come_from_torchrun_or_srun(env, expected):
    assert environment_placement(env) == expected
