"""``StudentRef``: ``--student`` parsed once, and each of the student's files read once by ``sample``."""

from __future__ import annotations

import builtins
import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import safetensors.torch
import torch

from saq_lightning.alignment.checkpointing import identity, student_state_dict
from saq_lightning.commands.sample import sample
from saq_lightning.models import ModelSpec
from saq_lightning.quant import export_student
from saq_lightning.students import StudentRef, load_sampling_model

SPEC = ModelSpec(kind="digits")
SAMPLE = {"num_samples": 4, "steps": 2, "batch_size": 4, "device": "cpu", "grid_size": 0}


@pytest.fixture(scope="module")
def naive():
    return load_sampling_model(SPEC, "naive:w8a8", calibration_samples=8, calibration_method="minmax")


@pytest.fixture(scope="module")
def export(naive, tmp_path_factory):
    return export_student(naive.unet, tmp_path_factory.mktemp("ref") / "export")


@pytest.fixture(scope="module")
def checkpoint(naive, tmp_path_factory):
    """A real student checkpoint (the format ``fit`` writes: ``saq`` identity + student state)."""
    path = tmp_path_factory.mktemp("ckpt") / "student.ckpt"
    torch.save({"saq": identity(dataclasses.asdict(SPEC), naive.unet.policy.to_dict()),
                "state_dict": student_state_dict(naive.unet)}, path)
    return path


@pytest.fixture
def reads(monkeypatch):
    """Counts, per resolved path, every read of a file's contents through Python (``open``,
    ``Path.read_text``/``read_bytes``) or safetensors' ``load_file``."""
    counts: Counter[str] = Counter()
    real_open, real_text, real_bytes = builtins.open, Path.read_text, Path.read_bytes
    real_load_file = safetensors.torch.load_file

    def count(path) -> None:
        counts[str(Path(path).resolve())] += 1

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, Path)) and not any(c in mode for c in "wax+"):
            count(file)
        return real_open(file, mode, *args, **kwargs)

    def read_text(self, *args, **kwargs):
        count(self)
        return real_text(self, *args, **kwargs)

    def read_bytes(self):
        count(self)
        return real_bytes(self)

    def load_file(filename, *args, **kwargs):
        count(filename)
        return real_load_file(filename, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(safetensors.torch, "load_file", load_file)
    return counts


def test_each_kind_of_student_string_parses_to_its_kind(export, checkpoint):
    assert StudentRef.parse(None).kind == "fp" and StudentRef.parse("fp").kind == "fp"
    assert (StudentRef.parse("naive:w4a4").kind, StudentRef.parse("naive:w4a4").policy) == ("naive", "w4a4")
    assert StudentRef.parse(str(export)) == StudentRef("export", str(export), path=Path(export))
    assert StudentRef.parse(str(checkpoint)).kind == "checkpoint"


def test_bad_student_strings_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"naive:<policy> needs a policy \(e.g. naive:w4a4\)"):
        StudentRef.parse("naive:")
    with pytest.raises(FileNotFoundError, match="is not an integer export .no manifest.json.; write one with"):
        StudentRef.parse(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"student '.*nope.ckpt' not found"):
        StudentRef.parse(str(tmp_path / "nope.ckpt"))


def test_a_runtime_needs_a_quantized_student():
    with pytest.raises(ValueError, match="--runtime int needs a quantized --student"):
        StudentRef.parse(None).check_runtime("int")
    with pytest.raises(ValueError, match=r"--runtime 'int4': expected one of"):
        StudentRef.parse("naive:w4a4").check_runtime("int4")


def test_an_export_sampled_with_the_int_runtime_reads_each_of_its_files_once(export, reads, tmp_path):
    """Before StudentRef the export was loaded twice (fake-quant, then the runtime) and its manifest
    read three times; the weights were read a second time for their digest on each load. The shape
    check opens the weights' header (safetensors.safe_open), not counted here."""
    sample(str(tmp_path / "s"), model=SPEC, student=str(export), runtime="int", **SAMPLE)
    got = {name: reads[str((Path(export) / name).resolve())]
           for name in ("manifest.json", "config.json", "weights.safetensors")}
    assert got == {"manifest.json": 1, "config.json": 1, "weights.safetensors": 1}


def test_a_checkpoint_sampled_with_the_int_runtime_is_read_once(checkpoint, reads, tmp_path):
    """Before StudentRef the student was loaded from it and the trained sampler read it again."""
    sample(str(tmp_path / "s"), model=SPEC, student=str(checkpoint), runtime="int", **SAMPLE)
    assert reads[str(Path(checkpoint).resolve())] == 1


def test_a_checkpoint_names_its_teacher_and_records_no_trained_sampler_without_phases(checkpoint):
    ref = StudentRef.parse(str(checkpoint))
    assert ref.model_spec(ModelSpec(kind="config_only")).kind == "digits"
    assert ref.trained_sampler() == {}
    assert ref.identity()["kind"] == "checkpoint" and ref.identity()["files"][0][0] == "student.ckpt"


def test_the_int_runtime_of_an_export_is_loaded_directly_with_integer_layers(export):
    net = StudentRef.parse(str(export)).load(SPEC, "cpu", runtime="weight_only")
    report = net.unet.runtime_report
    assert report.requested == "weight_only" and report.counts().get("weight_only", 0) > 0


def test_a_naive_student_without_a_policy_is_one_line_and_exit_2_on_the_command_line(tmp_path, capsys):
    from saq_lightning.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--out", str(tmp_path / "s"), "--student", "naive:"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        "error: --student 'naive:': naive:<policy> needs a policy (e.g. naive:w4a4)")
