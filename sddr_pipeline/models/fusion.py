"""Pure functions of the gated fusion head: the candidate maps the network chooses among.

The gated refiner never writes depth values of its own. Per pixel it outputs a convex
combination (softmax weights) of candidates, each LOW plus a filtered version of the
difference ``D = H - LOW`` (``H`` = HIGH least-squares aligned to LOW, per sample):

* LOW itself (values and structure of the consistent prediction);
* ``LOW + hp_s(M)`` for a few Gaussian scales ``s``, ``M = median(D)`` over a small
  window and ``hp_s = 1 - G_s``: HIGH's detail above scale ``s`` over LOW's values (a
  frequency merge of LOW and ``LOW + M``). The median removes the RGB texture a
  high-resolution prediction copies (thin, low-amplitude ripples in D) and keeps depth
  steps (wide in D where LOW blurs them);
* ``LOW + M`` and ``LOW + D = H``.

So where LOW and HIGH agree every candidate equals LOW and so does the output, whatever
the weights; the output can never leave the per-pixel envelope of the candidates (no
invented halos); and its LOW weight says where detail was NOT taken from HIGH (Omega is
one minus it). The candidate set was chosen with an oracle that picks, per 16 px block (scripts/candidate_oracle.py),
the candidate closest to the ground truth (docs/QUALITY_HISTORY.md): without the median, even
that oracle reached only 0.70x LOW's D3R on middlebury2014q at default noise.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F

_EPS = 1e-12


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a BxCxHxW map (replicate border).

    Up to sigma 4 px an exact separable kernel of 6 sigma + 1 taps; beyond, the map is
    area-downsampled by ``f = sigma // 2``, blurred with sigma / f and upsampled
    bilinearly: a close low-pass at a fraction of the cost of a 100+ tap kernel.
    """
    if sigma <= 0:
        return x
    if sigma <= 4.0:
        k = 2 * int(math.ceil(3 * sigma)) + 1
        return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="replicate")
    f = int(sigma // 2)
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, -(-h // f)), max(1, -(-w // f))), mode="area")
    s = sigma / f
    k = 2 * int(math.ceil(3 * s)) + 1
    small = kornia.filters.gaussian_blur2d(small, (k, k), (s, s), border_type="replicate")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def align_to(src: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``src`` least-squares scale/shift aligned to ``ref``, per sample (Bx1xHxW each).

    A flat ``src`` (no defined scale) is shifted to ``ref``'s mean; the fit runs in the
    inputs' dtype promoted to at least float32.
    """
    dtype = torch.promote_types(src.dtype, torch.float32)
    s = src.to(dtype).flatten(1)
    r = ref.to(dtype).flatten(1)
    ms, mr = s.mean(1, keepdim=True), r.mean(1, keepdim=True)
    ds = s - ms
    var = (ds * ds).mean(1, keepdim=True)
    cov = (ds * (r - mr)).mean(1, keepdim=True)
    ok = var > _EPS
    scale = torch.where(ok, cov / torch.where(ok, var, torch.ones_like(var)), torch.ones_like(var))
    out = scale * ds + mr
    return out.view_as(src).to(src.dtype)


def _median3(x: torch.Tensor) -> torch.Tensor:
    """Exact 3x3 median (replicate border) in 19 min/max passes: sort each vertical triplet
    (shared by the three windows beside it), then the median of a 3x3 window is the median
    of (largest column minimum, median of column medians, smallest column maximum)."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    a, b, c = p[..., :-2, :], p[..., 1:-1, :], p[..., 2:, :]
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    mid, hi = torch.minimum(hi, c), torch.maximum(hi, c)
    lo, mid = torch.minimum(lo, mid), torch.maximum(lo, mid)
    big_lo = torch.maximum(torch.maximum(lo[..., :-2], lo[..., 1:-1]), lo[..., 2:])
    small_hi = torch.minimum(torch.minimum(hi[..., :-2], hi[..., 1:-1]), hi[..., 2:])
    med = _median_of_3(mid[..., :-2], mid[..., 1:-1], mid[..., 2:])
    return _median_of_3(big_lo, med, small_hi)


def _median_of_3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))


def median_blur(x: torch.Tensor, kernel: int, scale: int = 1) -> torch.Tensor:
    """Exact median over ``kernel`` x ``kernel`` windows (replicate border) of a BxCxHxW map.

    ``scale`` > 1: the median of the map area-downsampled by ``scale``, upsampled back
    bilinearly - a ``kernel * scale`` px median at a small fraction of its cost (3 at scale
    2 costs about 3% of kornia's exact 5x5 at 1024 px and removes texture as well on the
    validation scenes, docs/QUALITY_HISTORY.md). 3x3 runs :func:`_median3`; larger windows
    :func:`_median_separable`. Both are min/max networks with the same values as
    ``torch.median`` of every window, without its ``kernel``\ :sup:`2` copies of the map (at
    768x1024 on one CPU thread, 7x7: 0.16 s against 0.70 s for ``torch.median`` over the
    unfolded windows and 1.2 s for kornia's; 3x3 about 2x faster than kornia's)."""
    if kernel <= 1:
        return x
    if kernel % 2 == 0:
        raise ValueError(f"median_blur needs an odd kernel, got {kernel}")
    if scale > 1:
        h, w = x.shape[-2:]
        small = F.interpolate(x, size=(-(-h // scale), -(-w // scale)), mode="area")
        return F.interpolate(median_blur(small, kernel), size=(h, w), mode="bilinear", align_corners=False)
    if kernel == 3:
        return _median3(x)
    return _median_separable(x, kernel)


@functools.lru_cache(maxsize=None)
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort for ``n`` wires: compare-exchange pairs (a < b; min
    to a), the network for the next power of two with every pair touching a wire >= n
    dropped (still a sorting network: those wires would hold +inf)."""
    size = 1 << max(0, (n - 1).bit_length())
    return tuple((a, b) for a, b in _odd_even_sort(0, size - 1) if b < n)


def _odd_even_sort(lo: int, hi: int):
    """Batcher's sort of wires lo..hi (inclusive, a power-of-two count): sort both halves,
    then :func:`_odd_even_merge` them."""
    if hi > lo:
        mid = lo + (hi - lo) // 2
        yield from _odd_even_sort(lo, mid)
        yield from _odd_even_sort(mid + 1, hi)
        yield from _odd_even_merge(lo, hi, 1)


def _sort_maps(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sort a list of equal-shape maps elementwise (ascending along the list)."""
    maps = list(maps)
    for a, b in sorting_network(len(maps)):
        maps[a], maps[b] = torch.minimum(maps[a], maps[b]), torch.maximum(maps[a], maps[b])
    return maps


def _odd_even_merge(lo: int, hi: int, r: int):
    """Batcher's merge of the two sorted halves of wires lo..hi (inclusive), stride r."""
    step = 2 * r
    if step < hi - lo:
        yield from _odd_even_merge(lo, hi, step)
        yield from _odd_even_merge(lo + r, hi, step)
        yield from ((i, i + r) for i in range(lo + r, hi - r, step))
    else:
        yield (lo, lo + r)


@dataclass(frozen=True)
class _SelectionPlan:
    """The min/max operations that take the median of a ``kernel`` x ``kernel`` window
    from its column-sorted, then row-sorted values M[i][j] (see :func:`_median_separable`):
    ``leaves`` are the (i, j) that can be the median, ``ops`` (op, a, b) act on slots
    (leaves first, then the results of earlier ops), ``last_use`` frees slots early and
    ``output`` is the slot holding the median."""

    leaves: tuple[tuple[int, int], ...]
    ops: tuple[tuple[str, int, int], ...]
    last_use: tuple[int, ...]
    output: int


@functools.lru_cache(maxsize=None)
def _selection_plan(kernel: int) -> _SelectionPlan:
    """Prune and schedule the selection of the median of ``kernel``\ :sup:`2` values whose
    columns and rows are sorted. M[i][j] is at least the (i+1)(j+1) values up-left of it
    and at most the (k-i)(k-j) down-right, so only those with both counts at most
    ``median + 1`` can be the median. Each column's survivors are a sorted run; the runs
    are padded with -inf/+inf to blocks of 8 (or 16), merged by Batcher's odd-even merges
    with the constants folded, and only the operations that reach the median's wire are
    kept (about 200 at 7x7 instead of sorting 49 values per pixel)."""
    k = kernel
    median = k * k // 2
    below, chains = 0, {}
    for i in range(k):
        for j in range(k):
            if (k - i) * (k - j) >= median + 2:
                below += 1
            elif (i + 1) * (j + 1) < median + 2:
                chains.setdefault(i, []).append((i, j))
    runs = [chains[i] for i in sorted(chains)]
    block = 1 << (max(len(r) for r in runs) - 1).bit_length()
    nblocks = 1 << (len(runs) - 1).bit_length()
    leaves = [leaf for run in runs for leaf in run]
    wires: list = []
    n_low = 0
    index = 0
    for b in range(nblocks):
        run = list(range(index, index + len(runs[b]))) if b < len(runs) else []
        index += len(run)
        pad = block - len(run)
        n_low += pad // 2
        wires += ["-inf"] * (pad // 2) + run + ["+inf"] * (pad - pad // 2)
    ops: list[tuple[str, int, int]] = []
    size = block
    while size < len(wires):
        for lo in range(0, len(wires), 2 * size):
            for a, b in _odd_even_merge(lo, lo + 2 * size - 1, 1):
                x, y = wires[a], wires[b]
                if x == "-inf" or y == "+inf":
                    continue
                if x == "+inf" or y == "-inf":
                    wires[a], wires[b] = y, x
                    continue
                ops += [("min", x, y), ("max", x, y)]
                wires[a], wires[b] = len(leaves) + len(ops) - 2, len(leaves) + len(ops) - 1
        size *= 2
    output = wires[median - below + n_low]
    needed, stack = set(), [output]
    while stack:
        slot = stack.pop()
        if slot >= len(leaves) and slot not in needed:
            needed.add(slot)
            _, a, b = ops[slot - len(leaves)]
            stack += [a, b]
    renumber = {i: i for i in range(len(leaves))}
    kept = []
    for n, (op, a, b) in enumerate(ops):
        if n + len(leaves) in needed:
            renumber[n + len(leaves)] = len(leaves) + len(kept)
            kept.append((op, renumber[a], renumber[b]))
    last_use = [-1] * (len(leaves) + len(kept))
    for n, (_, a, b) in enumerate(kept):
        last_use[a] = last_use[b] = n
    return _SelectionPlan(tuple(leaves), tuple(kept), tuple(last_use), renumber[output])


#: rows per strip of :func:`_median_separable`: its ~450 passes stay in cache (2x faster at
#: 768x1024 than whole maps on the 2-core CPU machine)
_STRIP_ROWS = 64


def _median_separable(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Exact ``kernel`` x ``kernel`` median (odd kernel >= 5, replicate border) with
    min/max passes over the map, strip by strip (:data:`_STRIP_ROWS`): sort every vertical
    run of ``kernel`` values (shared by the windows beside it), sort each rank's
    horizontal runs, then select the median from the survivors of :func:`_selection_plan`."""
    pad = kernel // 2
    h = x.shape[-2]
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    strips = [_median_of_padded(padded[..., y:min(h, y + _STRIP_ROWS) + 2 * pad, :], kernel)
              for y in range(0, h, _STRIP_ROWS)]
    return torch.cat(strips, dim=-2) if len(strips) > 1 else strips[0]


def _median_of_padded(padded: torch.Tensor, kernel: int) -> torch.Tensor:
    """The median of every ``kernel`` x ``kernel`` window lying inside ``padded``."""
    h, w = padded.shape[-2] - kernel + 1, padded.shape[-1] - kernel + 1
    columns = _sort_maps([padded[..., i:i + h, :] for i in range(kernel)])
    plan = _selection_plan(kernel)
    rows = {}
    for i in sorted({i for i, _ in plan.leaves}):
        ranked = _sort_maps([columns[i][..., j:j + w] for j in range(kernel)])
        rows.update({(i, j): ranked[j] for j in range(kernel) if (i, j) in plan.leaves})
    del columns
    slots: list[torch.Tensor | None] = [rows.pop(leaf) for leaf in plan.leaves]
    for n, (op, a, b) in enumerate(plan.ops):
        slots.append((torch.minimum if op == "min" else torch.maximum)(slots[a], slots[b]))
        for s in (a, b):
            if plan.last_use[s] == n and s != plan.output:
                slots[s] = None
    return slots[plan.output].contiguous()


def fusion_candidates(
    low: torch.Tensor, high: torch.Tensor, sigmas: tuple[float, ...], median: int = 5, median_scale: int = 1
) -> torch.Tensor:
    """The candidates (Bx(3+len(sigmas))xHxW), see the module docstring: LOW, then
    ``LOW + hp_s(M)`` per sigma (px, increasing), ``LOW + M``, and HIGH aligned to LOW;
    ``M`` is the ``median`` x ``median`` median of HIGH - LOW (taken at 1/``median_scale``
    resolution, :func:`median_blur`). ``low`` and ``high`` are Bx1xHxW of one size."""
    if low.shape != high.shape or low.ndim != 4 or low.shape[1] != 1:
        raise ValueError(f"low and high must both be Bx1xHxW of one shape, got {tuple(low.shape)} and {tuple(high.shape)}")
    diff = align_to(high, low) - low
    m = median_blur(diff, median, median_scale)
    out = [low]
    for sigma in sigmas:
        out.append(low + m - gaussian_blur(m, float(sigma)))
    out += [low + m, low + diff]
    return torch.cat(out, dim=1)


def blend_candidates(candidates: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(depth, weights): the softmax over the channel dim of ``logits`` (BxKxHxW) applied to
    ``candidates`` of the same shape; depth is Bx1xHxW."""
    if candidates.shape != logits.shape:
        raise ValueError(f"candidates {tuple(candidates.shape)} and logits {tuple(logits.shape)} differ in shape")
    weights = torch.softmax(logits.float(), dim=1).to(candidates.dtype)
    return (weights * candidates).sum(1, keepdim=True), weights
