"""``compile: true`` runs the student through torch.compile; the loss is the eager one.

The test compiles with the ``aot_eager`` backend (TorchDynamo capture + AOTAutograd, the graphs the
inductor backend would then turn into code, run by eager kernels): inductor's code generation for
the tiny student did not finish within 10 minutes on this shared 2-core CPU (1.5 CPU-minutes
used, under a load of ~15). ``compile: true`` itself uses inductor.
"""

from __future__ import annotations

import pytest
import torch
from test_training_helpers import save_tiny_teacher, tiny_module

from saq_lightning.quant import calibrate


def _points(seed: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(4, 1, 8, 8, generator=g), "s": torch.tensor([0.9, 0.6, 0.3, 0.1]),
            "cond": torch.tensor([1, 2, 3, 4]), "target": torch.randn(4, 1, 8, 8, generator=g)}


@torch.no_grad()
def _loss(module, p) -> torch.Tensor:
    module.student.train()
    pred = module.student_direction(p["x"], p["s"], p["cond"])
    return (pred - p["target"]).square().mean()


@pytest.fixture(scope="module")
def eager_and_compiled(tmp_path_factory):
    spec = save_tiny_teacher(tmp_path_factory.mktemp("compile") / "teacher")
    eager, compiled = tiny_module(spec), tiny_module(spec, compile="aot_eager")
    g = torch.Generator().manual_seed(1)
    calib = {"sample": torch.randn(8, 1, 8, 8, generator=g), "timestep": torch.linspace(0, 999, 8).round(),
             "class_labels": torch.arange(8) % 10}
    for m in (eager, compiled):
        calibrate(m.student, [calib], act_method="minmax", weight_method="minmax")
    return eager, compiled


@pytest.mark.slow
def test_compiled_student_gives_the_eager_loss(eager_and_compiled):
    eager, compiled = eager_and_compiled
    assert isinstance(compiled.student_model.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert not isinstance(compiled.student, torch._dynamo.eval_frame.OptimizedModule)  # state stays eager
    p = _points()
    # aot_eager runs the captured graph with eager kernels: fp32 rounding at most
    torch.testing.assert_close(_loss(compiled, p), _loss(eager, p), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_compiled_student_gives_the_eager_gradients(eager_and_compiled):
    """The training step's backward runs through the compiled graph too (AOTAutograd's backward of
    the quantized layers' custom Functions), not only the forward."""
    p = _points()
    grads = []
    for m in eager_and_compiled:
        m.student.train()
        m.student.zero_grad(set_to_none=True)
        loss = (m.student_direction(p["x"], p["s"], p["cond"]) - p["target"]).square().mean()
        loss.backward()
        grads.append({n: q.grad for n, q in m.student.named_parameters() if q.grad is not None})
    eager, compiled = grads
    assert eager.keys() == compiled.keys() and len(eager) > 0
    for name in eager:  # aot_eager runs eager kernels: fp32 rounding at most
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-5, atol=1e-7, msg=name)


def test_compile_true_wraps_the_students_calls_with_the_default_backend(tmp_path):
    module = tiny_module(save_tiny_teacher(tmp_path / "teacher"), compile=True)
    assert isinstance(module.student_model.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert module.student_model.unet._orig_mod is module.student
    assert module.hparams["compile"] is True
