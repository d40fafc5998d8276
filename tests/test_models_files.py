"""Reading weight files: no pickled code runs; original configs can be given as the CompVis YAML."""

from __future__ import annotations

from pathlib import Path

import models_helpers as ref
import pytest
import torch
import yaml

from saq_lightning.models import ModelSpec, build_model, read_state_dict


def test_lightning_checkpoint_is_read_without_running_pickled_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    weights = {"model.diffusion_model.out.2.bias": torch.arange(3.0)}
    torch.save({"state_dict": weights, "callbacks": {"trap": ref.PickleTrap(str(marker))}}, tmp_path / "m.ckpt")
    state = read_state_dict(tmp_path / "m.ckpt")
    assert not marker.exists()
    assert list(state) == ["model.diffusion_model.out.2.bias"] and torch.equal(state["model.diffusion_model.out.2.bias"], torch.arange(3.0))


def test_state_dict_holding_a_non_tensor_is_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {"a": torch.ones(1), "b": ref.PickleTrap(str(tmp_path / "marker"))}}, tmp_path / "m.ckpt")
    with pytest.raises(ValueError, match="not tensors"):
        read_state_dict(tmp_path / "m.ckpt")
    assert not (tmp_path / "marker").exists()


def test_ldm_block_may_be_the_path_of_the_original_compvis_yaml(tmp_path: Path) -> None:
    params = ref.TINY_LDM_FAMILIES["bedrooms_like"]
    (tmp_path / "original.yaml").write_text(yaml.safe_dump({"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                                                                      "params": params}}))
    from_file = build_model(ModelSpec(kind="config_only", ldm=str(tmp_path / "original.yaml")))
    inline = build_model(ModelSpec(kind="config_only", ldm=params))
    assert from_file.unet.config == inline.unet.config and from_file.schedule_config == inline.schedule_config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"unet_config": {"params": dict(ref.TINY_LDM_FAMILIES["sd_like"]["unet_config"]["params"], use_scale_shift_norm=True)}},
         "scale-shift"),
        ({"parameterization": "v"}, "eps-prediction"),
        ({"conditioning_key": "concat"}, "cross-attention"),
        ({"first_stage_config": {**ref.KL_F2, "params": {**ref.KL_F2["params"],
                                 "ddconfig": {**ref.KL_F2["params"]["ddconfig"], "attn_resolutions": [8]}}}},
         "attn_resolutions"),
    ],
)
def test_original_options_diffusers_cannot_represent_raise_instead_of_building_something_else(change: dict, message: str) -> None:
    params = dict(ref.TINY_LDM_FAMILIES["sd_like"], **change)
    with pytest.raises(NotImplementedError, match=message):
        build_model(ModelSpec(kind="config_only", ldm=params, text_encoder_config=ref.TINY_CLIP))
