"""``DiffusionModel``: one interface to a diffusion model, whatever network, autoencoder and condition.

The rest of the package sees only this class:

* ``eps(x, timestep, cond=None, guidance_scale=1.0)`` - the noise prediction at the *model
  timestep* (training index scale ``0 .. N-1``, float or long, scalar or ``[B]``), with
  classifier-free guidance through ``sampling.guidance.classifier_free_guidance``;
* ``null_cond(batch_size)`` / ``prepare_cond(cond)`` - the unconditional input and the encoded
  condition (encode once, reuse at every sampling step);
* ``encode(images)`` / ``decode(latents)`` - images in ``[-1, 1]`` <-> the (scaled) latents the
  UNet works on; the identity for pixel-space models;
* ``noise_schedule()`` - the sampling library's ``DiscreteSchedule`` of the training schedule;
* ``with_unet(unet)`` - the same model around another noise network (the quantized student).

Conditions (``cond``), per conditioner:

==================  ==========================================  =====================================
model               raw condition                               encoded (``prepare_cond``)
==================  ==========================================  =====================================
unconditional       ``None``                                    ``None``
digits              class labels ``LongTensor [B]`` (0..9)      the same labels
LDM-4 ImageNet      class labels ``LongTensor [B]`` (0..999)    context ``[B, 1, 512]``
Stable Diffusion    token ids ``LongTensor [B, 77]``            prompt embeddings ``[B, 77, 768]``
==================  ==========================================  =====================================

``eps`` accepts either form. The null condition is the null class (10 for digits, 1000 for
ImageNet) or the empty prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .autoencoders import decode_latents, encode_images
from .key_accounting import ConversionReport

SCHEDULE_KEYS = ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps")


class DiffusionModel(nn.Module):
    """A noise network plus everything needed to sample from it (see the module docstring).

    Args:
        unet: the noise network; a diffusers ``UNet2DModel``/``UNet2DConditionModel`` or anything
            with the same forward signature (``unet(sample, timestep, class_labels=...)`` or
            ``unet(sample, timestep, encoder_hidden_states=...)``) returning a tensor, a tuple or an
            object with ``.sample``.
        schedule_config: the training noise schedule, keys ``SCHEDULE_KEYS``.
        sample_shape: ``(C, H, W)`` of the UNet input.
        conditioner: ``None`` for unconditional models, else one of :mod:`.conditioners`.
        autoencoder: diffusers ``AutoencoderKL``/``VQModel`` for latent models, else ``None``.
        latent_scale_factor: latents seen by the UNet are ``scale * first_stage_latents``.
        sampling_defaults: the sampling settings the model is evaluated with (solver, steps,
            guidance_scale, ...), for the layers that sample; informational here.
        name: a label for logs.
    """

    def __init__(
        self,
        unet: nn.Module,
        schedule_config: Mapping[str, Any],
        sample_shape: tuple[int, int, int],
        conditioner: nn.Module | None = None,
        autoencoder: nn.Module | None = None,
        latent_scale_factor: float = 1.0,
        sampling_defaults: Mapping[str, Any] | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        missing = [k for k in SCHEDULE_KEYS if k not in schedule_config]
        if missing:
            raise ValueError(f"schedule_config lacks {missing} (needs {SCHEDULE_KEYS})")
        self.unet = unet
        self.conditioner = conditioner
        self.autoencoder = autoencoder
        self.schedule_config: dict[str, Any] = {k: schedule_config[k] for k in SCHEDULE_KEYS}
        self.sample_shape: tuple[int, int, int] = tuple(int(s) for s in sample_shape)  # type: ignore[assignment]
        self.latent_scale_factor = float(latent_scale_factor)
        self.sampling_defaults: dict[str, Any] = dict(sampling_defaults or {})
        self.name = name
        self.conversion_report: ConversionReport | None = None  # set when converted from an original checkpoint

    # ------------------------------------------------------------------ structure
    @property
    def is_conditional(self) -> bool:
        return self.conditioner is not None

    @property
    def is_latent(self) -> bool:
        return self.autoencoder is not None

    def with_unet(self, unet: nn.Module) -> DiffusionModel:
        """The same model (sharing conditioner, autoencoder, schedule) around another noise network."""
        return DiffusionModel(
            unet,
            self.schedule_config,
            self.sample_shape,
            conditioner=self.conditioner,
            autoencoder=self.autoencoder,
            latent_scale_factor=self.latent_scale_factor,
            sampling_defaults=self.sampling_defaults,
            name=self.name,
        )

    def noise_schedule(self):
        """The training schedule as ``saq_lightning.sampling.schedules.DiscreteSchedule``."""
        from saq_lightning.sampling.schedules import DiscreteSchedule

        return DiscreteSchedule.from_config(**self.schedule_config)

    def noise_predictor(self, guidance_scale: float = 1.0, schedule=None):
        """This model as the samplers' noise predictor ``model(x, t_continuous, cond) -> eps``.

        Every call converts its continuous time to the model timestep (``t * N - 1``) and, for
        ``guidance_scale != 1``, applies classifier-free guidance with this model's null condition.
        """
        from saq_lightning.sampling import discrete_model, guided_model

        base = discrete_model(self.conditional_eps, schedule or self.noise_schedule())
        if guidance_scale == 1.0 or self.conditioner is None:
            return base
        return guided_model(base, guidance_scale, lambda n: self.null_cond(n))

    # ------------------------------------------------------------------ conditions
    def null_cond(self, batch_size: int, device: torch.device | str | None = None) -> Tensor | None:
        """The raw unconditional input for CFG (null class / empty prompt token ids); ``None`` if unconditional."""
        if self.conditioner is None:
            return None
        return self.conditioner.null_cond(batch_size, device=device)

    def prepare_cond(self, cond: Tensor | None) -> Tensor | None:
        """Encode a raw condition once (text -> embeddings, LDM class -> context); reusable across steps."""
        if cond is None or self.conditioner is None:
            return cond
        return self.conditioner(cond)

    # ------------------------------------------------------------------ noise prediction
    def eps(
        self,
        x: Tensor,
        timestep: Tensor | float,
        cond: Tensor | None = None,
        guidance_scale: float = 1.0,
        null_cond: Tensor | None = None,
    ) -> Tensor:
        """Noise prediction at model timestep ``timestep``, guided with ``guidance_scale`` when != 1.

        ``null_cond`` (optional) is the unconditional input in the same form as ``cond``
        (raw or encoded); by default it is :meth:`null_cond`, encoded when ``cond`` is encoded.
        """
        t = self._timesteps(timestep, x)
        if self.conditioner is None:
            if cond is not None:
                raise ValueError(f"{self.name or 'this model'} is unconditional; pass cond=None")
            if guidance_scale != 1.0:
                raise ValueError("classifier-free guidance needs a conditional model (guidance_scale must be 1)")
            return self._call_unet(x, t, None)
        if cond is None:
            raise ValueError(
                "this model is conditional: pass cond (use model.null_cond(batch) for the unconditional input)"
            )
        if guidance_scale == 1.0:
            return self.conditional_eps(x, t, cond)
        if null_cond is None:
            null_cond = self.null_cond(x.shape[0], device=x.device)
            if cond.is_floating_point():
                null_cond = self.prepare_cond(null_cond)
        from saq_lightning.sampling.guidance import classifier_free_guidance

        return classifier_free_guidance(self.conditional_eps, x, t, cond, null_cond, guidance_scale)

    def conditional_eps(self, x: Tensor, timestep: Tensor, cond: Tensor | None) -> Tensor:
        """One network evaluation with a (raw or encoded) condition, no guidance: the CFG ``eps_fn``."""
        return self._call_unet(x, self._timesteps(timestep, x), cond)

    def forward(self, x: Tensor, timestep: Tensor | float, cond: Tensor | None = None, guidance_scale: float = 1.0) -> Tensor:
        return self.eps(x, timestep, cond, guidance_scale)

    def _call_unet(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        kwargs: dict[str, Tensor] = {}
        if self.conditioner is not None:
            if cond is None:
                raise ValueError("conditional model called without a condition")
            arg = self.conditioner(cond)
            if arg.is_floating_point():
                arg = arg.to(x.dtype)
            kwargs[self.conditioner.unet_argument] = arg
        out = self.unet(x, t, **kwargs)
        if hasattr(out, "sample"):
            return out.sample
        if isinstance(out, (tuple, list)):
            return out[0]
        return out

    @staticmethod
    def _timesteps(timestep: Tensor | float, x: Tensor) -> Tensor:
        t = torch.as_tensor(timestep, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"timestep must be a scalar or have shape [{x.shape[0]}], got {tuple(t.shape)}")
        return t

    # ------------------------------------------------------------------ latents
    def encode(self, images: Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Images in ``[-1, 1]`` -> UNet-space latents (scaled); identity for pixel-space models.

        KL autoencoders give the posterior mean unless ``sample_posterior`` (LDM training samples it).
        """
        if self.autoencoder is None:
            return images
        return encode_images(self.autoencoder, images, sample_posterior, generator) * self.latent_scale_factor

    def decode(self, latents: Tensor) -> Tensor:
        """UNet-space latents -> images (roughly ``[-1, 1]``, not clamped); identity for pixel-space models.

        VQ autoencoders quantize the latents to the codebook first, as LDM does when sampling.
        """
        if self.autoencoder is None:
            return latents
        return decode_latents(self.autoencoder, latents / self.latent_scale_factor)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, sample_shape={self.sample_shape}, schedule={self.schedule_config}, "
            f"latent_scale_factor={self.latent_scale_factor}"
        )
