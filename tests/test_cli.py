"""The command line: LightningCLI subcommands, pipeline subcommands, every top-level config."""

from pathlib import Path

import pytest

from saq_lightning.cli import PIPELINE_COMMANDS, main

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


def test_help_lists_trainer_and_pipeline_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", *PIPELINE_COMMANDS):
        assert name in out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_with_print_config(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "class_path: saq_lightning." in out


def test_pipeline_commands_resolve_to_callables():
    for name, command in PIPELINE_COMMANDS.items():
        assert callable(command.load()), name


def test_unknown_config_field_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: saq_lightning.lightning.pretrain.DDPMPretrainModule\n"
                   "  init_args:\n    learning_rate_typo: 1.0\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad), "--print_config"])
    assert exit_info.value.code != 0
    assert "learning_rate_typo" in capsys.readouterr().err
