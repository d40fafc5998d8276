"""PTQ rows of ``benchmarks/quality_digits.py``: BRECQ (on grid points, and on grid + intermediate
points), SA-PTQ (both pair roles), SA-QLoRA from SA-PTQ.

``BRECQ (grid + intermediate)`` is plain same-input BRECQ on the grid points *and* the DPM-Solver-2
intermediate points of the same calibration pairs (``ptq.same_input_points:
grid_and_intermediate``, each point with its own FP output): the control that separates SA-PTQ's
pairing from its calibration coverage under a second-order sampler (grid-only BRECQ never sees
the intermediate points that DPM-Solver-2 queries; ``fp_first_order`` does).

``PTQ naive`` rows are the PTQ rows' own starting point: the same L_p calibration, nearest
rounding, no iteration (``quality_digits.py``'s ``naive`` rows are the same recipe with the training
config's calibration, which ``--ptq_calibration_*`` may make lighter for the PTQ rows). Each PTQ row runs ``ptq`` on
``configs/digits_w8a8_saptq.yaml`` with the row's policy and objective; calibration pairs come from
one shared ``generate`` folder (DPM-Solver-2 at 20 and 10 steps, CFG 2, the quality table's guidance).
``--ptq_iters`` / ``--ptq_act_iters`` / ``--ptq_samples`` reduce the lineage's 10k / 5k / 1024.
The SA-QLoRA row trains the quality table's mixed-order recipe for ``--max_steps`` steps with
``model.init_from`` = the SA-PTQ (fp_first_order) student of the same policy, on the PTQ config's
phases (DPM-Solver-2 teacher, 20 and 10 steps: the grids whose timestep buckets that student has).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PTQ_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits_w8a8_saptq.yaml"


@dataclass(frozen=True)
class PTQRow:
    name: str
    policy: str
    objective: str
    pair_roles: str = "fp_first_order"
    points: str = "grid"  # same_input: grid, or grid_and_intermediate (the coverage control)
    qlora: bool = False  # SA-QLoRA started from this policy's SA-PTQ (fp_first_order) student
    naive: bool = False  # no iterations: nearest rounding from the same calibration as the PTQ rows

    @property
    def key(self) -> str:
        """The folder name of the row's samples: the trained rows' rule, so that
        ``quality_intervals.py`` finds them by name."""
        from quality_digits import Row

        return Row(self.name).key

    @property
    def calibrated_at_intermediate_points(self) -> bool:
        """Whether the row's student has buckets of its own at the pairs' intermediate points, which
        its calibration then covers (so it cannot share the grid-only rows' calibration)."""
        from saq_lightning.alignment.ptq import quantized_at_intermediate_points
        from saq_lightning.quant.reconstruction import ReconstructionSettings

        return quantized_at_intermediate_points(ReconstructionSettings(
            objective=self.objective, pair_roles=self.pair_roles, same_input_points=self.points))


def _rows() -> list[PTQRow]:
    rows = []
    for p in ("w8a8", "w4a8", "w4a4"):
        P = p.upper()
        rows += [PTQRow(f"{P} PTQ naive", p, "same_input", naive=True),
                 PTQRow(f"{P} BRECQ", p, "same_input"),
                 PTQRow(f"{P} BRECQ (grid + intermediate)", p, "same_input", points="grid_and_intermediate"),
                 PTQRow(f"{P} SA-PTQ (fp first-order)", p, "mixed_order", "fp_first_order"),
                 PTQRow(f"{P} SA-PTQ (fp second-order)", p, "mixed_order", "fp_second_order"),
                 PTQRow(f"{P} SA-QLoRA from SA-PTQ", p, "mixed_order", "fp_first_order", qlora=True)]
    return rows


PTQ_ROWS = _rows()


def ptq_folder(out: Path, row: PTQRow, seed: int | None) -> Path:
    """``<out>/ptq_<policy>_<tag>`` for reconstruction seed 0 (and the naive rows), ``..._seed<k>`` else."""
    tag = "naive" if row.naive else f"{row.objective}_{row.pair_roles}"
    if row.points != "grid":
        tag = f"{row.objective}_{row.points}"
    return out / (f"ptq_{row.policy}_{tag}" + (f"_seed{seed}" if seed else ""))


def _ptq_args(row: PTQRow, out: Path, args: Any, seed: int | None = None) -> list[str]:
    """``seed``: ``ptq.seed``, which draws the calibration pairs and each block's minibatches (the
    reconstruction's counterpart of a training seed; the L_p calibration it starts from is shared)."""
    iters, act_iters = (0, 0) if row.naive else (args.ptq_iters, args.ptq_act_iters)
    cli = ["--config", str(PTQ_CONFIG), "--model.init_args.policy", row.policy,
           "--data.init_args.shards", str(out / "ptq_pairs"), "--ptq.output", str(ptq_folder(out, row, seed)),
           "--ptq.objective", row.objective, "--ptq.pair_roles", row.pair_roles,
           "--ptq.same_input_points", row.points,
           "--ptq.iters", str(iters), "--ptq.act_iters", str(act_iters),
           "--ptq.num_samples", str(args.ptq_samples), "--ptq.seed", str(seed or 0)]
    if args.ptq_calibration_samples is not None:  # the initial L_p calibration (all PTQ rows alike)
        cli += ["--model.init_args.calibration.num_samples", str(args.ptq_calibration_samples),
                "--model.init_args.calibration.steps", str(args.ptq_calibration_steps)]
    return cli


def ptq_student(row: PTQRow, out: Path, args: Any, seed: int | None = None) -> tuple[Path, float]:
    """Run (or resume / reuse) the row's ``ptq``; returns its student checkpoint and seconds."""
    from saq_lightning.commands.generate import generate
    from saq_lightning.commands.ptq import ptq

    cli = _ptq_args(row, out, args, seed)
    generate(cli[:6] + ["--progress", "false"])  # keeps finished shards: made once for all rows
    _share_calibration(out, row, Path(cli[7]))
    t0 = time.perf_counter()
    ptq(cli + ["--progress", "false"])
    return Path(cli[7]) / "student.ckpt", time.perf_counter() - t0


def _share_calibration(out: Path, row: PTQRow, target: Path) -> None:
    """Rows that calibrate alike start from the same (deterministic) L_p calibration: compute it once.

    ``ptq`` loads ``ptq_state/calibration.pt`` when it exists; the first row of a group makes it. A
    group is a policy and whether its student has buckets of its own at the intermediate points
    (rows that have them calibrate those buckets too; a grid-only calibration copied to them would
    leave those buckets filled from a neighbouring grid point's data, as it did up to 410e9a9).
    """
    import shutil

    mine = target / "ptq_state" / "calibration.pt"
    if mine.exists():
        return
    group = [ptq_folder(out, r, None).name for r in PTQ_ROWS if r.policy == row.policy
             and r.calibrated_at_intermediate_points == row.calibrated_at_intermediate_points]
    found = sorted(c for name in set(group) for pattern in (name, f"{name}_seed*")
                   for c in out.glob(f"{pattern}/ptq_state/calibration.pt"))
    if found:
        mine.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found[0], mine)


def build_ptq_row_model(row: PTQRow, base: Path, out: Path, args: Any, console: Any, seed: int | None = None):
    """The row's student as a DiffusionModel (eval mode) and the seconds it took to make.

    ``seed``: the reconstruction seed (``ptq.seed``); SA-QLoRA starts from the SA-PTQ student of the
    same seed and trains with it as its training seed."""
    from saq_lightning.commands.demo import train
    from saq_lightning.students import load_student

    ckpt, seconds = ptq_student(row, out, args, seed)
    if not row.qlora:
        return load_student(ckpt).eval(), seconds
    from quality_digits import Row, row_config, row_folder  # the trained rows' recipe

    # the phases the SA-PTQ student was calibrated on: init_from refuses other timestep-bucket grids
    recipe = Row(row.name, row.policy, "mixed_order", ptq_phases())
    folder = row_folder(out, recipe, seed)
    config = row_config(base, folder, recipe, args.max_steps, seed, shards_root=out)
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["init_args"]["init_from"] = str(ckpt.resolve())
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    checkpoint = train(config, folder, retrain=False, console=console)
    return load_student(checkpoint).eval(), seconds + time.perf_counter() - t0


def ptq_phases() -> list[dict[str, int]]:
    """The MixStep phases of the PTQ config (its calibration pairs' grids)."""
    cfg = yaml.safe_load(PTQ_CONFIG.read_text())
    return cfg["mixstep"]["phases"]


def add_arguments(parser: Any) -> None:
    parser.add_argument("--ptq_iters", type=int, default=10000, help="AdaRound iterations per block")
    parser.add_argument("--ptq_act_iters", type=int, default=5000, help="activation-step iterations per block")
    parser.add_argument("--ptq_samples", type=int, default=1024, help="calibration pairs")
    parser.add_argument("--ptq_calibration_samples", type=int, default=None,
                        help="initial L_p calibration of the PTQ rows: trajectories (default: the config's)")
    parser.add_argument("--ptq_calibration_steps", type=int, default=100,
                        help="initial L_p calibration of the PTQ rows: DDIM steps per trajectory")
