"""Solver names parsed by pattern: the order they state and the network calls a step costs."""

from __future__ import annotations

import pytest

from saq_lightning.sampling import SOLVER_NAMES
from saq_lightning.sampling.errors import SolverConfigError
from saq_lightning.sampling.registry import model_calls_per_step, solver_order


@pytest.mark.parametrize(("name", "order", "calls"), [
    ("ddim", 1, 1), ("plms", 4, 1), ("dpm1", 1, 1), ("dpm2", 2, 2), ("dpm3", 3, 3),
    ("dpm2m", 2, 1), ("dpm3m", 3, 1), ("dpm++1", 1, 1), ("dpm++2s", 2, 2), ("dpm++3s", 3, 3),
    ("dpm++2m", 2, 1), ("dpm++3m", 3, 1)])
def test_every_solver_name_gives_its_order_and_calls_per_step(name, order, calls):
    assert solver_order(name) == order
    assert model_calls_per_step(name) == calls


def test_the_table_covers_every_registered_solver():
    assert all(solver_order(name) >= 1 for name in SOLVER_NAMES)


def test_an_order_override_sets_the_calls_of_a_singlestep_solver_only():
    assert model_calls_per_step("dpm3", order=1) == 1
    assert model_calls_per_step("dpm3m", order=2) == 1


@pytest.mark.parametrize("name", ["dpm4", "dpm2x", "euler", "dpm"])
def test_an_unknown_solver_name_is_an_error_naming_it(name):
    with pytest.raises(SolverConfigError, match=rf"solver must be one of .*got '{name}'"):
        solver_order(name)
