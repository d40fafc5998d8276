"""Trajectory folders say where they come from, and runs refuse folders that came from elsewhere.

The manifest records the teacher's weight fingerprint, the solver step that made the rollouts and
targets (with its intermediate-point rule), the generation seed and counts, and the generator
version. ``fit`` and ``ptq`` refuse a folder that differs in any of them; ``generate`` refuses to
resume (and so keep the shards of) a folder of an older generator or of another teacher. Every
refusal is one line that says what to do.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from test_training_helpers import (
    save_tiny_teacher,
    tiny_datamodule,
    tiny_module,
    tiny_trainer,
    write_tiny_shards,
)

from saq_lightning.alignment.generation import generate_trajectories
from saq_lightning.alignment.trajectory_meta import GENERATOR, check_trajectory_folder
from saq_lightning.data import ManifestMismatchError, MixStepPhase, MixStepSchedule, load_manifest
from saq_lightning.data.manifest import Layout

SCHEDULE = MixStepSchedule((MixStepPhase(5, 1, 2),), batches_per_phase=1)
GENERATION = {"trajectories_per_phase": 2, "trajectories_per_shard": 2}
OLD_GENERATOR = "saq_lightning.generate/1"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Two tiny teachers of one spec name but other weights; shards of the first."""
    root = tmp_path_factory.mktemp("provenance")
    spec = save_tiny_teacher(root / "teacher", seed=0)
    other = save_tiny_teacher(root / "teacher_b", seed=1)
    shards = write_tiny_shards(spec, root / "shards", SCHEDULE, generation=GENERATION)
    return spec, other, shards


def copy_of(shards: Path, dst: Path) -> Path:
    shutil.copytree(shards, dst)
    return dst


def rewrite_meta(folder: Path, edit) -> None:
    """Edit a folder's manifest meta and keep it self-consistent (layout digest in the manifest and
    in every shard entry), as if the shards had been written with the edited meta."""
    path = folder / "manifest.json"
    raw = json.loads(path.read_text())
    edit(raw["meta"])
    digest = Layout(raw["meta"], raw["num_trajectories"], raw["trajectories_per_shard"],
                    raw["storage_dtype"]).digest()
    raw["layout_digest"] = digest
    path.write_text(json.dumps(raw))
    for entry in folder.glob("shard-*.tar.json"):
        info = json.loads(entry.read_text())
        entry.write_text(json.dumps({**info, "layout_digest": digest}))


def as_old_generator(meta: dict) -> None:
    """The meta ``saq_lightning.generate/1`` wrote: no fingerprint, no solver step."""
    meta.pop("teacher_fingerprint", None)
    meta.pop("teacher_step", None)
    meta["generator"] = OLD_GENERATOR


def fit(tmp_path, module, shards):
    tiny_trainer(tmp_path, 1, schedule=SCHEDULE).fit(module, datamodule=tiny_datamodule(shards))


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*"))}


# ---------------------------------------------------------------- what the manifest records
def test_the_manifest_records_teacher_fingerprint_solver_step_seed_counts_and_generator(made):
    spec, _, shards = made
    meta = load_manifest(shards).meta
    module = tiny_module(spec, generation=GENERATION)
    assert meta["generator"] == GENERATOR == "saq_lightning.generate/2"
    assert meta["teacher_fingerprint"] == module.teacher_fingerprint
    assert meta["teacher_solver"] == "dpm"
    assert meta["teacher_step"]["class"] == "DPMSolver"
    assert meta["teacher_step"]["intermediate"] == "spacing"  # DPM-Solver's reference rule
    assert meta["teacher_step"]["spacing"] == "time_uniform"
    assert meta["seed"] == 0 and meta["trajectories_per_phase"] == [2]


def test_the_folder_of_this_config_passes_every_provenance_check(made):
    spec, _, shards = made
    check_trajectory_folder(load_manifest(shards), tiny_module(spec, generation=GENERATION), "here")


# ---------------------------------------------------------------- fit
def test_fit_refuses_shards_of_a_teacher_with_other_weights(tmp_path, made):
    _, other, shards = made
    with pytest.raises(ManifestMismatchError, match=r"made by a teacher with other weights "
                                                    r"\(fingerprint \w+, this run's teacher \w+\)"):
        fit(tmp_path, tiny_module(other, generation=GENERATION), shards)


@pytest.mark.parametrize("generation, field, expected, found", [
    ({**GENERATION, "seed": 1}, "seed", "1", "0"),
    ({**GENERATION, "trajectories_per_phase": 4}, r"trajectories_per_phase\[0\]", "4", "2"),
])
def test_fit_refuses_shards_of_another_generation_seed_or_count(tmp_path, made, generation, field,
                                                                expected, found):
    spec, _, shards = made
    with pytest.raises(ManifestMismatchError,
                       match=rf"{field}: expected {expected}, found {found}\); regenerate them"):
        fit(tmp_path, tiny_module(spec, generation=generation), shards)


def test_fit_refuses_shards_stored_in_another_dtype(tmp_path, made):
    spec, _, shards = made
    with pytest.raises(ManifestMismatchError, match=r"stored as float32, this run's "
                                                    r"generation.storage_dtype is float16"):
        fit(tmp_path, tiny_module(spec, generation={**GENERATION, "storage_dtype": "float16"}), shards)


def test_fit_refuses_a_folder_of_the_old_generator_in_one_line(tmp_path, made):
    spec, _, shards = made
    folder = copy_of(shards, tmp_path / "old")
    rewrite_meta(folder, as_old_generator)
    with pytest.raises(ManifestMismatchError) as err:
        fit(tmp_path, tiny_module(spec, generation=GENERATION), folder)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{folder}/manifest.json: the trajectories were written by "
                              f"{OLD_GENERATOR}, this version writes {GENERATOR}")
    assert message.endswith("regenerate them with `generate` and this config into a new folder "
                            "(data.shards), or delete this folder first")


def test_fit_refuses_a_manifest_without_a_generator(tmp_path, made):
    spec, _, shards = made
    folder = copy_of(shards, tmp_path / "older")
    rewrite_meta(folder, lambda meta: meta.pop("generator"))
    with pytest.raises(ManifestMismatchError, match=r"written before the generator version was "
                                                    r"recorded"):
        fit(tmp_path, tiny_module(spec, generation=GENERATION), folder)


def test_fit_refuses_trajectories_of_another_intermediate_point_rule(tmp_path, made):
    spec, _, shards = made
    folder = copy_of(shards, tmp_path / "lambda")
    rewrite_meta(folder, lambda meta: meta["teacher_step"].update(intermediate="lambda"))
    with pytest.raises(ManifestMismatchError,
                       match=r"teacher_step.intermediate: expected 'spacing', found 'lambda'"):
        fit(tmp_path, tiny_module(spec, generation=GENERATION), folder)


# ---------------------------------------------------------------- generate
def test_generate_refuses_a_folder_of_the_old_generator_and_keeps_it_as_it_is(tmp_path, made):
    spec, _, shards = made
    folder = copy_of(shards, tmp_path / "old")
    rewrite_meta(folder, as_old_generator)
    before = shard_bytes(folder), (folder / "manifest.json").read_text()
    with pytest.raises(ManifestMismatchError, match=rf"written by {OLD_GENERATOR}, this version "
                                                    rf"writes {GENERATOR} .* into a new folder"):
        generate_trajectories(tiny_module(spec, generation=GENERATION), SCHEDULE, folder,
                              progress=False)
    assert (shard_bytes(folder), (folder / "manifest.json").read_text()) == before


def test_generate_refuses_to_resume_a_folder_of_another_teacher(tmp_path, made):
    _, other, shards = made
    folder = copy_of(shards, tmp_path / "a")
    before = shard_bytes(folder)
    with pytest.raises(ManifestMismatchError, match=r"made by a teacher with other weights"):
        generate_trajectories(tiny_module(other, generation=GENERATION), SCHEDULE, folder,
                              progress=False)
    assert shard_bytes(folder) == before


def test_generate_through_the_cli_says_so_in_one_line_and_exits_2(tmp_path, made):
    from cli_run_helpers import run_cli, tiny_fit_config

    spec, _, shards = made
    folder = copy_of(shards, tmp_path / "old")
    rewrite_meta(folder, as_old_generator)
    config = tiny_fit_config(tmp_path / "fit.yaml", spec, folder, tmp_path / "run", 1,
                             generation=GENERATION)
    cfg = yaml.safe_load(config.read_text())  # the folder's one phase: only the version differs
    cfg["mixstep"]["phases"] = [asdict(p) for p in SCHEDULE.phases]
    config.write_text(yaml.safe_dump(cfg))
    done = run_cli(["generate", "--config", str(config), "--progress", "false",
                    "--accelerator", "cpu"], timeout=600)
    assert done.returncode == 2, done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and f"written by {OLD_GENERATOR}" in error[0]


# ---------------------------------------------------------------- ptq
def test_ptq_refuses_shards_of_a_teacher_with_other_weights(tmp_path, made):
    from ptq_helpers import GENERATION as PAIRED
    from ptq_helpers import PAIR_SCHEDULE, ptq_config

    from saq_lightning.commands.ptq import ptq

    spec, other, _ = made
    shards = tmp_path / "paired"
    generate_trajectories(tiny_module(spec, generation=PAIRED), PAIR_SCHEDULE, shards, progress=False)
    config = ptq_config(tmp_path / "ptq.yaml", other, shards, tmp_path / "out")
    with pytest.raises(ManifestMismatchError, match=r"paired/manifest.json: the trajectories were "
                                                    r"made by a teacher with other weights"):
        ptq(["--config", str(config), "--progress", "false", "--accelerator", "cpu"])
    assert not (tmp_path / "out" / "student.ckpt").exists()
