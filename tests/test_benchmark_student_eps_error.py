"""``benchmarks/student_eps_error.py``: the extra students it measures (``--student NAME=CKPT``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("student_eps_error", BENCH / "student_eps_error.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("quality_digits", None)


@pytest.mark.parametrize("spec", ["no_equals_sign", "=x.ckpt", "name=does/not/exist.ckpt"])
def test_a_student_spec_without_a_name_or_an_existing_checkpoint_is_refused_by_name(script, spec):
    with pytest.raises(ValueError, match="expected NAME=CKPT") as err:
        script.extra_students([spec])
    assert repr(spec) in str(err.value)
