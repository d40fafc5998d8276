"""The one device rule (``saq_lightning/devices.py``) that generate, ptq, sample, evaluate and
diagnose share. CUDA's presence is patched so that every branch runs on any machine."""

from __future__ import annotations

import pytest
import torch

from saq_lightning.devices import DeviceError, choose_device
from saq_lightning.errors import UserError


def _cuda(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    _cuda(monkeypatch, 0)
    assert choose_device("auto", local_rank=3) == torch.device("cpu")


@pytest.mark.parametrize("name", ["auto", "cuda"])
def test_auto_and_cuda_give_each_local_rank_its_gpu_wrapped_round_the_visible_ones(monkeypatch, name):
    _cuda(monkeypatch, 2)
    assert [choose_device(name, r) for r in range(3)] == [torch.device("cuda", i) for i in (0, 1, 0)]


def test_cuda_without_a_gpu_is_a_one_line_user_error(monkeypatch):
    _cuda(monkeypatch, 0)
    with pytest.raises(DeviceError, match=r"^device cuda was asked for, but no CUDA device is available here"):
        choose_device("cuda")
    assert issubclass(DeviceError, UserError)


@pytest.mark.parametrize("name", ["cpu", "cuda:1", "meta"])
def test_any_other_name_is_taken_as_torch_names_it(monkeypatch, name):
    _cuda(monkeypatch, 2)
    assert choose_device(name, local_rank=1) == torch.device(name)
