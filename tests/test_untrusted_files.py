"""No file the project reads can run code, and a checkpoint changed since it was saved is refused.

A pickle payload (an object whose ``__reduce__`` writes a marker file when unpickled) is planted in
every kind of file the commands read back: a fit checkpoint (``--ckpt_path <file>`` and ``last``),
a student for ``sample``, an ``init_from`` student, and ``ptq``'s resume state
(``ptq_state/blocks/*.pt``, ``ptq_state/calibration.pt``). The marker never appears and the error is
one line naming the file. A checkpoint whose tensors were changed after saving (one float) is
refused naming the file; a ``ptq`` ``student.ckpt`` given to ``--ckpt_path`` is told apart in one line.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from cli_run_helpers import run_main, tiny_fit_config
from ptq_helpers import paired_shards, ptq_config
from test_training_helpers import save_tiny_teacher, write_tiny_shards

from saq_lightning.alignment.checkpointing import CheckpointDigestError
from saq_lightning.cli import main
from saq_lightning.commands.ptq import ptq
from saq_lightning.files import UnsafeFileError
from saq_lightning.students import load_student


class Payload:
    """Unpickling this runs ``os.system`` (what a hostile file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def one_line_error(err: str, path: Path) -> str:
    """The ``error:`` line (asserting it is the only one besides the traceback hint)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert str(path) in errors[0], err
    return errors[0]


def plant(path: Path, marker: Path, keep: dict | None = None) -> None:
    """Replace ``path`` with a file holding the payload (inside otherwise valid content)."""
    torch.save({**(keep or {}), "payload": Payload(marker)}, path)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrusted")
    spec = save_tiny_teacher(root / "teacher")
    shards = write_tiny_shards(spec, root / "shards")
    config = tiny_fit_config(root / "fit.yaml", spec, shards, root / "run", 2)
    main(["fit", "--config", str(config)])
    return root, config, root / "run" / "ckpt" / "last.ckpt"


def test_a_payload_in_a_fit_checkpoint_never_runs(fitted, tmp_path, capsys):
    _root, config, last = fitted
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.ckpt"
    plant(bad, marker, torch.load(last, weights_only=True))
    code, err = run_main(["fit", "--config", str(config), "--ckpt_path", str(bad), "--trainer.max_steps", "3"], capsys)
    assert code == 2 and "refused" in one_line_error(err, bad)
    code, err = run_main(["sample", "--student", str(bad), "--out", str(tmp_path / "s"), "--num_samples", "2",
                     "--steps", "2", "--device", "cpu", "--grid_size", "0"], capsys)
    assert code == 2 and "refused" in one_line_error(err, bad)
    from saq_lightning.alignment.init_from import load_init_from

    with pytest.raises(UnsafeFileError) as refused:
        load_init_from(None, bad, {})
    assert str(bad) in str(refused.value) and "\n" not in str(refused.value)
    assert not marker.exists()


def test_ckpt_path_last_with_only_a_payload_is_one_line_and_never_runs(fitted, tmp_path, capsys):
    root, _config, last = fitted
    run_dir = tmp_path / "run"
    shutil.copytree(root / "run", run_dir)
    config = tmp_path / "fit.yaml"
    config.write_text(Path(_config).read_text().replace(str(root / "run"), str(run_dir)))
    marker = tmp_path / "ran"
    plant(run_dir / "ckpt" / "last.ckpt", marker, torch.load(last, weights_only=True))
    code, err = run_main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_steps", "3"], capsys)
    assert code == 2 and "none of" in one_line_error(err, run_dir / "ckpt" / "last.ckpt"), err
    assert not marker.exists()


def test_a_checkpoint_changed_after_saving_is_refused_naming_the_file(fitted, tmp_path, capsys):
    _root, config, last = fitted
    ckpt = torch.load(last, weights_only=True)
    key = next(k for k in ckpt["state_dict"] if "lora" in k)
    ckpt["state_dict"][key].view(-1)[0] += 1e-3  # one value changed, the recorded digest kept
    changed = tmp_path / "changed.ckpt"
    torch.save(ckpt, changed)
    code, err = run_main(["fit", "--config", str(config), "--ckpt_path", str(changed), "--trainer.max_steps", "3"], capsys)
    assert code == 2 and "do not match the digest" in one_line_error(err, changed)
    with pytest.raises(CheckpointDigestError, match="changed.ckpt"):
        load_student(changed)
    assert load_student(last) is not None  # the untouched file loads


def test_a_ptq_student_given_to_ckpt_path_says_what_it_is(fitted, tmp_path, capsys):
    _root, config, last = fitted
    ckpt = torch.load(last, weights_only=True)
    student = tmp_path / "student.ckpt"  # what ptq writes: identity and student state, no trainer state
    torch.save({"saq": ckpt["saq"], "state_dict": ckpt["state_dict"], "ptq": {"settings": {}, "blocks": []}}, student)
    code, err = run_main(["fit", "--config", str(config), "--ckpt_path", str(student), "--trainer.max_steps", "3"], capsys)
    assert code == 2 and "init_from" in one_line_error(err, student)


@pytest.fixture(scope="module")
def ptq_stopped(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrusted_ptq")
    spec, shards = paired_shards(root)
    cfg = ptq_config(root / "ptq.yaml", spec, shards, root / "out")
    ptq(["--config", str(cfg), "--progress", "false", "--accelerator", "cpu", "--max_blocks", "1"])
    return root, cfg


@pytest.mark.parametrize("name", ["blocks/000.pt", "calibration.pt"])
def test_a_payload_in_ptq_resume_state_never_runs(ptq_stopped, tmp_path, capsys, name):
    root, cfg = ptq_stopped
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    config = tmp_path / "ptq.yaml"
    config.write_text(cfg.read_text().replace(str(root / "out"), str(out)))
    target = out / "ptq_state" / name
    marker = tmp_path / "ran"
    plant(target, marker, torch.load(target, weights_only=True))
    code, err = run_main(["ptq", "--config", str(config), "--progress", "false", "--accelerator", "cpu",
                     "--max_blocks", "1"], capsys)
    assert code == 2 and "refused" in one_line_error(err, target)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_raw_pickle_stream_is_refused_as_unsafe_and_never_runs(tmp_path, protocol):
    import pickle

    from saq_lightning.files import load_tensors

    marker, path = tmp_path / "ran", tmp_path / "weights.pt"
    path.write_bytes(pickle.dumps(Payload(marker), protocol=protocol))  # not torch.save: a bare pickle
    with pytest.raises(UnsafeFileError, match=r"weights\.pt: refused"):
        load_tensors(path)
    assert not marker.exists()


def test_a_text_file_is_unreadable_not_unsafe(tmp_path):
    from saq_lightning.files import UnreadableFileError, load_tensors

    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(UnreadableFileError, match=r"notes\.pt: not a readable PyTorch file") as info:
        load_tensors(path)
    assert not isinstance(info.value, UnsafeFileError)
