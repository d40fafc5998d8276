"""``fit`` loses nothing the user has: a failed checkpoint save leaves the good ``last.ckpt`` whole,
one run writes to a checkpoint folder at a time, ``--overwrite`` gives the old run back when the
new one fails before its first checkpoint, ``last.ckpt`` is always the newest state, and
``--ckpt_path last`` takes the newest *readable* checkpoint. Every case goes through the command
line (one message, exit code 2, for the user errors)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from cli_run_helpers import run_main, start_cli, tiny_fit_config
from test_training_helpers import save_tiny_teacher, write_tiny_shards

from saq_lightning.cli import main

PACE = {"class_path": "pacing.Pace", "init_args": {"seconds": 0.4}}
BALLAST = {"class_path": "ballast.Ballast", "init_args": {"floats_per_step": 1 << 16}}  # 256 KiB a step


def step_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit_safety")
    spec = save_tiny_teacher(root / "teacher")
    return spec, write_tiny_shards(spec, root / "shards")


def config(tmp_path, tiny, name="run", steps=2, extra=None):
    spec, shards = tiny
    return str(tiny_fit_config(tmp_path / f"{name}.yaml", spec, shards, tmp_path / name, steps,
                               extra_callbacks=extra))


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted at ``tmp_path/run/ckpt``: the checkpoint folder on a filesystem of its
    own, as on a cluster's scratch disk (the system's temporary folder is elsewhere)."""
    mount = tmp_path / "run" / "ckpt"
    mount.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> None:
    """Write until the filesystem of ``folder`` is full."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass


def test_a_full_disk_during_a_save_leaves_the_good_last_ckpt_and_no_temporary_file(tmp_path, tiny, small_disk, capsys):
    cfg = config(tmp_path, tiny, extra=[BALLAST])
    assert run_main(["fit", "--config", cfg], capsys)[0] == 0
    last = small_disk / "last.ckpt"
    good = last.read_bytes()
    assert step_of(last) == 2
    fill(small_disk)
    with pytest.raises(OSError) as failed:  # the step-3 checkpoint (256 KiB larger) does not fit
        main(["fit", "--config", cfg, "--ckpt_path", "last", "--trainer.max_steps", "4"])
    assert failed.value.errno in (28, 27)  # ENOSPC (EFBIG on some filesystems)
    assert last.read_bytes() == good and step_of(last) == 2
    assert hidden_files(small_disk) == []  # no .last.ckpt.tmp-* left behind
    (small_disk / "filler").unlink()
    assert run_main(["fit", "--config", cfg, "--ckpt_path", "last", "--trainer.max_steps", "4"], capsys)[0] == 0
    assert step_of(last) == 4


def wait_for(predicate, what: str, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, f"{seconds} s waiting for {what}"
        time.sleep(0.1)


def test_a_second_fit_on_a_folder_in_use_is_refused_and_the_lock_dies_with_the_first(tmp_path, tiny, capsys):
    cfg = config(tmp_path, tiny, steps=200, extra=[PACE])
    first = start_cli(["fit", "--config", cfg], tmp_path / "first.log")
    last = tmp_path / "run" / "ckpt" / "last.ckpt"
    try:
        wait_for(lambda: last.is_file() or first.poll() is not None, "the first run's first checkpoint")
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        for extra in ([], ["--ckpt_path", "last"], ["--overwrite", "true"]):
            code, err = run_main(["fit", "--config", cfg, "--trainer.max_steps", "3", *extra], capsys)
            assert code == 2 and "another run is writing to" in err and "ckpt" in err, err
            assert "Traceback" not in err
        assert first.poll() is None  # the first run goes on, its folder untouched by the refused ones
    finally:
        first.kill()  # SIGKILL: no handler runs, only the kernel releases the lock
        first.wait(timeout=120)
    stopped = step_of(last)
    assert run_main(["fit", "--config", cfg, "--ckpt_path", "last", "--trainer.max_steps", str(stopped + 1)],
               capsys)[0] == 0
    assert step_of(last) == stopped + 1


def test_overwrite_that_fails_before_its_first_checkpoint_gives_the_old_run_back(tmp_path, tiny, capsys):
    cfg = config(tmp_path, tiny)
    assert run_main(["fit", "--config", cfg], capsys)[0] == 0
    run_dir = tmp_path / "run"
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code, err = run_main(["fit", "--config", cfg, "--overwrite", "true",
                     "--data.init_args.expect", '{"image_shape": [3, 64, 64]}'], capsys)
    assert code == 2 and "image_shape" in err, err
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert {k: after.get(k) for k in before} == before  # every file back, byte for byte
    assert hidden_files(run_dir) == []  # (the failed run's own log, tb/version_1, stays: it is new)
    assert run_main(["fit", "--config", cfg, "--overwrite", "true", "--trainer.max_steps", "3"], capsys)[0] == 0
    assert step_of(run_dir / "ckpt" / "last.ckpt") == 3
    assert hidden_files(run_dir) == []  # the old run's set-aside files are gone


def test_a_resume_in_a_moved_folder_keeps_last_ckpt_the_newest(tmp_path, tiny, capsys):
    assert run_main(["fit", "--config", config(tmp_path, tiny, name="old")], capsys)[0] == 0
    shutil.copytree(tmp_path / "old", tmp_path / "moved")
    moved = config(tmp_path, tiny, name="moved")
    assert run_main(["fit", "--config", moved, "--ckpt_path", "last", "--trainer.max_steps", "3"], capsys)[0] == 0
    ckpt = tmp_path / "moved" / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.ckpt"]  # no last-v1.ckpt
    assert step_of(ckpt / "last.ckpt") == 3


def test_ckpt_path_last_skips_an_empty_file_and_takes_a_newer_requeue_ckpt(tmp_path, tiny, capsys, caplog):
    cfg = config(tmp_path, tiny)
    assert run_main(["fit", "--config", cfg], capsys)[0] == 0
    ckpt = tmp_path / "run" / "ckpt"
    (ckpt / "last-v1.ckpt").write_bytes(b"")  # a save cut short, newer than last.ckpt
    code, err = run_main(["fit", "--config", cfg, "--ckpt_path", "last", "--trainer.max_steps", "3"], capsys)
    assert code == 0, err
    assert step_of(ckpt / "last.ckpt") == 3
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 1 and "last-v1.ckpt" in skipped[0] and "\n" not in skipped[0]
    # a requeue.ckpt of a later step (a preempted job that could not requeue) wins over last.ckpt
    assert run_main(["fit", "--config", config(tmp_path, tiny, name="ahead", steps=5)], capsys)[0] == 0
    (ckpt / "last-v1.ckpt").unlink()
    shutil.copy(tmp_path / "ahead" / "ckpt" / "last.ckpt", tmp_path / "run" / "requeue.ckpt")
    os.utime(tmp_path / "run" / "requeue.ckpt", (1, 1))  # older on disk: the step decides, not the time
    assert run_main(["fit", "--config", cfg, "--ckpt_path", "last", "--trainer.max_steps", "6"], capsys)[0] == 0
    assert step_of(ckpt / "last.ckpt") == 6
