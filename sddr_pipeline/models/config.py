"""Architecture configuration of the SDDR refinement network N_r, and its named presets.

A :class:`RefinerConfig` fully determines the module layout (and so the weight-file keys);
it is stored next to the weights as JSON (``config.json`` or safetensors metadata).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

from ..inference.options import RANGE_CLAMP, check_range_clamp
from ..io.mappings import check_keys, field_names

#: Stride of the stem in front of the MiT encoder (its input is the 1/4-scale stem feature).
STEM_STRIDE = 4
#: MiT patch-embedding kernels and strides per stage (1/16 ... 1/128 of the network input).
MIT_PATCH_SIZES = (7, 3, 3, 3)
MIT_STRIDES = (4, 2, 2, 2)
#: How the decoder's output becomes depth. ``residual`` (the first bundled weights): LOW
#: plus a free correction. ``gated``: a per-pixel softmax over LOW, frequency merges of
#: LOW and HIGH at ``fusion_sigmas`` px and HIGH (:mod:`.fusion`), initialised to LOW.
FUSIONS = ("residual", "gated")
#: Every network input is padded to a multiple of this.
TOTAL_STRIDE = STEM_STRIDE * 4 * 2 * 2 * 2
#: Largest value of each size setting (per entry for the tuples): about 8x the widest
#: preset, so a typo or a hostile config.json (``interaction_ffn: 1000000000000``) is a
#: named error instead of an attempt to allocate terabytes.
SIZE_LIMITS: dict[str, int] = {
    "stem_channels": 1024,
    "mit_hidden_sizes": 2048,
    "mit_depths": 32,
    "mit_num_heads": 64,
    "mit_sr_ratios": 64,
    "mit_mlp_ratios": 16,
    "interaction_layers": 64,
    "interaction_heads": 64,
    "interaction_ffn": 16384,
    "decoder_channels": 2048,
    "mask_channels": 1024,
    "head_channels": 1024,
    "max_side": 16384,
    "guided_radius": 64,
}

#: Settings that change no parameter: weights trained under one run under another
#: (``Refiner.with_config``, training ``init``, a resumed run switching presets).
RUNTIME_SETTINGS = frozenset({
    "name", "max_side", "guided_radius", "guided_eps", "drop_path_rate", "head_scale", "fusion_median",
    "fusion_median_scale", "range_clamp", "fusion_temperature",
})


def _ints(value: Any, n: int, name: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of {n} integers, got {value!r}") from None
    if len(out) != n:
        raise ValueError(f"{name} must have {n} entries, got {len(out)}: {value!r}")
    if any(v != w for v, w in zip(out, value)):
        raise ValueError(f"{name} must hold integers, got {value!r}")
    return out


@dataclass(frozen=True)
class RefinerConfig:
    """Hyper-parameters of N_r; validated on construction (``ValueError`` on bad values).
    The defaults are the ``sddr-paper`` architecture.

    Levels of the decoder, coarse to fine: the four MiT stages (1/128, 1/64, 1/32, 1/16
    of the network input) then the stem's 1/8, 1/4 and 1/2 features; ``decoder_channels``
    gives the decoder width at each of these seven levels. ``head_channels`` is the width of
    the full-resolution depth head. ``depthwise`` swaps the 3x3 convolutions of the stem and
    the decoder for depthwise-separable ones (speed). ``max_side`` bounds the long side the
    network runs at; larger inputs are guided-upsampled (``guided_radius``/``guided_eps``).
    ``fusion`` picks the output head (see :data:`FUSIONS`); ``fusion_sigmas`` are the
    gated head's frequency-merge scales in pixels of the network's input (they scale with
    the map when it runs downsampled), ``fusion_median`` the window of the median that
    takes RGB texture out of HIGH - LOW (see :mod:`.fusion`), taken on that difference
    area-downsampled by ``fusion_median_scale`` (1, 2 or 4; 2 with a 3x3 window is a
    cheap ~6 px median). Configs saved before ``fusion`` existed load as
    ``residual``. ``head_scale`` (gated head only): the head predicts its candidate logits at
    1/``head_scale`` of the network's resolution (1, 2 or 4) and upsamples them before the
    full-resolution blend; 2 costs about a quarter of the full-resolution head. ``range_clamp`` is not architecture but the local-range clamp these
    weights are meant to run with (:mod:`sddr_pipeline.inference.range_clamp`; 0 = none),
    the default of every refinement that does not set one: it travels with the weights.
    ``fusion_temperature`` (gated head) is another such runtime setting: the candidate
    weights are softmax(logits / T), so T > 1 moves weight from the network's first choice
    to the other candidates (LOW and LOW plus filtered HIGH detail); chosen on the
    validation bar for the bundled weights (docs/QUALITY_HISTORY.md, section 13).
    """

    name: str = "custom"
    stem_channels: tuple[int, int, int] = (8, 16, 32)
    mit_hidden_sizes: tuple[int, int, int, int] = (32, 64, 160, 256)
    mit_depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    mit_num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    mit_sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mit_mlp_ratios: tuple[int, int, int, int] = (4, 4, 4, 4)
    interaction_layers: int = 8
    interaction_heads: int = 8
    interaction_ffn: int = 2048
    decoder_channels: tuple[int, int, int, int, int, int, int] = (256, 176, 112, 64, 32, 16, 8)
    mask_channels: int = 16
    head_channels: int = 8
    depthwise: bool = False
    max_side: int = 1024
    guided_radius: int = 2
    guided_eps: float = 1e-4
    drop_path_rate: float = 0.0
    fusion: str = "residual"
    fusion_sigmas: tuple[float, ...] = (3.0, 8.0, 24.0)
    fusion_median: int = 5
    fusion_median_scale: int = 1
    head_scale: int = 1
    range_clamp: float = RANGE_CLAMP
    fusion_temperature: float = 1.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        set_(self, "stem_channels", _ints(self.stem_channels, 3, "stem_channels"))
        for key in ("mit_hidden_sizes", "mit_depths", "mit_num_heads", "mit_sr_ratios", "mit_mlp_ratios"):
            set_(self, key, _ints(getattr(self, key), 4, key))
        set_(self, "decoder_channels", _ints(self.decoder_channels, 7, "decoder_channels"))
        positive = {
            "stem_channels": self.stem_channels,
            "mit_hidden_sizes": self.mit_hidden_sizes,
            "mit_depths": self.mit_depths,
            "mit_num_heads": self.mit_num_heads,
            "mit_sr_ratios": self.mit_sr_ratios,
            "mit_mlp_ratios": self.mit_mlp_ratios,
            "decoder_channels": self.decoder_channels,
        }
        for key, values in positive.items():
            if any(v < 1 for v in values):
                raise ValueError(f"{key} must be positive, got {values}")
        for hidden, heads in zip(self.mit_hidden_sizes, self.mit_num_heads):
            if hidden % heads:
                raise ValueError(f"mit_hidden_sizes {self.mit_hidden_sizes} must be divisible by mit_num_heads {self.mit_num_heads}")
        for key in ("interaction_layers", "interaction_heads", "interaction_ffn", "mask_channels",
                    "head_channels", "max_side", "guided_radius"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{key} must be an integer, got {value!r}")
        if self.interaction_layers < 0:
            raise ValueError(f"interaction_layers must be >= 0, got {self.interaction_layers}")
        for key in ("interaction_heads", "interaction_ffn", "mask_channels", "head_channels"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key, limit in SIZE_LIMITS.items():
            value = getattr(self, key)
            if max(value if isinstance(value, tuple) else (value,)) > limit:
                raise ValueError(f"{key} must be at most {limit}, got {value!r}")
        deepest = self.mit_hidden_sizes[-1]
        if deepest % 4:
            raise ValueError(f"the deepest MiT width {deepest} must be divisible by 4 (2-D sine encoding)")
        if self.interaction_layers and deepest % self.interaction_heads:
            raise ValueError(f"the deepest MiT width {deepest} must be divisible by interaction_heads {self.interaction_heads}")
        if self.max_side < TOTAL_STRIDE:
            raise ValueError(f"max_side must be >= {TOTAL_STRIDE}, got {self.max_side}")
        if self.guided_radius < 1:
            raise ValueError(f"guided_radius must be >= 1, got {self.guided_radius}")
        if not isinstance(self.depthwise, bool):
            raise ValueError(f"depthwise must be a bool, got {self.depthwise!r}")
        if not float(self.guided_eps) > 0:
            raise ValueError(f"guided_eps must be > 0, got {self.guided_eps!r}")
        if not 0.0 <= float(self.drop_path_rate) < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        try:
            sigmas = tuple(float(v) for v in self.fusion_sigmas)
        except (TypeError, ValueError):
            raise ValueError(f"fusion_sigmas must be a sequence of numbers, got {self.fusion_sigmas!r}") from None
        if not sigmas or any(not 0 < v <= 256 for v in sigmas) or list(sigmas) != sorted(set(sigmas)):
            raise ValueError(f"fusion_sigmas must be increasing, distinct, in (0, 256] px, got {self.fusion_sigmas!r}")
        set_(self, "fusion_sigmas", sigmas)
        if isinstance(self.fusion_median, bool) or not isinstance(self.fusion_median, int) \
                or self.fusion_median < 1 or self.fusion_median % 2 == 0 or self.fusion_median > 15:
            raise ValueError(f"fusion_median must be an odd integer in [1, 15] (1 = no median), got {self.fusion_median!r}")
        if isinstance(self.fusion_median_scale, bool) or self.fusion_median_scale not in (1, 2, 4):
            raise ValueError(f"fusion_median_scale must be 1, 2 or 4, got {self.fusion_median_scale!r}")
        if isinstance(self.head_scale, bool) or self.head_scale not in (1, 2, 4):
            raise ValueError(f"head_scale must be 1, 2 or 4, got {self.head_scale!r}")
        set_(self, "range_clamp", check_range_clamp(self.range_clamp))
        t = self.fusion_temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.05 <= t <= 20:
            raise ValueError(f"fusion_temperature must be a number in [0.05, 20], got {t!r}")
        set_(self, "fusion_temperature", float(t))
        set_(self, "guided_eps", float(self.guided_eps))
        set_(self, "drop_path_rate", float(self.drop_path_rate))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RefinerConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error (they would be silently ignored)."""
        return cls(**check_keys(data, field_names(cls), what="refiner config"))

    @classmethod
    def from_json(cls, text: str) -> "RefinerConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"refiner config is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "RefinerConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, RefinerConfig] = {
    # The paper's N_r: stem 8/16/32, MiT-b0, 8 joint attention layers with 8 heads (~16.8 M).
    "sddr-paper": RefinerConfig(
        name="sddr-paper",
        stem_channels=(8, 16, 32),
        mit_hidden_sizes=(32, 64, 160, 256),
        mit_depths=(2, 2, 2, 2),
        mit_num_heads=(1, 2, 5, 8),
        mit_sr_ratios=(8, 4, 2, 1),
        mit_mlp_ratios=(4, 4, 4, 4),
        interaction_layers=8,
        interaction_heads=8,
        interaction_ffn=2048,
        decoder_channels=(256, 176, 112, 64, 32, 16, 8),
        mask_channels=16,
        head_channels=8,
        depthwise=False,
        max_side=1024,
        fusion="gated",
        range_clamp=0.0,
    ),
    # CPU default: same structure, one block per MiT stage, slim interaction and decoder,
    # and the gated fusion head (output = per-pixel mix of LOW, LOW/HIGH frequency merges
    # and HIGH; the untrained network returns LOW). Gated presets run with no local-range
    # clamp (their output cannot leave its candidates' envelope; `range_clamp` opts in);
    # the residual head keeps RANGE_CLAMP, which its weights were measured with.
    # max_side 1024 = the default HIGH resolution: the weights are trained at the HIGH
    # prediction's pixel scale and lose most of their gain when run downsampled (on
    # middlebury2014q at default simulated noise, one-stage D3R 0.048 at 512 vs 0.021 at 1024).
    "sddr-small": RefinerConfig(
        name="sddr-small",
        stem_channels=(8, 16, 32),
        mit_hidden_sizes=(32, 64, 128, 160),
        mit_depths=(1, 1, 1, 1),
        mit_num_heads=(1, 2, 4, 5),
        mit_sr_ratios=(8, 4, 2, 1),
        mit_mlp_ratios=(2, 2, 2, 2),
        interaction_layers=2,
        interaction_heads=4,
        interaction_ffn=320,
        decoder_channels=(96, 64, 48, 32, 16, 12, 8),
        mask_channels=8,
        head_channels=16,
        depthwise=True,
        max_side=1024,
        fusion="gated",
        range_clamp=0.0,
    ),
}
# The first bundled weights' design (output = LOW + a free learned correction), kept to
# load them and to compare designs on one budget (docs/QUALITY_HISTORY.md).
PRESETS["sddr-small-residual"] = PRESETS["sddr-small"].replace(
    name="sddr-small-residual", head_channels=8, fusion="residual", range_clamp=RANGE_CLAMP)
# The gated head within the speed bar (docs/QUALITY_HISTORY.md, sections 5 and 7): the same
# parameters as sddr-small, candidate logits at half resolution, the texture median a 3x3
# one on the half-resolution difference (~6 px; the exact 5x5 costs ~10% of the
# predictor), and the network at most 768 px on its long side: its mix of candidates is
# chosen there and applied to candidates built at full size (training crops are 256 px,
# so training never runs downsampled). It takes sddr-small weights (training `init`, or
# a resumed run switching to it).
PRESETS["sddr-small-fast"] = PRESETS["sddr-small"].replace(
    name="sddr-small-fast", head_scale=2, fusion_median=3, fusion_median_scale=2, max_side=768)
