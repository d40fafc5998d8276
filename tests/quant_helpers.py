"""Helpers shared by tests/test_quant_*.py (tiny UNets from conftest, calibration batches)."""

from __future__ import annotations

import torch
from conftest import make_tiny_unet2d, make_tiny_unet2d_condition

from saq_lightning.quant import QuantizedUNet, calibrate, quantize_model

# DDIM "leading" grids on N = 1000 training steps
GRID_STEPS = (100, 50, 20, 10)


def leading_grid(steps: int, n: int = 1000) -> torch.Tensor:
    return torch.arange(0, n, n // steps)


def cond_batch(b: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    """Call arguments for the tiny UNet2DConditionModel (8x8x4 latents, 3 context tokens)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(b, 4, 8, 8, generator=g),
        "timestep": torch.linspace(0, 999, b).round().long(),
        "encoder_hidden_states": torch.randn(b, 3, 16, generator=g),
    }


def class_batch(b: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    """Call arguments for the tiny class-conditional UNet2DModel (8x8x1)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(b, 1, 8, 8, generator=g),
        "timestep": torch.linspace(0, 999, b).round().long(),
        "class_labels": torch.randint(0, 11, (b,), generator=g),
    }


def calibrated_cond_student(policy="w4a4", method: str = "minmax", **kw) -> tuple[torch.nn.Module, QuantizedUNet]:
    teacher = make_tiny_unet2d_condition().eval()
    student, _ = quantize_model(teacher, policy, **kw)
    calibrate(student, cond_batch(), act_method=method, weight_method=method)
    return teacher, student


def calibrated_class_student(policy="w4a4", method: str = "minmax") -> tuple[torch.nn.Module, QuantizedUNet]:
    teacher = make_tiny_unet2d().eval()
    student, _ = quantize_model(teacher, policy)
    calibrate(student, class_batch(), act_method=method, weight_method=method)
    return teacher, student


@torch.no_grad()
def perturb_lora(student: QuantizedUNet, scale: float = 0.05, seed: int = 3) -> None:
    """Give every LoRA a non-zero B (as after some training)."""
    g = torch.Generator().manual_seed(seed)
    for _, layer in student.quant_layers():
        if layer.lora is not None:
            layer.lora.B.copy_(torch.randn(layer.lora.B.shape, generator=g) * scale)


def ddp_train_worker(rank: int, world_size: int, init_file: str, result_file: str) -> None:
    """One rank of a CPU (gloo) DDP run over a calibrated student: two optimizer steps where the
    ranks use different timesteps (so different activation buckets), no find_unused_parameters."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from saq_lightning.quant import param_groups

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        _, student = calibrated_cond_student()
        ddp = DDP(student, find_unused_parameters=False)
        opt = torch.optim.AdamW(param_groups(student, lr=1e-3))
        for step in range(2):
            b = cond_batch(b=2, seed=10 + 2 * step + rank)
            b["timestep"] = torch.tensor([100 * rank + 10 * step, 999 - 300 * rank])
            out = ddp(**b).sample
            loss = out.square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        # every rank must hold the same trainable state after the synchronised steps
        flat = torch.cat([p.detach().flatten() for p in student.parameters() if p.requires_grad])
        gathered = [torch.zeros_like(flat) for _ in range(world_size)]
        dist.all_gather(gathered, flat)
        if rank == 0:
            same = all(torch.equal(gathered[0], g) for g in gathered[1:])
            lora_moved = any(torch.count_nonzero(m.lora.B) > 0 for _, m in student.quant_layers() if m.lora)
            with open(result_file, "w") as f:
                f.write(f"{same} {lora_moved}")
    finally:
        dist.destroy_process_group()
