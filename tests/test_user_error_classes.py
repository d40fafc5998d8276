"""Every user-facing exception declares itself by subclassing ``UserError`` where it is defined, so
that the command line shows it as one ``error:`` line and exits with code 2 (no list of classes to
keep in step). The four errors below used to end in a full traceback; each is raised here through
the real ``python -m saq_lightning ptq`` entry point (``saq_lightning.cli.main``) on a tiny teacher
with real shards."""

from __future__ import annotations

from pathlib import Path

import pytest
from ptq_helpers import PAIR_SCHEDULE, paired_shards, ptq_config
from test_training_helpers import tiny_module

from saq_lightning.alignment.generation import generate_trajectories
from saq_lightning.cli import main
from saq_lightning.errors import UserError
from saq_lightning.user_errors import TRACEBACK_FLAG, user_error_types

PTQ = ["--progress", "false", "--accelerator", "cpu"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The tiny teacher's spec and its paired (store_pairs) calibration shards of one 10-step phase."""
    return paired_shards(tmp_path_factory.mktemp("user_errors"))


def one_error_line(capsys, args: list[str]) -> str:
    """Run the CLI, expect exit code 2, and return its one ``error:`` line (checked to be the
    last-but-one line of stderr, followed by the traceback hint, with no traceback)."""
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert [line for line in lines if line.startswith("error: ")] == [lines[-2]], err
    assert TRACEBACK_FLAG in lines[-1], err
    return lines[-2]


def test_too_few_buckets_for_the_shards_grid_is_one_line_naming_phase_and_buckets(shards, tmp_path, capsys):
    """BucketCollisionError: the shards' 10-step grid cannot get 10 distinct buckets out of 5."""
    spec, folder = shards
    cfg = ptq_config(tmp_path / "ptq.yaml", spec, folder, tmp_path / "out")
    line = one_error_line(capsys, ["ptq", "--config", str(cfg), *PTQ, "--model.init_args.policy.n_buckets", "5"])
    assert line.startswith("error: phase 0 (student_steps=10) (time_uniform, 10 steps): 5 activation-quantizer "
                           "timestep buckets cannot give its steps distinct buckets"), line


def test_shards_without_pairs_for_mixed_order_ptq_is_one_line_naming_the_manifest(shards, tmp_path, capsys):
    """PairsMissingError: shards generated without store_pairs, reconstructed with mixed-order pairs."""
    spec, _ = shards
    plain = tiny_module(spec, generation={"trajectories_per_phase": 4, "trajectories_per_shard": 2})
    generate_trajectories(plain, PAIR_SCHEDULE, tmp_path / "plain", progress=False)
    cfg = ptq_config(tmp_path / "ptq.yaml", spec, tmp_path / "plain", tmp_path / "out")
    line = one_error_line(capsys, ["ptq", "--config", str(cfg), *PTQ])
    assert line.startswith(f"error: {tmp_path / 'plain'}/manifest.json: the calibration shards hold no "
                           f"mixed-order pairs"), line


def test_a_block_pattern_matching_nothing_is_one_line_naming_the_pattern(shards, tmp_path, capsys):
    """BlockPatternError: a ``ptq.block_patterns`` entry that selects no module."""
    spec, folder = shards
    cfg = ptq_config(tmp_path / "ptq.yaml", spec, folder, tmp_path / "out", block_patterns=["no_such_block*"])
    line = one_error_line(capsys, ["ptq", "--config", str(cfg), *PTQ])
    assert line.startswith("error: block definition(s) ") and "ptq.block_patterns: 'no_such_block*'" in line, line
    assert "match no module of the UNet2DModel" in line


def test_a_state_folder_of_another_reconstruction_is_one_line_naming_it(shards, tmp_path, capsys):
    """ReconstructionStateError: rerun into a folder whose unfinished state was made with other
    iterations (one block of a real run, then the same output with ``--ptq.iters`` changed)."""
    spec, folder = shards
    cfg = ptq_config(tmp_path / "ptq.yaml", spec, folder, tmp_path / "out")
    main(["ptq", "--config", str(cfg), *PTQ, "--max_blocks", "1"])
    capsys.readouterr()
    line = one_error_line(capsys, ["ptq", "--config", str(cfg), *PTQ, "--ptq.iters", "20"])
    assert line.startswith(f"error: {tmp_path / 'out' / 'ptq_state' / 'meta.json'}: the reconstruction state "
                           f"there was made with another configuration"), line
    assert "(fields ['reconstruction'] differ)" in line


def test_the_command_line_catches_the_base_class_and_the_builtin_path_errors_only():
    """No list of the package's classes: ``UserError`` stands for all of them."""
    assert user_error_types()[0] is UserError
    assert all(t.__module__ in ("builtins", "argparse") for t in user_error_types()[1:])


#: exceptions of the package that mean a bug or an internal signal, not bad input: they keep their traceback
NOT_USER_ERRORS = {
    "saq_lightning.sampling.errors.ModelOutputTypeError",  # a noise predictor returned a non-tensor: code
    "saq_lightning.quant.reconstruction.recording._StopForward",  # control flow inside a forward pass
}


def package_exception_classes() -> dict[str, type[BaseException]]:
    """``{module.Class: class}`` for every exception class defined in the package (found with
    ``ast``, then imported)."""
    import ast
    import importlib

    root = Path(__file__).resolve().parents[1] / "saq_lightning"
    found = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = [n.name for n in tree.body if isinstance(n, ast.ClassDef)
                 and any(isinstance(b, ast.Name) and b.id.endswith(("Error", "Exception")) for b in n.bases)]
        if names:
            parts = path.relative_to(root.parent).with_suffix("").parts
            module = importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
            found.update({f"{module.__name__}.{n}": getattr(module, n) for n in names})
    return found


def test_every_exception_class_of_the_package_is_a_user_error_or_named_as_a_bug():
    classes = package_exception_classes()
    assert len(classes) >= 30  # the scan found the package's classes
    not_user = {name for name, cls in classes.items() if not issubclass(cls, UserError)}
    assert not_user == NOT_USER_ERRORS


@pytest.mark.parametrize(("args", "expected"), [
    (["--student", "naive:w9a9"], "unknown quantization preset 'w9a9'"),
    (["--num_samples", "-1"], "num_samples and batch_size must be >= 1, got -1"),
])
def test_a_bad_sampling_request_is_one_line_naming_the_value(tmp_path, capsys, args, expected):
    """Found by a bad-input probe of ``sample`` (both printed a 20-36 line traceback and exit 1)."""
    with pytest.raises(SystemExit) as stop:
        main(["sample", "--out", str(tmp_path / "s"), "--steps", "2", "--device", "cpu", "--grid_size", "0",
              "--num_samples", "4", *args])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err, err
    assert expected in err
