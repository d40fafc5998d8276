"""``python -m saq_lightning ptq`` end to end on a tiny teacher with real paired shards: the student
checkpoint it writes is accepted by load_student, the export and ``fit``'s ``init_from``; the
TensorBoard scalars read back; a stopped-and-resumed run and a 2-rank (gloo) run give the same
student as one uninterrupted 1-rank run; bad input gets a clear error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ptq_helpers import paired_shards, ptq_config
from test_training_helpers import tiny_module

from saq_lightning.alignment.checkpointing import CheckpointMismatchError, split_student_state
from saq_lightning.commands.ptq import ptq
from saq_lightning.quant.reconstruction import BlockPatternError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptq")
    spec, shards = paired_shards(root)
    cfg = ptq_config(root / "ptq.yaml", spec, shards, root / "one")
    summary = ptq(["--config", str(cfg), "--progress", "false", "--accelerator", "cpu"])
    return root, spec, shards, summary


def _state(folder: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(folder / "student.ckpt", map_location="cpu", weights_only=True)
    return split_student_state(ckpt["state_dict"])


def test_ptq_writes_a_student_with_hard_rounding_in_every_layer_and_lower_block_losses(base):
    root, *_, summary = base
    assert summary["complete"] and summary["blocks"] >= 10
    state = _state(root / "one")
    ups = [k for k in state if k.endswith(".rounding.up")]
    layers = {k.rsplit(".", 2)[0] for k in state if k.endswith(".w_quant.step")}
    assert {k[: -len(".rounding.up")] for k in ups} == layers
    blocks = json.loads((root / "one" / "ptq_results.json").read_text())["blocks"]
    # the mixed-order objective has a floor (the FP and the quantized block see different points),
    # and 40 iterations are few: lower, not near zero
    assert sum(b["loss_after"] for b in blocks) < sum(b["loss_before"] for b in blocks)
    assert sum(b["hard_fraction"] for b in blocks) > 0


def test_tensorboard_holds_per_block_losses_regulariser_and_hard_fraction(base):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, *_ = base
    acc = EventAccumulator(str(root / "one" / "tb"))
    acc.Reload()
    blocks = json.loads((root / "one" / "ptq_results.json").read_text())["blocks"]
    for key in ("loss_before", "loss_after", "round_reg", "hard_fraction"):
        values = [e.value for e in acc.Scalars(f"ptq/{key}")]
        assert values == pytest.approx([b[key] for b in blocks], rel=1e-6)


def test_the_student_loads_for_sampling_and_exports_its_hard_codes(base, tmp_path):
    from saq_lightning.quant import export_student, load_exported
    from saq_lightning.students import load_student

    root, *_ = base
    model = load_student(root / "one" / "student.ckpt")
    student = model.unet
    layer_name, layer = next(iter(student.quant_layers()))
    assert layer.rounding is not None and layer.rounding.is_hard
    export_student(student, tmp_path / "int")
    loaded = load_exported(tmp_path / "int")
    assert torch.equal(dict(loaded.quant_layers())[layer_name].weight_codes(), layer.weight_codes())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([100, 700])
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, class_labels=labels).sample,
                                   student(x, t, class_labels=labels).sample, rtol=0, atol=1e-5)


def test_fit_starts_from_the_ptq_student_with_init_from_and_refuses_another_policy(base):
    root, spec, *_ = base
    ckpt = root / "one" / "student.ckpt"
    module = tiny_module(spec, init_from=str(ckpt))
    saved = _state(root / "one")
    now = {k: v for k, v in module.student.state_dict().items() if k in saved}
    assert set(now) == set(saved) and all(torch.equal(now[k], saved[k]) for k in saved)
    with pytest.raises(CheckpointMismatchError, match=r"model.init_from.*policy"):
        tiny_module(spec, init_from=str(ckpt), policy={"preset": "w4a8", "lora_rank": 2, "n_buckets": 10})


def test_the_ptq_student_records_its_grids_buckets_and_teacher_fingerprint(base):
    from saq_lightning.alignment.checkpointing import teacher_fingerprint
    from saq_lightning.models import build_model

    root, spec, *_ = base
    saq = torch.load(root / "one" / "student.ckpt", map_location="cpu", weights_only=True)["saq"]
    assert saq["teacher_fingerprint"] == teacher_fingerprint(build_model(spec))
    assert [(g["spacing"], g["steps"]) for g in saq["bucket_map"]["grids"]] == [("time_uniform", 10)]


def test_an_fp_second_order_student_has_no_intermediate_buckets(base):
    # its quantized side sees grid points only (the default role for the default dpm1 sampler)
    root, *_ = base
    saq = torch.load(root / "one" / "student.ckpt", map_location="cpu", weights_only=True)["saq"]
    assert all("intermediate" not in g for g in saq["bucket_map"]["grids"])


def test_init_from_refuses_a_ptq_student_of_other_teacher_weights(base, tmp_path):
    from test_training_helpers import save_tiny_teacher

    root, *_ = base
    other = save_tiny_teacher(tmp_path / "other", seed=1)  # same architecture, other weights
    with pytest.raises(CheckpointMismatchError, match=r"model.init_from.*fingerprint"):
        tiny_module(other, init_from=str(root / "one" / "student.ckpt"))


def test_init_from_refuses_phases_whose_buckets_differ_from_the_ptq_grids(base):
    from saq_lightning.data.mixstep import MixStepPhase

    root, spec, *_ = base
    module = tiny_module(spec, init_from=str(root / "one" / "student.ckpt"))
    with pytest.raises(CheckpointMismatchError, match=r"model.init_from.*calibrated and trained on the grids"):
        module.bind_bucket_map([MixStepPhase(student_steps=5, student_order=1, teacher_order=2)])
    module.bind_bucket_map([MixStepPhase(student_steps=10, student_order=1, teacher_order=2)])  # ptq's


def test_a_stopped_and_resumed_run_equals_the_uninterrupted_one(base):
    root, spec, shards, _summary = base
    cfg = ptq_config(root / "resume.yaml", spec, shards, root / "resumed")
    first = ptq(["--config", str(cfg), "--progress", "false", "--accelerator", "cpu", "--max_blocks", "5"])
    assert not first["complete"] and not (root / "resumed" / "student.ckpt").exists()
    second = ptq(["--config", str(cfg), "--progress", "false", "--accelerator", "cpu"])
    assert second["complete"] and second["skipped"] == 5
    a, b = _state(root / "one"), _state(root / "resumed")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_give_the_same_student_as_one(base):
    root, spec, shards, _ = base
    cfg = ptq_config(root / "two.yaml", spec, shards, root / "two")
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "PYTHONPATH": str(REPO), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "saq_lightning", "ptq", "--config", str(cfg),
                                       "--progress", "false", "--accelerator", "cpu"], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    a, b = _state(root / "one"), _state(root / "two")
    assert set(a) == set(b)
    ups = [k for k in a if k.endswith(".rounding.up")]
    same = sum(int((a[k] == b[k]).sum()) for k in ups) / sum(a[k].numel() for k in ups)
    # gradients are summed in another order over 2 ranks: a decision right at h = 0.5 may flip
    assert same >= 0.999
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)


def test_a_block_pattern_that_matches_nothing_is_an_error_naming_it(base, tmp_path):
    _root, spec, shards, _ = base
    cfg = ptq_config(tmp_path / "bad.yaml", spec, shards, tmp_path / "out", block_patterns=["conv_in", "no_such_block*"])
    with pytest.raises(BlockPatternError, match=r"ptq.block_patterns: 'no_such_block\*'"):
        ptq(["--config", str(cfg), "--progress", "false", "--accelerator", "cpu"])


def test_shards_without_pairs_are_refused_for_mixed_order(base, tmp_path):
    from ptq_helpers import PAIR_SCHEDULE

    from saq_lightning.alignment.generation import generate_trajectories
    from saq_lightning.data.trajectory_pairs import PairsMissingError

    _, spec, _, _ = base
    plain = tiny_module(spec, generation={"trajectories_per_phase": 4, "trajectories_per_shard": 2})
    generate_trajectories(plain, PAIR_SCHEDULE, tmp_path / "plain", progress=False)
    cfg = ptq_config(tmp_path / "bad.yaml", spec, tmp_path / "plain", tmp_path / "out")
    with pytest.raises(PairsMissingError, match=r"(?s)plain/manifest.json.*no mixed-order pairs.*store_pairs: true"):
        ptq(["--config", str(cfg), "--progress", "false", "--accelerator", "cpu"])


def test_a_bit_width_the_policy_lacks_is_an_error_naming_the_value(base, tmp_path):
    _, spec, shards, _ = base
    cfg = ptq_config(tmp_path / "bad.yaml", spec, shards, tmp_path / "out")
    with pytest.raises(Exception, match=r"w3a8"):
        ptq(["--config", str(cfg), "--model.init_args.policy", "w3a8", "--accelerator", "cpu"])


def test_a_killed_run_resumes_to_the_same_student(base):
    """SIGKILL in the middle of the run (after some blocks are saved), then the same command again."""
    import signal
    import time

    root, spec, shards, _ = base
    cfg = ptq_config(root / "killed.yaml", spec, shards, root / "killed")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "saq_lightning", "ptq", "--config", str(cfg), "--progress",
                             "false", "--accelerator", "cpu"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    blocks = root / "killed" / "ptq_state" / "blocks"
    deadline = time.monotonic() + 600
    while not (blocks / "003.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (root / "killed" / "student.ckpt").exists()
    done = len(list(blocks.glob("*.pt")))
    summary = ptq(["--config", str(cfg), "--progress", "false", "--accelerator", "cpu"])
    assert summary["complete"] and summary["skipped"] == done >= 4
    a, b = _state(root / "one"), _state(root / "killed")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
