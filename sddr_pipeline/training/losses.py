"""SDDR training losses: L = L_gt + 0.5 L_grad + 0.1 L_fusion (see docs/METHOD.md).

Pure torch functions on Bx1xHxW maps with boolean Bx1xHxW masks of valid pixels:

* :func:`loss_gt` -- scale-and-shift-invariant loss against ground truth (median / mean
  absolute deviation normalisation, trimmed MAE, multi-scale gradient matching) on the
  full-resolution and the 1/2, 1/4 side outputs;
* :func:`edge_guided_gradient_loss` -- the prediction's gradient matched to the
  pseudo-label G_S inside high-frequency regions (:func:`high_frequency_regions`);
* :func:`fusion_loss` -- a quantile hinge on the soft masks Omega;
* :func:`selection_loss` -- the gated head's candidate weights against the candidate
  closest to the ground truth (a direct signal for its choice; off unless ``select`` > 0);
* :func:`total_loss` -- the weighted sum and its float components.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F

from ..models import RefinerOutput

_EPS = 1e-6


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms.

    ``gt``/``grad``/``fusion`` weight L_gt, L_grad, L_fusion (paper: 1, 0.5, 0.1).
    ``alpha`` weights gradient matching inside L_gt (MiDaS: 0.5); ``full``/``side2``/
    ``side4`` weight L_gt on the full output and the 1/2, 1/4 side outputs (the paper gives
    no values; the side outputs are auxiliary, so they get less); ``trim`` is the fraction
    of worst pixels the MAE drops; ``scales`` the number of gradient-matching scales.
    ``select`` weights :func:`selection_loss` (gated head only), whose per-candidate errors
    are averaged over ``select_window`` px boxes.
    """

    gt: float = 1.0
    grad: float = 0.5
    fusion: float = 0.1
    alpha: float = 0.5
    full: float = 1.0
    side2: float = 0.5
    side4: float = 0.25
    trim: float = 0.2
    scales: int = 4
    select: float = 0.0
    select_window: int = 5

    def __post_init__(self) -> None:
        for key in ("gt", "grad", "fusion", "alpha", "full", "side2", "side4", "select"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
                raise ValueError(f"loss.{key} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.trim, (int, float)) and 0.0 <= self.trim < 1.0):
            raise ValueError(f"loss.trim must be in [0, 1), got {self.trim!r}")
        if isinstance(self.scales, bool) or not isinstance(self.scales, int) or self.scales < 1:
            raise ValueError(f"loss.scales must be an integer >= 1, got {self.scales!r}")
        w = self.select_window
        if isinstance(w, bool) or not isinstance(w, int) or w < 1 or w % 2 == 0:
            raise ValueError(f"loss.select_window must be an odd integer >= 1, got {w!r}")


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A zero that keeps ``like``'s graph alive (so ``backward`` works on an empty loss)."""
    return like.sum() * 0.0


def ssi_normalize(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample ``(x - median) / mean|x - median|`` over the valid pixels.

    Removes the unknown scale and shift of relative depth robustly (MiDaS). The median is
    torch's (the lower middle value for an even count); a constant sample (zero
    deviation) is only shifted. Invalid pixels are set to 0 in the output.
    """
    m = mask.bool()
    flat = torch.where(m, x, torch.full_like(x, float("nan"))).flatten(1)
    med = torch.nanmedian(flat, dim=1).values.nan_to_num(0.0)
    med = med.view(-1, *([1] * (x.ndim - 1)))
    dev = (x - med).abs()
    count = m.flatten(1).sum(1).clamp_min(1)
    mad = (torch.where(m, dev, torch.zeros_like(dev)).flatten(1).sum(1) / count).view_as(med)
    out = (x - med) / mad.clamp_min(_EPS)
    return torch.where(m, out, torch.zeros_like(out))


def ssi_trimmed_mae(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, trim: float = 0.2) -> torch.Tensor:
    """Mean |ssi(pred) - ssi(target)| over each sample's valid pixels after dropping the
    ``floor(trim * n_valid)`` largest residuals; averaged over samples with a valid pixel."""
    m = mask.bool()
    res = (ssi_normalize(pred, m) - ssi_normalize(target, m)).abs().flatten(1)
    res = torch.where(m.flatten(1), res, torch.full_like(res, float("inf")))
    n_valid = m.flatten(1).sum(1)
    n_keep = n_valid - torch.floor(n_valid.double() * trim + 1e-9).long()
    ordered = torch.sort(res, dim=1).values
    keep = torch.arange(res.shape[1], device=res.device)[None, :] < n_keep[:, None]
    per_sample = torch.where(keep, ordered, torch.zeros_like(ordered)).sum(1) / n_keep.clamp_min(1)
    has = n_keep > 0
    if not bool(has.any()):
        return _zero(pred)
    return per_sample[has].mean()


def gradient_matching(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, scales: int = 4) -> torch.Tensor:
    """Multi-scale gradient matching of the normalised residual ``R = ssi(pred) - ssi(target)``
    (MiDaS): at scale s the residual is subsampled by ``2**s`` (every 2**s-th pixel),
    ``sum(|dR/dx| + |dR/dy|)`` over gradient pairs of two valid pixels is divided by the
    number of valid pixels at that scale (over the whole batch), and scales are summed."""
    m = mask.bool()
    res = ssi_normalize(pred, m) - ssi_normalize(target, m)
    total = _zero(pred)
    for s in range(scales):
        step = 2**s
        r = res[..., ::step, ::step]
        ms = m[..., ::step, ::step]
        count = int(ms.sum())
        if count == 0:
            continue
        mx = ms[..., :, 1:] & ms[..., :, :-1]
        my = ms[..., 1:, :] & ms[..., :-1, :]
        gx = (r[..., :, 1:] - r[..., :, :-1]).abs()
        gy = (r[..., 1:, :] - r[..., :-1, :]).abs()
        total = total + (torch.where(mx, gx, torch.zeros_like(gx)).sum() + torch.where(my, gy, torch.zeros_like(gy)).sum()) / count
    return total


def masked_downsample(target: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Area-downsample ``target`` to ``size`` averaging only valid pixels; a low-res pixel is
    valid when at least half of its footprint was. Returns ``(target, mask)``."""
    m = mask.to(target.dtype)
    t = torch.where(mask.bool(), target, torch.zeros_like(target))
    num = F.adaptive_avg_pool2d(t * m, size)
    den = F.adaptive_avg_pool2d(m, size)
    valid = den >= 0.5
    return torch.where(valid, num / den.clamp_min(_EPS), torch.zeros_like(num)), valid


def loss_gt(output: RefinerOutput, target: torch.Tensor, mask: torch.Tensor, weights: LossWeights = LossWeights()) -> torch.Tensor:
    """L_gt: ``w * (trimmed MAE + alpha * gradient matching)`` summed over the full output
    (``weights.full``) and the 1/2, 1/4 side outputs (``side2``/``side4``), the target being
    mask-aware area-downsampled to each side output's size."""
    total = _zero(output.depth)
    for pred, w in ((output.depth, weights.full), (output.side2, weights.side2), (output.side4, weights.side4)):
        if w == 0:
            continue
        pred = pred.float()
        if pred.shape[-2:] == target.shape[-2:]:
            t, m = target, mask.bool()
        else:
            t, m = masked_downsample(target, mask, tuple(pred.shape[-2:]))
        term = ssi_trimmed_mae(pred, t, m, weights.trim)
        if weights.alpha:
            term = term + weights.alpha * gradient_matching(pred, t, m, weights.scales)
        total = total + w * term
    return total


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Differentiable Sobel gradient magnitude of a Bx1xHxW map (the operator of
    ``inference.edges.gradient_magnitude``; a tiny epsilon keeps sqrt's gradient finite)."""
    g = kornia.filters.spatial_gradient(x.float(), mode="sobel", order=1, normalized=True)
    return torch.sqrt(g[:, :, 0] ** 2 + g[:, :, 1] ** 2 + 1e-12)


def kmeans(points: torch.Tensor, k: int, seed: int = 0, iters: int = 50) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding from a ``torch.Generator(seed)``.

    ``points`` is Nx2; returns N cluster labels in ``[0, min(k, N))``. Deterministic for a
    given seed; an emptied cluster keeps its previous centre.
    """
    n = points.shape[0]
    k = min(k, n)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    pts = points.double().cpu()
    gen = torch.Generator().manual_seed(int(seed))
    centres = [pts[int(torch.randint(n, (1,), generator=gen))]]
    d2 = ((pts - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0:
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            idx = int(torch.multinomial(d2 / total, 1, generator=gen))
        centres.append(pts[idx])
        d2 = torch.minimum(d2, ((pts - pts[idx]) ** 2).sum(1))
    c = torch.stack(centres)
    labels = torch.cdist(pts, c).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(c).index_add_(0, labels, pts)
        counts = torch.bincount(labels, minlength=k).double()[:, None]
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        new = torch.cdist(pts, c).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def edge_clusters(gs: torch.Tensor, top: float = 0.05, k: int = 8, seed: int = 0) -> torch.Tensor:
    """Edge clusters of a pseudo-label edge map G_S (Bx1xHxW, or HxW): per sample, the
    pixels strictly above the ``1 - top`` quantile of G_S (the top 5 %) are grouped by
    k-means on their (y, x) coordinates (seed ``seed + sample index``). Returns Bx1xHxW
    int64 labels: the cluster in ``[0, k)`` of each such pixel, -1 elsewhere (so the
    clusters are disjoint and hold only top-``top`` pixels)."""
    if gs.ndim == 2:
        gs = gs[None, None]
    b, _, h, w = gs.shape
    out = torch.full((b, 1, h, w), -1, dtype=torch.long, device=gs.device)
    for i in range(b):
        g = gs[i, 0].detach().float()
        thr = torch.quantile(g.flatten().cpu(), 1.0 - top).to(g.device)
        coords = torch.nonzero(g > thr)
        if coords.shape[0] == 0:
            continue
        labels = kmeans(coords, k, seed=seed + i).to(gs.device)
        out[i, 0, coords[:, 0], coords[:, 1]] = labels
    return out


def cluster_boxes(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Bounding boxes of :func:`edge_clusters` labels (Bx1xHxW) as bool masks BxkxHxW;
    a cluster with no pixel gives an empty mask."""
    b, _, h, w = labels.shape
    out = torch.zeros(b, k, h, w, dtype=torch.bool, device=labels.device)
    for i in range(b):
        lab = labels[i, 0]
        for c in range(k):
            ys, xs = torch.nonzero(lab == c, as_tuple=True)
            if ys.numel() == 0:
                continue
            out[i, c, int(ys.min()) : int(ys.max()) + 1, int(xs.min()) : int(xs.max()) + 1] = True
    return out


def high_frequency_regions(gs: torch.Tensor, top: float = 0.05, k: int = 8, seed: int = 0) -> torch.Tensor:
    """High-frequency regions of a pseudo-label edge map G_S (Bx1xHxW, or HxW).

    Per sample, the pixels strictly above the ``1 - top`` quantile of G_S (the top 5 %)
    are grouped by k-means on their (y, x) coordinates into ``k`` clusters
    (:func:`edge_clusters`); each region is the bounding box of one cluster, so it holds
    the edges AND the flat pixels beside them (the gradient loss then also penalises
    spurious gradients near edges). Returns bool masks BxkxHxW; a sample with fewer edge
    pixels than ``k`` has empty trailing masks.
    """
    return cluster_boxes(edge_clusters(gs, top, k, seed), k)


def edge_guided_gradient_loss(pred: torch.Tensor, gs: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """L_grad: in each region, the prediction's Sobel gradient MAGNITUDE ``g`` (G_S is a
    magnitude map, see ``inference.edges.edge_map``) is aligned to G_S by the least-squares
    ``a * g + b`` over the region's pixels (differentiable closed form), and the mean
    ``|a * g + b - G_S|`` is taken; the loss is the average over non-empty regions.

    ``pred``/``gs`` are Bx1xHxW, ``regions`` BxKxHxW bool. No region: 0 (graph kept).
    """
    g = sobel_magnitude(pred)
    w = regions.to(g.dtype)
    n = w.sum((-2, -1))
    if not bool((n > 0).any()):
        return _zero(pred)
    target = gs.float().expand_as(w)
    gb = g.expand_as(w)
    nn_ = n.clamp_min(1)
    mg = (w * gb).sum((-2, -1)) / nn_
    mt = (w * target).sum((-2, -1)) / nn_
    dg = gb - mg[..., None, None]
    dt = target - mt[..., None, None]
    var = (w * dg * dg).sum((-2, -1))
    cov = (w * dg * dt).sum((-2, -1))
    a = cov / (var + 1e-12)
    bias = mt - a * mg
    err = (w * (a[..., None, None] * gb + bias[..., None, None] - target).abs()).sum((-2, -1)) / nn_
    return err[n > 0].mean()


def fusion_loss(omega2: torch.Tensor, omega4: torch.Tensor, gs: torch.Tensor, q_hi: float = 0.85, q_lo: float = 0.15) -> torch.Tensor:
    """L_fusion: quantile hinge on the 1/2 and 1/4 soft masks Omega.

    G_S is area-downsampled to each mask's size; per sample, edge pixels are those at or
    above G_S's ``q_hi`` quantile and flat pixels those at or below its ``q_lo`` quantile
    (a pixel at both, i.e. a constant G_S, is neither). The
    hinge asks ``Omega >= q_hi`` on edges and ``Omega <= q_lo`` on flat pixels
    (``mean relu(q_hi - Omega)`` + ``mean relu(Omega - q_lo)``): a margin, not a push to
    saturation. Averaged over samples, then over the two scales.
    """
    terms = []
    for omega in (omega2, omega4):
        om = omega.float().flatten(1)
        g = F.adaptive_avg_pool2d(gs.float(), tuple(omega.shape[-2:])).flatten(1)
        hi = torch.quantile(g, q_hi, dim=1, keepdim=True)
        lo = torch.quantile(g, q_lo, dim=1, keepdim=True)
        edge = (g >= hi) & (g > lo)
        flat = (g <= lo) & (g < hi)
        e = (torch.where(edge, F.relu(q_hi - om), torch.zeros_like(om)).sum(1) / edge.sum(1).clamp_min(1))
        f = (torch.where(flat, F.relu(om - q_lo), torch.zeros_like(om)).sum(1) / flat.sum(1).clamp_min(1))
        terms.append((e + f).mean())
    return (terms[0] + terms[1]) / 2


def align_masked(src: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``src`` least-squares scale/shift aligned to ``ref`` over each sample's valid pixels
    (Bx1xHxW each); a sample with no spread in ``src`` is shifted to ``ref``'s mean."""
    m = mask.to(src.dtype)
    n = m.flatten(1).sum(1).clamp_min(1).view(-1, 1, 1, 1)
    ms = (src * m).flatten(1).sum(1).view_as(n) / n
    mr = (ref * m).flatten(1).sum(1).view_as(n) / n
    ds = (src - ms) * m
    var = (ds * ds).flatten(1).sum(1).view_as(n)
    cov = (ds * (ref - mr)).flatten(1).sum(1).view_as(n)
    ok = var > _EPS * n
    scale = torch.where(ok, cov / torch.where(ok, var, torch.ones_like(var)), torch.zeros_like(var))
    return scale * (src - ms) + mr


def selection_targets(candidates: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      window: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(best, spread) per pixel: the index (Bx1xHxW, long) of the candidate whose mean
    absolute error to ``target`` (already in the candidates' units) over the valid pixels
    of a ``window`` box is smallest, and the largest minus that smallest error: what a
    wrong choice costs there (0 where no valid pixel is near)."""
    m = mask.to(candidates.dtype)
    err = (candidates - target).abs() * m
    if window > 1:
        pad = window // 2
        err = F.avg_pool2d(err, window, 1, pad, count_include_pad=False)
        m = F.avg_pool2d(m, window, 1, pad, count_include_pad=False)
    err = err / m.clamp_min(_EPS)
    low, best = err.min(1, keepdim=True)
    spread = torch.where(m > 0, err.max(1, keepdim=True).values - low, torch.zeros_like(low))
    return best, spread


def selection_loss(weights: torch.Tensor, best: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the candidate ``weights`` (softmax, BxKxHxW) against ``best``, each
    pixel weighted by ``spread`` (:func:`selection_targets`) and normalised by its sum."""
    total = spread.sum()
    if float(total) <= 0:
        return _zero(weights)
    nll = -torch.log(weights.float().gather(1, best).clamp_min(1e-6))
    return (nll * spread).sum() / total


def total_loss(
    output: RefinerOutput,
    target: torch.Tensor,
    mask: torch.Tensor,
    weights: LossWeights = LossWeights(),
    gs: torch.Tensor | None = None,
    regions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``L = gt * L_gt + grad * L_grad + fusion * L_fusion + select * L_select``.

    Without a pseudo-label ``gs`` (stage 1) only L_gt is computed. ``regions`` defaults to
    :func:`high_frequency_regions` of ``gs``. Returns the total and a dict of floats
    (``total`` and each computed, unweighted term).
    """
    l_gt = loss_gt(output, target, mask, weights)
    total = weights.gt * l_gt
    parts = {"gt": float(l_gt.detach())}
    if gs is not None:
        if weights.grad:
            if regions is None:
                regions = high_frequency_regions(gs)
            l_grad = edge_guided_gradient_loss(output.depth, gs, regions)
            total = total + weights.grad * l_grad
            parts["grad"] = float(l_grad.detach())
        if weights.fusion:
            l_fusion = fusion_loss(output.omega2, output.omega4, gs)
            total = total + weights.fusion * l_fusion
            parts["fusion"] = float(l_fusion.detach())
    if weights.select and output.weights is not None and output.candidates is not None:
        cands = output.candidates.detach().float()
        best, spread = selection_targets(cands, align_masked(target.float(), cands[:, :1], mask), mask,
                                         weights.select_window)
        l_select = selection_loss(output.weights, best, spread)
        total = total + weights.select * l_select
        parts["select"] = float(l_select.detach())
    parts["total"] = float(total.detach())
    return total, parts
