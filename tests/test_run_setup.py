"""One run config: ``generate`` and ``ptq`` read it once and build an ``SAQSetup``, never a
LightningModule; its ``mixstep:`` block is given once and linked into module and data module."""

from __future__ import annotations

import functools

import pytest
import yaml
from ptq_helpers import paired_shards, ptq_config
from test_generate_cli import config  # noqa: F401 - the tiny generate/fit config fixture

from saq_lightning.alignment.setup import SAQSetup
from saq_lightning.callbacks import MixStepCallback
from saq_lightning.cli import main
from saq_lightning.commands.run_config import load_run_parts
from saq_lightning.data import MixStepSchedule, load_manifest
from saq_lightning.lightning.module import SAQLightningModule
from saq_lightning.lightning.run_cli import SAQLightningCLI, args_given_on_purpose


def refuse_lightning_modules(monkeypatch) -> None:
    """From now on, building an SAQLightningModule fails the test (its signature stays: the
    config parser reads it)."""

    @functools.wraps(SAQLightningModule.__init__)
    def refused(self, *args, **kwargs):
        raise AssertionError("an SAQLightningModule was built")

    monkeypatch.setattr(SAQLightningModule, "__init__", refused)


@pytest.fixture
def no_lightning_module(monkeypatch):
    refuse_lightning_modules(monkeypatch)


def test_the_run_parts_of_a_config_are_a_setup_its_schedule_and_its_shards(config, no_lightning_module):  # noqa: F811
    root, path = config
    parts = load_run_parts(["--config", str(path), "--model.init_args.seed", "3"])
    assert isinstance(parts.setup, SAQSetup) and parts.setup.seed == 3
    assert [p.student_steps for p in parts.schedule.phases] == [10, 5]
    assert parts.shards == str(root / "shards")
    assert parts.setup.policy.lora_rank == 2 and parts.setup.generation.trajectories_per_phase == 4


def test_generate_writes_its_shards_without_building_a_lightning_module(config, tmp_path,  # noqa: F811
                                                                        no_lightning_module):
    _, path = config
    main(["generate", "--config", str(path), "--data.init_args.shards", str(tmp_path / "shards"),
          "--progress", "false"])
    assert load_manifest(tmp_path / "shards").phase_counts == {0: 4 * 10, 1: 4 * 5}


def test_ptq_reconstructs_without_building_a_lightning_module(tmp_path, monkeypatch):
    spec, shards = paired_shards(tmp_path)  # (writing the shards builds one)
    refuse_lightning_modules(monkeypatch)
    path = ptq_config(tmp_path / "ptq.yaml", spec, shards, tmp_path / "out", iters=4, act_iters=2,
                      num_samples=8)
    main(["ptq", "--config", str(path), "--progress", "false", "--max_blocks", "1"])
    assert (tmp_path / "out" / "ptq_state").is_dir()


def test_the_mixstep_block_is_linked_into_the_module_the_data_module_and_the_trainer(config):  # noqa: F811
    _, path = config
    with args_given_on_purpose():
        cli = SAQLightningCLI(args=["--config", str(path)], run=False)
    expected = MixStepSchedule.from_steps([10, 5], batches_per_phase=2)
    assert cli.model.mixstep == cli.datamodule.mixstep == expected
    assert cli.model.hparams["mixstep"] == expected.to_dict()
    assert [p.student_steps for p in cli.model.phases] == [10, 5]
    first = cli.trainer.callbacks[0]  # before the callbacks that read the phase it sets
    assert isinstance(first, MixStepCallback) and first.schedule == expected


def test_a_mixstep_callback_in_trainer_callbacks_is_refused_in_one_line(config, tmp_path, capsys):  # noqa: F811
    _, path = config
    cfg = yaml.safe_load(path.read_text())
    old = {"class_path": "saq_lightning.callbacks.MixStepCallback", "init_args": cfg.pop("mixstep")}
    cfg["trainer"]["callbacks"].insert(0, old)
    other = tmp_path / "old_layout.yaml"
    other.write_text(yaml.safe_dump(cfg))
    for command in ("fit", "generate"):
        with pytest.raises(SystemExit) as stop:
            main([command, "--config", str(other)])
        assert stop.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith("error: trainer.callbacks holds a MixStepCallback: give the mixstep "
                                 "schedule once, as the top-level `mixstep:` block"), err
