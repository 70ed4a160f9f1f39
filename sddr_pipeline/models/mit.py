"""The SegFormer Mix-Transformer (MiT) encoder, in plain PyTorch (no ``transformers`` import).

SDDRNet's encoder used to be ``transformers.SegformerModel``; importing transformers costs
seconds at every start-up, so the encoder is implemented here. It is a drop-in for the
way SDDRNet used it, with these guarantees (checked by ``tests/test_mit.py`` against the
installed transformers):

- the same module and parameter names (``stages.{i}.patch_embeddings.proj.weight``,
  ``stages.{i}.blocks.{j}.attention.q_proj.weight``, ...), so every weight file loads
  unchanged with ``strict=True``;
- the same operations in the same order (SDPA attention with the explicit
  ``head_dim ** -0.5`` scale, exact-erf GELU, LayerNorm eps 1e-5, the same
  transpose/view sequence around each convolution, so the same memory layouts and
  kernels), hence bit-identical outputs and gradients, in eval and train mode and in any
  floating dtype;
- the same fresh initialisation (modules built in the same order, then every linear and
  convolution weight drawn from N(0, 0.02) with zero bias), consuming the random
  generator the same way, so a seeded network starts from the same weights;
- the same stochastic depth: per-sample DropPath after both residual branches of a
  block, rates growing linearly from 0 to ``drop_path_rate`` over all blocks, one
  ``torch.rand`` per call.

A stage embeds its input with an overlapping strided convolution, runs its blocks
(efficient self-attention whose keys and values come from a ``sr_ratio``-strided
convolution of the tokens, then a Mix-FFN: linear, 3x3 depthwise convolution, GELU,
linear) and returns a normalised BxCxHxW map; :class:`MiT` returns every stage's map.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Standard deviation of the initial linear and convolution weights (SegFormer's).
INIT_STD = 0.02


@dataclass(frozen=True)
class MiTConfig:
    """Per-stage settings of a MiT encoder (every tuple has one entry per stage)."""

    num_channels: int
    hidden_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    sr_ratios: tuple[int, ...]
    mlp_ratios: tuple[int, ...]
    patch_sizes: tuple[int, ...]
    strides: tuple[int, ...]
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.hidden_sizes)
        for key in ("depths", "num_heads", "sr_ratios", "mlp_ratios", "patch_sizes", "strides"):
            if len(getattr(self, key)) != n:
                raise ValueError(f"MiT {key} needs {n} entries, got {getattr(self, key)!r}")
        for hidden, heads in zip(self.hidden_sizes, self.num_heads):
            if hidden % heads:
                raise ValueError(f"MiT hidden size {hidden} is not divisible by {heads} heads")

    def drop_path_rates(self) -> list[float]:
        """Stochastic-depth rate of every block, stages in order: 0 up to ``drop_path_rate``."""
        total = sum(self.depths)
        return [self.drop_path_rate * i / max(total - 1, 1) for i in range(total)]


class DropPath(nn.Module):
    """Stochastic depth: in training, zero each sample's residual branch with probability
    ``p`` and scale the kept ones by 1 / (1 - p); the identity otherwise."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1 - self.p
        mask = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        return x.div(keep) * torch.floor(mask + keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """B x (H*W) x C tokens as a B x C x H x W view (channels-last strides, no copy)."""
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).view(b, c, height, width)


class PatchEmbedding(nn.Module):
    """Overlapping patch embedding: a strided ``k x k`` convolution (padding k // 2), then
    flattened to tokens and layer-normalised."""

    def __init__(self, cin: int, dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, kernel_size=patch_size, stride=stride, padding=patch_size // 2)
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.layer_norm(x.flatten(2).transpose(1, 2)), height, width


class SequenceReduction(nn.Module):
    """Keys/values source: the token map through an ``r x r`` stride-``r`` convolution,
    back to (fewer) tokens, layer-normalised."""

    def __init__(self, dim: int, ratio: int) -> None:
        super().__init__()
        self.sequence_reduction = nn.Conv2d(dim, dim, kernel_size=ratio, stride=ratio)
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, _, c = x.shape
        x = self.sequence_reduction(x.transpose(1, 2).reshape(b, c, height, width))
        return self.layer_norm(x.reshape(b, c, -1).transpose(1, 2))


class EfficientAttention(nn.Module):
    """Multi-head self-attention whose keys and values are spatially reduced (PVT/SegFormer)."""

    def __init__(self, dim: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scaling = self.head_dim ** -0.5
        inner = heads * self.head_dim
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.o_proj = nn.Linear(inner, dim)
        self.sr_ratio = sr_ratio
        self.sequence_reduction = SequenceReduction(dim, sr_ratio) if sr_ratio > 1 else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """B x N x (h*d) -> B x h x N x d (a view)."""
        return x.view(*x.shape[:-1], -1, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, _ = x.shape
        q = self._heads(self.q_proj(x))
        kv = x if self.sequence_reduction is None else self.sequence_reduction(x, height, width)
        k = self._heads(self.k_proj(kv))
        v = self._heads(self.v_proj(kv))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False,
                                             scale=self.scaling)
        out = out.transpose(1, 2).contiguous().view(b, n, -1)
        return self.o_proj(out)


class DepthwiseConv(nn.Module):
    """3x3 depthwise convolution of a token sequence laid out as its H x W map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.dwconv(_tokens_to_map(x, height, width)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Linear, 3x3 depthwise convolution (implicit position), exact GELU, linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), height, width)))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + MixFFN(LN(x)), each
    branch through the block's DropPath."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.layernorm_before = nn.LayerNorm(dim)
        self.attention = EfficientAttention(dim, heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.layernorm_after = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.drop_path(self.attention(self.layernorm_before(x), height, width)) + x
        return self.drop_path(self.mlp(self.layernorm_after(x), height, width)) + x


class MiTStage(nn.Module):
    """Patch embedding, blocks, final LayerNorm; returns a B x C x H x W map."""

    def __init__(self, cin: int, dim: int, depth: int, heads: int, sr_ratio: int, mlp_ratio: int,
                 patch_size: int, stride: int, drop_paths: list[float]) -> None:
        super().__init__()
        self.patch_embeddings = PatchEmbedding(cin, dim, patch_size, stride)
        self.blocks = nn.ModuleList(
            MiTBlock(dim, heads, sr_ratio, mlp_ratio, drop_paths[j]) for j in range(depth)
        )
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, height, width = self.patch_embeddings(x)
        for block in self.blocks:
            x = block(x, height, width)
        x = self.layer_norm(x)
        return x.reshape(x.shape[0], height, width, -1).permute(0, 3, 1, 2).contiguous()


class MiT(nn.Module):
    """The MiT encoder: ``forward(x)`` returns each stage's B x C_i x H_i x W_i map, finest first."""

    def __init__(self, config: MiTConfig) -> None:
        super().__init__()
        self.config = config
        rates = config.drop_path_rates()
        stages = []
        for i, dim in enumerate(config.hidden_sizes):
            start = sum(config.depths[:i])
            stages.append(MiTStage(
                cin=config.num_channels if i == 0 else config.hidden_sizes[i - 1],
                dim=dim,
                depth=config.depths[i],
                heads=config.num_heads[i],
                sr_ratio=config.sr_ratios[i],
                mlp_ratio=config.mlp_ratios[i],
                patch_size=config.patch_sizes[i],
                stride=config.strides[i],
                drop_paths=rates[start:start + config.depths[i]],
            ))
        self.stages = nn.ModuleList(stages)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """SegFormer's initialisation: linear and convolution weights ~ N(0, INIT_STD), their
        biases 0, LayerNorms the identity; weights drawn in module order."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
