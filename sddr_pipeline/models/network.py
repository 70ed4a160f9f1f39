"""SDDRNet: the SDDR refinement network N_r (shared encoder, joint attention, mask-fused decoder).

Layout (see docs/METHOD.md): a residual stem (1/2, 1/4, 1/8) and a SegFormer MiT encoder
fed the 1/4 stem features (1/16 ... 1/128) are shared by the low- and high-res inputs,
which run as one batch. The deepest low/high features attend to each other jointly.
A top-down decoder fuses each level's skip as ``Omega * F_high + (1 - Omega) * F_low``
with a predicted soft mask Omega. The output head is either ``gated`` (a per-pixel softmax
over LOW, LOW/HIGH frequency merges and HIGH, see :mod:`.fusion`; initialised to return
LOW) or the legacy ``residual`` (LOW plus a free correction).
Inputs larger than ``config.max_side`` run downsampled; the gated head's weights are then
upsampled and applied to candidates built at full size, the residual head's depth is
guided-upsampled.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import MIT_PATCH_SIZES, MIT_STRIDES, TOTAL_STRIDE, RefinerConfig
from .fusion import blend_candidates, fusion_candidates
from .mit import MiT, MiTConfig
from .upsample import area_resize, guided_upsample


class RefinerOutput(NamedTuple):
    """Refined depth (input size), side outputs at network/2 and network/4 resolution, and
    the soft masks Omega (1 = detail taken from the high-res input) at input, network/2 and
    network/4 resolution. All are Bx1xHxW. The gated head also returns its candidate
    ``weights`` (BxKxHxW, input size; None for the residual head) and the ``candidates``
    they mix (same shape); its full-size Omega is one minus the weight of LOW."""

    depth: torch.Tensor
    side2: torch.Tensor
    side4: torch.Tensor
    omega: torch.Tensor
    omega2: torch.Tensor
    omega4: torch.Tensor
    weights: torch.Tensor | None = None
    candidates: torch.Tensor | None = None


def network_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """Size the network runs at: the input size, or scaled so the long side is ``max_side``."""
    long_side = max(height, width)
    if long_side <= max_side:
        return height, width
    scale = max_side / long_side
    return max(1, round(height * scale)), max(1, round(width * scale))


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad the bottom/right of a BxCxHxW tensor so H and W divide by ``multiple``."""
    ph = -x.shape[-2] % multiple
    pw = -x.shape[-1] % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def sine_position_encoding(height: int, width: int, dim: int, device: torch.device,
                           dtype: torch.dtype, temperature: float = 10000.0) -> torch.Tensor:
    """2-D sine/cosine encoding of a height x width grid, (height*width, dim): the first half
    of the channels encodes y, the second x; coordinates are normalised to (0, 2*pi)."""
    quarter = dim // 4
    freqs = temperature ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 * math.pi
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 * math.pi
    ey = ys[:, None] / freqs
    ex = xs[:, None] / freqs
    ey = torch.cat([ey.sin(), ey.cos()], dim=1)[:, None, :].expand(height, width, 2 * quarter)
    ex = torch.cat([ex.sin(), ex.cos()], dim=1)[None, :, :].expand(height, width, 2 * quarter)
    pos = torch.cat([ey, ex], dim=-1).reshape(height * width, 4 * quarter)
    return F.pad(pos, (0, dim - 4 * quarter)).to(dtype)


def conv3x3(cin: int, cout: int, stride: int = 1, depthwise: bool = False) -> nn.Module:
    """3x3 convolution, or a depthwise 3x3 + pointwise 1x1 pair when ``depthwise`` (and cin > 1)."""
    if depthwise and cin > 1:
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1),
        )
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class ResidualDown(nn.Module):
    """Stride-2 residual block: two 3x3 convs, average-pool + 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, depthwise: bool) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride=2, depthwise=depthwise)
        self.conv2 = conv3x3(cout, cout, depthwise=depthwise)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, ceil_mode=True), nn.Conv2d(cin, cout, 1))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.act(self.conv1(x))) + self.shortcut(x))


def mit_config(config: RefinerConfig, num_channels: int) -> MiTConfig:
    """The MiT encoder's settings in ``config``, fed ``num_channels`` stem channels."""
    return MiTConfig(
        num_channels=num_channels,
        hidden_sizes=config.mit_hidden_sizes,
        depths=config.mit_depths,
        num_heads=config.mit_num_heads,
        sr_ratios=config.mit_sr_ratios,
        mlp_ratios=config.mit_mlp_ratios,
        patch_sizes=MIT_PATCH_SIZES,
        strides=MIT_STRIDES,
        drop_path_rate=config.drop_path_rate,
    )


class FeatureInteraction(nn.Module):
    """Joint self-attention over the deepest low and high tokens, added back residually."""

    def __init__(self, dim: int, layers: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.type_embed = nn.Parameter(torch.zeros(2, dim))
        nn.init.normal_(self.type_embed, std=0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, ffn, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, f_low: torch.Tensor, f_high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = f_low.shape
        pos = sine_position_encoding(h, w, c, f_low.device, f_low.dtype)
        low_tokens = f_low.flatten(2).transpose(1, 2) + pos + self.type_embed[0].to(f_low.dtype)
        high_tokens = f_high.flatten(2).transpose(1, 2) + pos + self.type_embed[1].to(f_low.dtype)
        tokens = torch.cat([low_tokens, high_tokens], dim=1)
        for layer in self.layers:
            tokens = layer(tokens)
        tokens = self.norm(tokens).to(f_low.dtype)
        d_low, d_high = tokens.transpose(1, 2).reshape(b, c, 2 * h, w).split(h, dim=2)
        return f_low + d_low, f_high + d_high


class FusionLevel(nn.Module):
    """One decoder level: soft mask Omega from [F_low, F_high, up], masked skip, fuse with up."""

    def __init__(self, skip: int, up: int, out: int, mask: int, depthwise: bool) -> None:
        super().__init__()
        self.mask = nn.Sequential(
            conv3x3(2 * skip + up, mask, depthwise=depthwise), nn.ReLU(inplace=True),
            nn.Conv2d(mask, 1, 3, padding=1),
        )
        self.fuse = nn.Sequential(
            conv3x3(skip + up, out, depthwise=depthwise), nn.ReLU(inplace=True),
            conv3x3(out, out, depthwise=depthwise), nn.ReLU(inplace=True),
        )

    def forward(self, f_low: torch.Tensor, f_high: torch.Tensor,
                up: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [f_low, f_high] if up is None else [f_low, f_high, up]
        omega = torch.sigmoid(self.mask(torch.cat(parts, dim=1)))
        skip = f_low + omega * (f_high - f_low)
        x = skip if up is None else torch.cat([skip, up], dim=1)
        return self.fuse(x), omega


def _upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


#: Initial logit of the LOW candidate in the gated head (the others start at 0):
#: softmax weight 0.988 on LOW with 5 other candidates.
LOW_LOGIT = 6.0


class SDDRNet(nn.Module):
    """The refinement network N_r. ``forward(low, high)`` takes Bx1xHxW maps in [0, 1] of any
    size and returns a :class:`RefinerOutput`; ``forward_network`` is the core at a padded
    size (H, W multiples of 128), without resizing."""

    def __init__(self, config: RefinerConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = config.stem_channels
        dw = config.depthwise
        self.stem = nn.ModuleList([ResidualDown(1, c1, dw), ResidualDown(c1, c2, dw), ResidualDown(c2, c3, dw)])
        self.mit = MiT(mit_config(config, num_channels=c2))
        deepest = config.mit_hidden_sizes[-1]
        self.interaction = (
            FeatureInteraction(deepest, config.interaction_layers, config.interaction_heads, config.interaction_ffn)
            if config.interaction_layers else None
        )
        skips = list(reversed(config.mit_hidden_sizes)) + [c3, c2, c1]
        outs = list(config.decoder_channels)
        ups = [0] + outs[:-1]
        self.decoder = nn.ModuleList(
            FusionLevel(s, u, o, config.mask_channels, dw) for s, u, o in zip(skips, ups, outs)
        )
        self.head4 = nn.Conv2d(outs[5], 1, 3, padding=1)
        self.head2 = nn.Conv2d(outs[6], 1, 3, padding=1)
        hc = config.head_channels
        self.gated = config.fusion == "gated"
        self.head_proj = nn.Conv2d(outs[6], hc, 3, padding=1)
        if self.gated:
            k = 3 + len(config.fusion_sigmas)
            # sees LOW, aligned HIGH and every other candidate's difference to LOW
            self.head_in = nn.Conv2d(k + 1, hc, 3, padding=1)
            self.head_mid = nn.Conv2d(hc, hc, 3, padding=1)
            self.head_out = nn.Conv2d(hc, k, 3, padding=1)
        else:
            self.head_in = nn.Conv2d(2, hc, 3, padding=1)
            self.head_out = nn.Conv2d(hc, 1, 3, padding=1)
        with torch.no_grad():
            for conv in (self.head4, self.head2, self.head_out):
                conv.weight.mul_(0.1)
                conv.bias.zero_()
            if self.gated:
                # untrained: weight ~0.99 on LOW, so the network starts as the identity on LOW
                self.head_out.weight.zero_()
                self.head_out.bias[0] = LOW_LOGIT

    @property
    def dtype(self) -> torch.dtype:
        return self.head_proj.weight.dtype

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Shared encoder: features coarse to fine (MiT 1/128 ... 1/16, stem 1/8, 1/4, 1/2)."""
        s1 = self.stem[0](x)
        s2 = self.stem[1](s1)
        s3 = self.stem[2](s2)
        stages = self.mit(s2)
        return [*reversed(stages), s3, s2, s1]

    def forward_network(self, low: torch.Tensor, high: torch.Tensor,
                        candidates: torch.Tensor | None = None) -> RefinerOutput:
        """Core network on inputs whose H and W are multiples of 128; outputs at that size.

        ``candidates`` (gated head): the fusion candidates at that size, when the caller
        built them before padding; by default they are built from ``low`` and ``high``.
        """
        if low.shape[-2] % TOTAL_STRIDE or low.shape[-1] % TOTAL_STRIDE:
            raise ValueError(f"forward_network needs H and W divisible by {TOTAL_STRIDE}, got {tuple(low.shape)}")
        b = low.shape[0]
        feats = self.encode(torch.cat([low, high], dim=0))
        lows = [f[:b] for f in feats]
        highs = [f[b:] for f in feats]
        if self.interaction is not None:
            lows[0], highs[0] = self.interaction(lows[0], highs[0])
        x: torch.Tensor | None = None
        omegas: list[torch.Tensor] = []
        decoded: list[torch.Tensor] = []
        for level, f_low, f_high in zip(self.decoder, lows, highs):
            up = None if x is None else _upsample_to(x, f_low)
            x, omega = level(f_low, f_high, up)
            omegas.append(omega)
            decoded.append(x)
        d4, d2 = decoded[5], decoded[6]
        side4 = F.avg_pool2d(low, 4) + self.head4(d4)
        side2 = F.avg_pool2d(low, 2) + self.head2(d2)
        if not self.gated:
            feat = _upsample_to(self.head_proj(d2), low) + self.head_in(torch.cat([low, high], dim=1))
            depth = low + self.head_out(torch.relu_(feat))
            omega = _upsample_to(omegas[6], low)
            return RefinerOutput(depth, side2, side4, omega, omegas[6], omegas[5])
        cands = self._candidates(low, high) if candidates is None else candidates
        scale = self.config.head_scale
        # LOW (candidate 0), aligned HIGH and each candidate's difference to LOW; with a
        # coarser head, built from the pooled candidates (no full-resolution copies)
        small = F.avg_pool2d(cands, scale) if scale > 1 else cands
        head_input = torch.cat([small[:, :1], small[:, -1:], small[:, 1:] - small[:, :1]], dim=1)
        proj = self.head_proj(d2)
        if proj.shape[-2:] != head_input.shape[-2:]:
            proj = _upsample_to(proj, head_input)
        logits = self.head_out(torch.relu_(self.head_mid(torch.relu_(proj + self.head_in(head_input)))))
        if scale > 1:  # contiguous, as the candidates are: no full-resolution conversion in the blend
            logits = _upsample_to(logits.contiguous(), low)
        if self.config.fusion_temperature != 1.0:
            logits = logits / self.config.fusion_temperature
        depth, weights = blend_candidates(cands, logits)
        return RefinerOutput(depth, side2, side4, 1 - weights[:, :1], omegas[6], omegas[5], weights, cands)

    def _candidates(self, low: torch.Tensor, high: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """The gated head's candidates of maps ``scale`` times the network's size: the
        frequency-merge scales and the median grow with the map (the median's window, or
        its downsampling factor when ``fusion_median_scale`` > 1)."""
        cfg = self.config
        sigmas = tuple(s * scale for s in cfg.fusion_sigmas)
        median, factor = cfg.fusion_median, cfg.fusion_median_scale
        if scale != 1.0 and median > 1:
            if factor > 1:
                factor = max(1, round(factor * scale))
            else:
                median = int(median * scale)
                median += 1 - median % 2
        return fusion_candidates(low, high, sigmas, median, factor)

    def forward(self, low: torch.Tensor, high: torch.Tensor, max_side: int | None = None) -> RefinerOutput:
        """Refine ``low`` with ``high`` (both Bx1xHxW in [0, 1], same size, any H and W).

        ``max_side`` overrides the preset's bound on the network's long side for this call
        (e.g. smaller for the many windows of two-stage refinement).
        """
        if low.ndim != 4 or low.shape[1] != 1 or low.shape != high.shape:
            raise ValueError(
                f"low and high must both be Bx1xHxW of the same shape, got {tuple(low.shape)} and {tuple(high.shape)}"
            )
        height, width = low.shape[-2:]
        if height < 1 or width < 1:
            raise ValueError(f"empty input of size {height}x{width}")
        dtype = low.dtype if torch.is_autocast_enabled(low.device.type) else self.dtype
        if not dtype.is_floating_point:
            dtype = self.dtype
        low = low.to(dtype)
        high = high.to(dtype)
        h, w = network_size(height, width, max_side or self.config.max_side)
        resized = (h, w) != (height, width)
        b = low.shape[0]
        low_n, high_n = area_resize(torch.cat([low, high], dim=0), (h, w)).split(b) if resized else (low, high)
        cands = None
        if self.gated:  # built before padding, so the output mixes the true map's candidates
            cands = pad_to_multiple(self._candidates(low_n, high_n), TOTAL_STRIDE)
        out = self.forward_network(pad_to_multiple(low_n, TOTAL_STRIDE), pad_to_multiple(high_n, TOTAL_STRIDE), cands)
        h2, w2 = -(-h // 2), -(-w // 2)
        h4, w4 = -(-h // 4), -(-w // 4)
        depth = out.depth[..., :h, :w]
        omega = out.omega[..., :h, :w]
        weights = None if out.weights is None else out.weights[..., :h, :w]
        if resized and weights is not None:
            # the mix chosen at network size, applied to candidates made at full size
            weights = F.interpolate(weights, size=(height, width), mode="bilinear", align_corners=False)
            cands = self._candidates(low, high, max(height, width) / max(h, w))
            depth = (weights * cands).sum(1, keepdim=True)
            omega = 1 - weights[:, :1]
        elif cands is not None:
            cands = cands[..., :h, :w]
        elif resized:
            cfg = self.config
            depth = guided_upsample(depth, high_n, high, cfg.guided_radius, cfg.guided_eps)
            omega = F.interpolate(omega, size=(height, width), mode="bilinear", align_corners=False)
        return RefinerOutput(
            depth=depth,
            side2=out.side2[..., :h2, :w2],
            side4=out.side4[..., :h4, :w4],
            omega=omega,
            omega2=out.omega2[..., :h2, :w2],
            omega4=out.omega4[..., :h4, :w4],
            weights=weights,
            candidates=cands,
        )
