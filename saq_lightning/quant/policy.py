"""Which modules become what: plain-data policy (YAML/JSON friendly) and its resolution.

Selection is by module *name patterns* (``fnmatch`` globs on ``named_modules()`` names, e.g.
``"*.conv_shortcut"``) and module *types* (``Conv2d``, ``Linear``), never by position.

Resolution of one module (of a wrapped type, matching ``include``):

1. a match in ``fp_patterns`` keeps it full precision;
2. otherwise it gets ``weight_bits`` / ``act_bits`` / ``lora_rank``, overridden field by field by
   every rule in ``rules`` whose pattern matches (in order; later rules win).

A pattern that matches nothing triggers a ``UserWarning`` naming it. A pattern without glob
characters that names an existing module of an unwrappable type (e.g. an ``Embedding``) is an
error, as is a ``types`` entry other than ``Conv2d``/``Linear``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from saq_lightning.errors import UserError

from .functional import check_bits
from .ranges import check_init_method

PRESETS = ("w8a8", "w4a8", "w4a4")
_PRESET_NAME = re.compile(r"w(?P<weight_bits>\d+)a(?P<act_bits>\d+)")

#: module types a policy can select (the quantized layers wrap exactly these)
WRAPPABLE: dict[str, type[nn.Module]] = {"Conv2d": nn.Conv2d, "Linear": nn.Linear}


def check_wrappable(module: nn.Module, name: str = "") -> None:
    """Raise ``TypeError`` if ``module`` is not a Conv2d/Linear this package can quantize."""
    where = f" {name!r}" if name else ""
    if not isinstance(module, tuple(WRAPPABLE.values())):
        raise TypeError(
            f"cannot wrap module{where} of type {type(module).__name__}: quantized layers exist for "
            f"{sorted(WRAPPABLE)}"
        )
    if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
        raise TypeError(
            f"cannot wrap Conv2d{where}: padding={module.padding!r}, padding_mode="
            f"{module.padding_mode!r} (only numeric zero padding is supported)"
        )


@dataclass
class LayerRule:
    """Override for modules whose name matches ``pattern`` (``None`` = keep the default).

    ``lora_rank = 0`` disables LoRA for the matched modules.
    """

    pattern: str
    weight_bits: int | None = None
    act_bits: int | None = None
    lora_rank: int | None = None


def default_rules() -> list[LayerRule]:
    """The lineage's first/last layers: time embedding MLP, input and output conv at W8A8, no LoRA."""
    return [
        LayerRule("time_embedding.*", weight_bits=8, act_bits=8, lora_rank=0),
        LayerRule("conv_in", weight_bits=8, act_bits=8, lora_rank=0),
        LayerRule("conv_out", weight_bits=8, act_bits=8, lora_rank=0),
    ]


def default_fp_patterns() -> list[str]:
    """ResBlock shortcut convs and downsampling convs stay FP (as in EfficientDM)."""
    return ["*.conv_shortcut", "*.downsamplers.*.conv"]


@dataclass
class QuantPolicy:
    """Quantization policy. Plain data: lives in a LightningCLI YAML and in the export manifest.

    Defaults are the ``w4a4`` preset of the paper's lineage (EfficientDM / SA-QLoRA).
    """

    name: str = "w4a4"
    weight_bits: int = 4
    act_bits: int = 4
    lora_rank: int = 32
    lora_alpha: float | None = None  # None: alpha = rank (scaling 1)
    types: list[str] = field(default_factory=lambda: ["Conv2d", "Linear"])
    include: list[str] = field(default_factory=lambda: ["*"])
    fp_patterns: list[str] = field(default_factory=default_fp_patterns)
    rules: list[LayerRule] = field(default_factory=default_rules)
    weight_symmetric: bool = False
    weight_per_channel: bool = True
    weight_init: str = "lp"
    act_symmetric: bool = False
    act_init: str = "lp"
    lp_p: float = 2.4
    n_buckets: int = 100
    num_train_timesteps: int = 1000
    quantize_attention_matmuls: bool = False
    attn_bits: int | None = None  # None: act_bits

    def __post_init__(self) -> None:
        self.rules = [r if isinstance(r, LayerRule) else LayerRule(**dict(r)) for r in self.rules]
        self.types, self.include, self.fp_patterns = list(self.types), list(self.include), list(self.fp_patterns)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError``/``TypeError`` for anything the quantizers cannot do."""
        check_bits(self.weight_bits, "weight bit width")
        check_bits(self.act_bits, "activation bit width")
        if self.attn_bits is not None:
            check_bits(self.attn_bits, "attention bit width")
        for r in self.rules:
            if r.weight_bits is not None:
                check_bits(r.weight_bits, f"weight bit width (rule {r.pattern!r})")
            if r.act_bits is not None:
                check_bits(r.act_bits, f"activation bit width (rule {r.pattern!r})")
            if r.lora_rank is not None and r.lora_rank < 0:
                raise ValueError(f"rule {r.pattern!r}: lora_rank must be >= 0, got {r.lora_rank}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
        for t in self.types:
            if t not in WRAPPABLE:
                raise TypeError(f"policy.types: cannot wrap module type {t!r}; supported: {sorted(WRAPPABLE)}")
        check_init_method(self.weight_init)
        check_init_method(self.act_init)
        if self.n_buckets < 1 or self.num_train_timesteps < 1:
            raise ValueError("n_buckets and num_train_timesteps must be >= 1")
        if self.lp_p <= 0:
            raise ValueError(f"lp_p must be > 0, got {self.lp_p}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantPolicy:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown QuantPolicy fields: {sorted(unknown)}")
        return cls(**dict(d))


class UnknownPresetError(UserError, ValueError):
    """A policy name that is not one of the presets (``naive:w9a9``, ``policy: w5a5``)."""


def preset(name: str, **overrides: Any) -> QuantPolicy:
    """``w8a8``, ``w4a8`` or ``w4a4`` (the lineage's settings), with optional field overrides.

    Every preset: time embedding, input and output conv at 8 bit without LoRA; ResBlock
    shortcuts and downsample convs FP (``fp_patterns=[]`` quantizes them too); LoRA rank 32
    elsewhere; per-channel asymmetric weights, per-timestep asymmetric activations (100 buckets).
    """
    match = _PRESET_NAME.fullmatch(name) if isinstance(name, str) else None
    if name not in PRESETS or match is None:
        raise UnknownPresetError(f"unknown quantization preset {name!r}; choose one of {PRESETS} (w<weight bits>a<act bits>)")
    bits = {k: int(v) for k, v in match.groupdict().items()}
    return QuantPolicy(**{"name": name, **bits, **overrides})


def as_policy(policy: QuantPolicy | str | Mapping[str, Any]) -> QuantPolicy:
    """The one way to a policy: a ``QuantPolicy``, a preset name (``w4a4``), a plain dict of
    policy fields (e.g. from YAML/JSON) or ``{preset: w4a8, <field overrides>}``."""
    if isinstance(policy, QuantPolicy):
        policy.validate()
        return policy
    if isinstance(policy, str):
        return preset(policy)
    if isinstance(policy, Mapping):
        fields = dict(policy)
        name = fields.pop("preset", None)
        return preset(name, **fields) if name is not None else QuantPolicy.from_dict(fields)
    raise TypeError(f"expected a QuantPolicy, preset name or dict, got {type(policy).__name__}")


@dataclass(frozen=True)
class LayerPlan:
    """What one module becomes: its resolved bits and LoRA rank, and the policy for the rest
    (symmetry, initialisation, buckets, LoRA alpha). The quantized layer is built from it."""

    name: str
    type: str
    weight_bits: int
    act_bits: int
    lora_rank: int
    policy: QuantPolicy


@dataclass
class Resolution:
    """Result of applying a policy to a model."""

    layers: list[LayerPlan]
    fp_kept: list[str]  # wrappable modules kept full precision by fp_patterns
    unmatched: list[str]  # patterns that matched no module


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def resolve_policy(model: nn.Module, policy: QuantPolicy, warn: bool = True) -> Resolution:
    """Decide, for every module of ``model``, whether and how it is quantized."""
    policy.validate()
    wrap_types = tuple(WRAPPABLE[t] for t in policy.types)
    modules = dict(model.named_modules())
    candidates = [n for n, m in modules.items() if n and isinstance(m, wrap_types)]

    all_patterns = [("include", p) for p in policy.include] + [("fp_patterns", p) for p in policy.fp_patterns]
    all_patterns += [("rules", r.pattern) for r in policy.rules]
    for _, pat in all_patterns:  # a literal name of an unwrappable module is a mistake, not a no-op
        if not _is_glob(pat) and pat in modules and not isinstance(modules[pat], wrap_types):
            check_wrappable(modules[pat], pat)  # raises TypeError for foreign types
            raise TypeError(f"module {pat!r} is a {type(modules[pat]).__name__}, not in policy.types {policy.types}")

    def match(name: str, pat: str) -> bool:
        return fnmatch.fnmatchcase(name, pat)

    used: set[tuple[str, str]] = set()
    layers: list[LayerPlan] = []
    fp_kept: list[str] = []
    for name in candidates:
        inc = [p for p in policy.include if match(name, p)]
        used.update(("include", p) for p in inc)
        if not inc:
            continue
        fp = [p for p in policy.fp_patterns if match(name, p)]
        used.update(("fp_patterns", p) for p in fp)
        if fp:
            fp_kept.append(name)
            continue
        w, a, r = policy.weight_bits, policy.act_bits, policy.lora_rank
        for rule in policy.rules:
            if match(name, rule.pattern):
                used.add(("rules", rule.pattern))
                w = rule.weight_bits if rule.weight_bits is not None else w
                a = rule.act_bits if rule.act_bits is not None else a
                r = rule.lora_rank if rule.lora_rank is not None else r
        check_wrappable(modules[name], name)
        layers.append(LayerPlan(name, type(modules[name]).__name__, w, a, r, policy))

    unmatched = [f"{where}: {pat!r}" for where, pat in all_patterns if (where, pat) not in used]
    if warn:
        for u in unmatched:
            warnings.warn(
                f"quant policy pattern {u} matched no {'/'.join(policy.types)} module", UserWarning, stacklevel=3
            )
    return Resolution(layers, fp_kept, unmatched)
