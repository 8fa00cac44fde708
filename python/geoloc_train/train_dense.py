"""train-dense: the fine stage's dense descriptor head (config dense_head,
OPS.md 3.5), trained on the frozen backbone of a finished model so that a
drone view of one year matches the aligned reference cells of another.

The ten NAIP rasters are pixel-aligned within a few metres, so every cell of
one year has its aligned cell in every other year: dense supervision for
free.  Ground: the training ground of naip-xtime (xtime.train_ok, west of
X_SPLIT - BUFFER_M), split by northing: training at or north of
xtime.VAL_NORTHING + VAL_BUFFER_M, validation south of VAL_NORTHING (the
southern 30 %); --val-band north holds out the northern 30 % instead
(xtime.dense_northings).  Each part has its own canvas, so no feature
computed for training sees a pixel of the validation band.

Start-up: per year and part, the raster resampled onto a canvas of the
model's pixel size (tile_m / S: 5 m) whose origin lies on multiples of the
cell (stride s pixels: 40 m), and its frozen block-L features (raw: not
normalised, no head; fine.dense_raw_features) kept in memory.

A sample: query year q, reference year r != q (YearDraw; by default 2020
half the time, else uniform), a centre, views.random_view of it rendered
from year q at 2S pixels, warped north-up as the fine stage does (fine.warp to 2S at heading
0, then to S at the true heading + U(-10, 10) degrees) -> block L (no grad)
-> head -> l2n: the query's (S/s)^2 cells and the disc mask (fine.disc_mask,
52 of 64).  The reference: the WIN x WIN cell window of year r's cached
features around the centre (plus one cell of context for the head's 3x3,
cropped after it) -> head -> l2n.  The query's top-left cell lies at
(centre - S/(2s) cells) in the canvas's cell units; the nearest integer
placement is the positive, at the middle of the window's P x P = (WIN -
S/s + 1)^2 placements.

Losses, summed:
 (a) InfoNCE over the P^2 placement scores (fine.scores: the mean over the
     masked cells of the cosines) plus one more negative, the score at the
     true placement of the same view warped at a wrong heading (true +
     U(60, 300) degrees); temperature --temperature (0.05).
 (b) per cell: each masked query cell against every cell of the window,
     the aligned cell the positive; temperature --cell-temperature (0.1).

Validation: a fixed set of samples (seed VAL_SEED) in the validation band;
top-1 placement accuracy of (a)'s scores over the P^2 placements
(`top1`), also with the wrong-heading negative (`top1_h`), the best
placement within one cell of the true one (`near1`: the fine stage refines
to sub-cell precision, and the true offset is up to half a cell from the
integer placement), top1 for queries of 2009 and 2010 (`top1_0910`), and
the validation losses, and the position error in metres after the fine
stage's sub-cell refinement (a parabola through the neighbouring scores)
against the true (fractional) placement: `err_m_median`, `err_m_mean`,
`within_20m`; and the same query scored over the whole validation canvas
of its reference year (27 x 49 cells, 20 x 42 placements, as the fine
stage searches a map): `wide_top1`, `wide_near1` (within one cell); for
the head and for the raw features (the identity head).

Fused cells (config dense_head.fuse_layer B, fuse_weight w; --fuse-layer,
--fuse-weight): the fine stage's cells join the head's unit cells,
times sqrt(1 - w), with block B's raw unit cells, times sqrt(w)
(fine.cells). Training then scores the joined cells, as the fine stage
does: S and the canvas's pixel are those of the fused input (k times the
head's: 128 pixels, 2.5 m), the head reads block L of their k x k means
(fine.box) and block B the fused input itself; block B's cells are
frozen, so the head learns what to add to them.

Everything random comes from --seed: step k draws its samples from
numpy's default_rng([seed, k]), so a resumed run gives the same bytes as an
uninterrupted one (same machine and threads).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import fine, model as M, views, xtime
from .config import ConfigError, ModelConfig
from .train import one_cycle

WIN = 20                  # reference window side, cells
VAL_SEED = 20260
VAL_COUNT = 256
HEADING_NOISE_DEG = 10.0  # the query is warped at the true heading +- this
WRONG_HEADING_DEG = (60.0, 300.0)
REF_YEAR_P = 0.5          # P(reference year = 2020)


def render_canvas(raster: views.Raster, x0: float, y_top: float, w_px: int, h_px: int,
                  px_m: float) -> np.ndarray:
    """uint8 (h_px, w_px, 3): the raster resampled north-up onto pixels of
    px_m metres whose top-left corner is (x0, y_top) (views.render_tile's
    resampling, on a rectangle)."""
    g = raster.gt
    h, w = raster.rgb.shape[:2]
    px, py = (x0 - g[0]) / g[1], (y_top - g[3]) / g[5]
    xa, xb, wx = views._resample_weights(px, w_px * px_m / g[1], w_px, w)
    ya, yb, wy = views._resample_weights(py, h_px * px_m / -g[5], h_px, h)
    sub = raster.rgb[ya:yb, xa:xb].astype(np.float64)
    out = np.tensordot(wy, sub, axes=(1, 0))
    out = np.tensordot(out, wx, axes=(1, 1)).transpose(0, 2, 1)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


class Geometry:
    """The fine stage's sizes for a model and layer."""

    def __init__(self, model: M.GeoNet, layer: int):
        self.fuse = fine.fused(model, layer)               # (B, w, k) or None
        self.k = self.fuse[2] if self.fuse else 1          # head input = S / k
        self.size = fine.model_size(model, layer)          # S
        self.stride = fine.cell_stride(model, layer)       # s
        self.px_m = views.TILE_M / self.size               # 5 m
        self.cell_m = self.stride * self.px_m              # 40 m
        self.n = self.size // self.stride                  # query cells a side (8)
        self.places = WIN - self.n + 1                     # P (13)
        self.pos = (self.places - 1) // 2                  # the positive's row and column
        self.mask = torch.from_numpy(fine.disc_mask(self.n, self.stride, self.size))


class Ground:
    """One part (train or val) of the training ground, holding out `band`
    (xtime.dense_northings): per year the raw block-L features of its
    canvas, [C, rows, cols] float32, and the grid: cell (r, c) spans x0 +
    cell (c, c + 1), y_top - cell (r + 1, r). For fused cells also
    `fused`: per year block B's unit cells, [CB, rows, cols] (the head's
    features are then those of the canvas's k x k means)."""

    def __init__(self, rasters: Dict[int, views.Raster], model: M.GeoNet, layer: int,
                 part: str, geo: Geometry, band: str = "south"):
        lo, hi = xtime.dense_northings(part, band)
        self.part, self.band, self.geo = part, band, geo
        ext = np.array([r.extent() for r in rasters.values()])
        cell = geo.cell_m
        xmin, ymin = ext[:, 0].max(), ext[:, 1].max()
        ymax = ext[:, 3].min()
        self.x0 = math.ceil(xmin / cell) * cell
        x1 = math.floor((xtime.X_SPLIT - xtime.BUFFER_M) / cell) * cell
        y0 = math.ceil(max(lo, ymin) / cell) * cell
        y1 = math.floor(min(hi, ymax) / cell) * cell
        self.y_top, self.y_bottom, self.x1 = y1, y0, x1
        self.cols, self.rows = int(round((x1 - self.x0) / cell)), int(round((y1 - y0) / cell))
        if self.cols < WIN + 2 or self.rows < WIN + 2:
            raise ValueError(f"the {part} ground ({self.cols}x{self.rows} cells) is smaller "
                             f"than a window")
        s = geo.stride
        self.feats: Dict[int, torch.Tensor] = {}
        self.fused: Dict[int, torch.Tensor] = {}
        for year, r in sorted(rasters.items()):
            canvas = render_canvas(r, self.x0, y1, self.cols * s, self.rows * s, geo.px_m)
            f = fine.dense_raw_features(model, fine.box(canvas, geo.k), layer, head=False)
            self.feats[year] = torch.from_numpy(f).permute(2, 0, 1).contiguous()
            if geo.fuse:
                fb = fine.l2n(fine.dense_raw_features(model, canvas, geo.fuse[0], head=False))
                self.fused[year] = torch.from_numpy(fb).permute(2, 0, 1).contiguous()

    def ok(self, corners) -> bool:
        return xtime.dense_ok(corners, self.part, self.band)

    def window(self, cx: float, cy: float):
        """(row, col) of the window's top-left cell for a view centred at
        (cx, cy), or None when the window and its context cell do not fit."""
        g = self.geo
        half = g.n / 2 * g.cell_m
        r = int(round((self.y_top - (cy + half)) / g.cell_m)) - g.pos
        c = int(round((cx - half - self.x0) / g.cell_m)) - g.pos
        if r < 1 or c < 1 or r + WIN + 1 > self.rows or c + WIN + 1 > self.cols:
            return None
        return r, c

    def centre_range(self):
        m = (WIN / 2 + 1.5) * self.geo.cell_m
        return self.x0 + m, self.y_bottom + m, self.x1 - m, self.y_top - m


@dataclass(frozen=True)
class YearDraw:
    """How a training sample's query and reference years are drawn. The
    default: the query year uniform over all years, the reference 2020 with
    probability REF_YEAR_P (when the query is not of 2020), else uniform over
    the other years. focus_years: the query year is drawn from these with
    probability focus_share (else as by default); ref_years: the reference
    is drawn uniformly from these, less the query's year."""
    ref_years: Tuple[int, ...] = ()
    focus_years: Tuple[int, ...] = ()
    focus_share: float = 0.0


def draw_years(rng: np.random.Generator, years: List[int], how: YearDraw = YearDraw()):
    if how.focus_years and rng.uniform() < how.focus_share:
        q = how.focus_years[rng.integers(len(how.focus_years))]
    else:
        q = years[rng.integers(len(years))]
    if how.ref_years:
        others = [y for y in how.ref_years if y != q]
        return q, others[rng.integers(len(others))]
    others = [y for y in years if y != q]
    if q != xtime.REFERENCE_YEAR and rng.uniform() < REF_YEAR_P:
        return q, xtime.REFERENCE_YEAR
    return q, others[rng.integers(len(others))]


def draw_samples(rng: np.random.Generator, ground: Ground, rasters: Dict[int, views.Raster],
                 count: int, how: YearDraw = YearDraw()) -> dict:
    """count samples: query images [count, S, S, 3] at the noisy true
    heading and at a wrong one (uint8), the reference year's windows of raw
    features [count, C, WIN + 2, WIN + 2] (with their context cell), the
    query and reference years, view centres and footprints, each window's
    top-left cell (row, col) on the ground's grid (the context cell not
    counted), the views warped to 2S at heading 0 [count, 2S, 2S, 3] and
    their true headings; for fused cells "fwin", the reference year's
    windows of Ground.fused [count, CB, WIN, WIN] (else None)."""
    g = ground.geo
    years = sorted(rasters)
    xa, ya, xb, yb = ground.centre_range()
    true_imgs, wrong_imgs, wins, fwins, qyears, ryears, centres, footprints, cells = \
        [], [], [], [], [], [], [], [], []
    bases, headings = [], []
    tries = 0
    while len(true_imgs) < count:
        tries += 1
        if tries > 100 * count + 100:
            raise ValueError(f"could draw only {len(true_imgs)} of {count} {ground.part} samples")
        qy, ry = draw_years(rng, years, how)
        p = views.random_view(rng, rng.uniform(xa, xb), rng.uniform(ya, yb))
        noise = rng.uniform(-HEADING_NOISE_DEG, HEADING_NOISE_DEG)
        wrong = rng.uniform(*WRONG_HEADING_DEG)
        w = ground.window(p.cx, p.cy)
        if w is None or not ground.ok(views.footprint(p)):
            continue
        img, valid = views.render_view(rasters[qy], p, 2 * g.size)
        if not valid:
            continue
        base = fine.warp(img, 0.0, 2 * g.size)
        true_imgs.append(fine.warp(base, p.heading_deg + noise, g.size))
        wrong_imgs.append(fine.warp(base, p.heading_deg + wrong, g.size))
        r, c = w
        wins.append(ground.feats[ry][:, r - 1:r + WIN + 1, c - 1:c + WIN + 1])
        if g.fuse:
            fwins.append(ground.fused[ry][:, r:r + WIN, c:c + WIN])
        qyears.append(qy)
        ryears.append(ry)
        bases.append(base)
        headings.append(p.heading_deg)
        centres.append((p.cx, p.cy))
        footprints.append(views.footprint(p))
        cells.append((r, c))
    return {"true": np.stack(true_imgs), "wrong": np.stack(wrong_imgs),
            "win": torch.stack(wins), "fwin": torch.stack(fwins) if fwins else None,
            "qyear": np.array(qyears), "ryear": np.array(ryears),
            "centre": np.array(centres),
            "footprint": np.stack(footprints), "cell": np.array(cells),
            "base": np.stack(bases), "heading": np.array(headings)}


def query_raw(model: M.GeoNet, layer: int, imgs: np.ndarray) -> torch.Tensor:
    """Raw block-L features [B, C, n, n] of uint8 images [B, S, S, 3]."""
    return fine.layer_features(model, imgs, layer, head=False).permute(0, 3, 1, 2).contiguous()


def query_inputs(model: M.GeoNet, geo: Geometry, layer: int, imgs: np.ndarray):
    """What `cells_of` takes for uint8 images [B, S, S, 3] (S = geo.size):
    (block L's raw features of their k x k means [B, C, n, n], block B's
    unit cells [B, CB, n, n] for fused cells, else None)."""
    raw = query_raw(model, layer, fine.box(imgs, geo.k))
    if not geo.fuse:
        return raw, None
    fb = fine.l2n(fine.layer_features(model, imgs, geo.fuse[0], head=False))
    return raw, fb.permute(0, 3, 1, 2).contiguous()


def cells_of(head: Optional[M.DenseHead], geo: Geometry, raw: torch.Tensor,
             fixed: Optional[torch.Tensor], crop: int = 0) -> torch.Tensor:
    """The fine stage's unit cells [B, D, h, w]: apply_head(head, raw),
    `crop` cells cut from each side after the head, and for fused cells
    joined with block B's unit cells `fixed` as fine.cells joins them
    ([sqrt(1 - w) head, sqrt(w) block B])."""
    h = apply_head(head, raw)
    if crop:
        h = h[:, :, crop:-crop, crop:-crop]
    if fixed is None:
        return h
    w = geo.fuse[1]
    return torch.cat([h * math.sqrt(1.0 - w), fixed * math.sqrt(w)], dim=1)


def apply_head(head: Optional[M.DenseHead], f: torch.Tensor) -> torch.Tensor:
    """head (or the identity: none) then L2 normalisation over channels."""
    return F.normalize(head(f) if head is not None else f, p=2.0, dim=1, eps=1e-12)


def scores_of(q: torch.Tensor, win: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """fine.scores for a batch: q [B, D, n, n], win [B, D, WIN, WIN] ->
    [B, P, P] (mean over the masked cells of the cosines)."""
    b, d, n, _ = q.shape
    w = q * mask.to(q.dtype)                                   # [B, D, n, n]: one group each
    out = F.conv2d(win.reshape(1, b * d, WIN, WIN), w, groups=b)[0]
    return out / mask.sum()


def cross_scores(q: torch.Tensor, win: torch.Tensor, mask: torch.Tensor,
                 cells: np.ndarray) -> torch.Tensor:
    """Each view against every placement of the other views' windows, for
    q [B, D, n, n] and win [B, D, WIN, WIN] as scores_of takes them and the
    windows' top-left cells [B, 2] on one grid: [B, B * P * P], row i the
    scores of view i at window 0's placements, then window 1's, and so on;
    -inf for its own window and every window that overlaps it (they may
    hold its true place)."""
    m = mask.to(q.dtype)
    allsc = F.conv2d(win, q * m) / m.sum()                       # [j, i, P, P]
    c = torch.from_numpy(np.asarray(cells))
    far = ((c[:, None, 0] - c[None, :, 0]).abs() >= WIN) | \
          ((c[:, None, 1] - c[None, :, 1]).abs() >= WIN)          # [j, i]
    allsc = allsc.masked_fill(~far[:, :, None, None], float("-inf"))
    return allsc.permute(1, 0, 2, 3).reshape(q.shape[0], -1)


def losses(head, batch_q, batch_w, batch_win, geo: Geometry, temperature: float,
           cell_temperature: float, cells: Optional[np.ndarray] = None, hardest: bool = False):
    """(loss (a), loss (b), placement scores [B, P, P], wrong-heading score [B]).
    batch_q, batch_w: query_inputs of the true and wrong-heading views;
    batch_win: (the windows with their context cell, "fwin" or None).
    cells: the windows' top-left cells [B, 2] on one ground; with them every
    placement of the other samples' windows that do not overlap a view's
    own is one more negative of loss (a) (other places, not only shifts),
    or with hardest only the best-scoring placement of each such window."""
    q = cells_of(head, geo, *batch_q)
    qw = cells_of(head, geo, *batch_w)
    win = cells_of(head, geo, *batch_win, crop=1)
    b, d, n, _ = q.shape
    sc = scores_of(q, win, geo.mask)
    k = geo.pos
    ref = win[:, :, k:k + n, k:k + n]
    m = geo.mask.to(q.dtype)
    wrong = (qw * ref * m).sum(dim=(1, 2, 3)) / m.sum()
    parts = [sc.reshape(b, -1), wrong[:, None]]
    if cells is not None:
        cross = cross_scores(q, win, geo.mask, cells)
        if hardest:
            cross = cross.reshape(b, b, -1).max(dim=2).values
        parts.append(cross)
    logits = torch.cat(parts, dim=1) / temperature
    target = torch.full((b,), k * geo.places + k, dtype=torch.long)
    la = F.cross_entropy(logits, target)
    # (b): each masked query cell against every window cell.
    idx = torch.nonzero(geo.mask.reshape(-1)).reshape(-1)
    qc = q.reshape(b, d, n * n)[:, :, idx].transpose(1, 2)              # [B, K, D]
    wc = win.reshape(b, d, WIN * WIN)                                    # [B, D, WIN^2]
    cl = torch.bmm(qc, wc) / cell_temperature                            # [B, K, WIN^2]
    a, bb = idx // n, idx % n
    tgt = ((k + a) * WIN + (k + bb)).repeat(b)
    lb = F.cross_entropy(cl.reshape(b * len(idx), WIN * WIN), tgt)
    return la, lb, sc, wrong


@torch.no_grad()
def validate(head, val: dict, geo: Geometry) -> dict:
    la, lb, sc, wrong = losses(head, val["q"], val["w"], val["win"], geo, 0.05, 0.1)
    b = sc.shape[0]
    flat = sc.reshape(b, -1)
    k = geo.pos * geo.places + geo.pos
    best = flat.argmax(dim=1)
    hit = best == k
    hit_h = hit & (wrong < flat[:, k])
    near = ((best // geo.places - geo.pos).abs() <= 1) & ((best % geo.places - geo.pos).abs() <= 1)
    old = torch.from_numpy(np.isin(val["qyear"], (2009, 2010)))
    err = None
    if "frac" in val:
        err = position_error(sc, val["frac"], geo)
    extra = {} if err is None else {
        "err_m_median": round(float(err.median()), 2), "err_m_mean": round(float(err.mean()), 2),
        "within_20m": round(float((err <= 20).float().mean()), 4)}
    if "maps" in val:
        extra.update(wide_metrics(head, val, geo))
    return {**{"top1": round(float(hit.float().mean()), 4),
            "top1_h": round(float(hit_h.float().mean()), 4),
            "near1": round(float(near.float().mean()), 4),
            "top1_0910": round(float(hit[old].float().mean()), 4) if bool(old.any()) else None,
            "loss_a": round(float(la), 4), "loss_b": round(float(lb), 4)}, **extra}


def wide_metrics(head, val: dict, geo: Geometry) -> dict:
    """The query scored at every placement on the whole validation canvas of
    its reference year (val["maps"]: year -> raw features [C, rows, cols];
    the head runs on the whole map, zero padding at its edges), as the fine
    stage's search over a map: `wide_top1` the best placement is the
    positive, `wide_near1` within one cell of it (per axis)."""
    q = cells_of(head, geo, *val["q"])
    maps = {y: cells_of(head, geo, f[None], val["fmaps"][y][None] if geo.fuse else None)[0]
            for y, f in val["maps"].items()}
    m = geo.mask.to(q.dtype)
    hit = near = 0
    for n in range(q.shape[0]):
        d = maps[int(val["ryear"][n])]
        sc = F.conv2d(d[None], (q[n] * m)[None])[0, 0]
        best = int(sc.reshape(-1).argmax())
        bi, bj = best // sc.shape[1], best % sc.shape[1]
        ti, tj = (int(v) + geo.pos for v in val["cell"][n])
        hit += (bi, bj) == (ti, tj)
        near += abs(bi - ti) <= 1 and abs(bj - tj) <= 1
    b = q.shape[0]
    return {"wide_top1": round(hit / b, 4), "wide_near1": round(near / b, 4)}


def position_error(sc: torch.Tensor, frac: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Metres between the true placement (frac [B, 2]: fractional row and
    column of the query's top-left cell in the window's placements) and the
    best placement refined as the fine stage's step 6 does: a parabola
    through the neighbouring scores along each axis, the offset clamped to
    +-1/2 cell (none at the border)."""
    b, p, _ = sc.shape
    best = sc.reshape(b, -1).argmax(dim=1)
    i, j = best // p, best % p
    out = torch.zeros(b, dtype=torch.float64)
    for n in range(b):
        s, a, c = sc[n].double(), int(i[n]), int(j[n])
        d = [0.0, 0.0]
        for ax, (lo, hi) in enumerate((((a - 1, c), (a + 1, c)), ((a, c - 1), (a, c + 1)))):
            if min(lo) < 0 or max(hi) >= p:
                continue
            sm, s0, sp = float(s[lo]), float(s[a, c]), float(s[hi])
            den = 2 * (sm - 2 * s0 + sp)
            if den != 0:
                d[ax] = max(-0.5, min(0.5, (sm - sp) / den))
        out[n] = math.hypot(a + d[0] - float(frac[n, 0]), c + d[1] - float(frac[n, 1])) * geo.cell_m
    return out


def true_placement(ground: Ground, samples: dict) -> torch.Tensor:
    """[B, 2] float64: the fractional (row, col) placement of each sample's
    query top-left cell in its window's placements (the positive is the
    nearest integer, geo.pos)."""
    g = ground.geo
    half = g.n / 2 * g.cell_m
    cx, cy = samples["centre"][:, 0], samples["centre"][:, 1]
    r = (ground.y_top - (cy + half)) / g.cell_m - samples["cell"][:, 0]
    c = (cx - half - ground.x0) / g.cell_m - samples["cell"][:, 1]
    return torch.from_numpy(np.stack([r, c], axis=1))


def with_head(base: M.GeoNet, layer: int, dim: int, hidden: int, seed: int,
              size: Optional[int] = None, fuse_layer: int = 0,
              fuse_weight: float = 0.5) -> M.GeoNet:
    """base's config and tensors plus an identity-start dense head (its
    config's size: the fine stage's input, when given; fuse_layer: the
    block its cells fuse, with fuse_weight)."""
    head = {"layer": layer, "dim": dim, "hidden": hidden}
    if size is not None:
        head["size"] = size
    if fuse_layer:
        head.update(fuse_layer=fuse_layer, fuse_weight=fuse_weight)
    cfg = ModelConfig.from_dict({**json.loads(base.cfg.to_json()), "dense_head": head})
    net = M.GeoNet(cfg)
    net.dense_head.reset_identity(torch.Generator().manual_seed(seed))
    state = {k: v for k, v in M.model_tensors(base).items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("dense_head.") and not k.endswith("num_batches_tracked")
                         for k in missing):
        raise ValueError(f"base tensors do not fit: {unexpected[:3]} {missing[:3]}")
    return net.eval()


def init_head(path: str, net: M.GeoNet) -> dict:
    """The dense head's tensors of the model at path, to start net's head
    from: its head must read the same block with the same sizes, and its
    other tensors must be net's (the same frozen backbone)."""
    other = M.load_model(path)
    h, mine = other.cfg.dense_head, net.cfg.dense_head
    keys = ("layer", "dim", "hidden")
    if h is None or any(h[k] != mine[k] for k in keys) or \
            h.get("size", net.cfg.input_size[0]) != mine.get("size", net.cfg.input_size[0]):
        raise ValueError(f"--init {path}: its dense head ({h}) is not one of "
                         f"{ {k: mine[k] for k in keys} }")
    theirs, ours = M.model_tensors(other), M.model_tensors(net)
    for k, v in ours.items():
        if not k.startswith("dense_head.") and not torch.equal(theirs[k], v):
            raise ValueError(f"--init {path}: tensor {k} differs from the base model's")
    return {k[len("dense_head."):]: v for k, v in theirs.items() if k.startswith("dense_head.")}


def open_rasters(naip_dir: str) -> Dict[int, views.Raster]:
    paths = xtime.rasters(naip_dir)
    if len(paths) < 2:
        raise ValueError(f"{naip_dir}: need at least two years")
    return {y: views.Raster.open(p) for y, p in sorted(paths.items())}


_CACHE: dict = {}


def _grounds(model_path: str, naip_dir: str, base: M.GeoNet, layer: int, geo: Geometry,
             band: str):
    """(rasters, train Ground, val Ground), kept for the process's next run
    on the same files (the tests train several times)."""
    paths = xtime.rasters(naip_dir)
    key = (os.path.realpath(model_path), os.path.getmtime(model_path), layer, geo.size,
           geo.fuse, band,
           tuple((y, os.path.realpath(p), os.path.getmtime(p)) for y, p in sorted(paths.items())))
    if key not in _CACHE:
        _CACHE.clear()
        rasters = open_rasters(naip_dir)
        _CACHE[key] = (rasters, Ground(rasters, base, layer, "train", geo, band),
                       Ground(rasters, base, layer, "val", geo, band))
    return _CACHE[key]


def _need_years(years, have, naip_dir: str) -> None:
    """ValueError for the first of years that has no raster in have ({year: ...})."""
    for y in years:
        if y not in have:
            raise ValueError(f"year {y}: no raster of it in {naip_dir}")


def train_dense(model_path: str, naip_dir: str, out_dir: str, *, steps: int, batch: int,
                seed: int, lr: float = 1e-3, threads: int = 0, ckpt_every: int = 200,
                resume: bool = False, layer: int = 6, dim: int = 64, hidden: int = 56,
                temperature: float = 0.05, cell_temperature: float = 0.1,
                val_count: int = VAL_COUNT, val_band: str = "south",
                how: YearDraw = YearDraw(), size: Optional[int] = None,
                stop_after: Optional[int] = None, batch_negatives: str = "",
                fuse_layer: int = 0, fuse_weight: float = 0.5, init: str = "",
                log=print) -> str:
    """Trains the head; writes out_dir/model.safetensors (the base model
    plus the head), checkpoint.pt, model-NNNNNN.safetensors at checkpoints
    and train.log.jsonl. Returns the model path. stop_after (tests): end
    after that step, without model.safetensors (as if interrupted)."""
    if steps < 0 or batch < 1:
        raise ValueError(f"need steps >= 0 and batch >= 1 (got {steps}, {batch})")
    if val_band not in xtime.VAL_BANDS:
        raise ValueError(f"--val-band {val_band!r}: one of {', '.join(xtime.VAL_BANDS)}")
    if batch_negatives not in ("", "all", "hardest"):
        raise ValueError(f"batch_negatives {batch_negatives!r}: '', 'all' or 'hardest'")
    if not 0.0 <= how.focus_share <= 1.0:
        raise ValueError(f"--focus-share {how.focus_share}: needs 0..1")
    if how.ref_years and len(how.ref_years) < 2:
        raise ValueError("--ref-years: needs two years or more "
                         "(a query is never its own reference)")
    _need_years(how.ref_years + how.focus_years, xtime.rasters(naip_dir), naip_dir)
    if threads:
        torch.set_num_threads(threads)
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    t_start = time.time()
    base = M.load_model(model_path)
    if base.cfg.dense_head is not None:
        raise ValueError(f"{model_path} already has a dense head")
    net = with_head(base, layer, dim, hidden, seed, size, fuse_layer, fuse_weight)
    geo = Geometry(net, layer)
    head = net.dense_head
    if init:
        head.load_state_dict(init_head(init, net))
    rasters, ground, vground = _grounds(model_path, naip_dir, base, layer, geo, val_band)
    vs = draw_samples(np.random.default_rng(VAL_SEED), vground, rasters, val_count)
    val = {"q": query_inputs(base, geo, layer, vs["true"]),
           "w": query_inputs(base, geo, layer, vs["wrong"]),
           "win": (vs["win"], vs["fwin"]), "qyear": vs["qyear"],
           "frac": true_placement(vground, vs), "ryear": vs["ryear"], "cell": vs["cell"],
           "maps": vground.feats, "fmaps": vground.fused}
    raw = validate(None, val, geo)
    log(f"cached features of {len(rasters)} years ({ground.cols}x{ground.rows} train, "
        f"{vground.cols}x{vground.rows} val cells) and {val_count} validation samples in "
        f"{time.time() - t_start:.1f} s; raw features: {raw}")

    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    sched = one_cycle(opt, lr, steps)
    ckpt = os.path.join(out_dir, "checkpoint.pt")
    start = 0
    if resume and os.path.exists(ckpt):
        state = torch.load(ckpt)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["step"]
        log(f"resumed from {ckpt} at step {start}")
    logf = open(os.path.join(out_dir, "train.log.jsonl"), "a", encoding="utf-8")
    if start == 0:
        logf.write(json.dumps({"step": 0, "val_raw": raw, "val_head": validate(head, val, geo),
                               "args": {"model": model_path, "steps": steps, "batch": batch,
                                        "seed": seed, "lr": lr, "layer": layer, "dim": dim,
                                        "hidden": hidden, "temperature": temperature,
                                        "cell_temperature": cell_temperature,
                                        "val_band": val_band, "ref_years": list(how.ref_years),
                                        "focus_years": list(how.focus_years),
                                        "focus_share": how.focus_share,
                                        "batch_negatives": batch_negatives,
                                        "size": geo.size, "fuse": geo.fuse,
                                        "init": init}}) + "\n")
        logf.flush()
    t0 = time.time()
    avg = None
    head.train()
    for step in range(start, steps):
        rng = np.random.default_rng([seed, step])
        s = draw_samples(rng, ground, rasters, batch, how)
        bq = query_inputs(base, geo, layer, s["true"])
        bw = query_inputs(base, geo, layer, s["wrong"])
        la, lb, _, _ = losses(head, bq, bw, (s["win"], s["fwin"]), geo, temperature,
                              cell_temperature,
                              s["cell"] if batch_negatives else None,
                              batch_negatives == "hardest")
        loss = la + lb
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        cur = (loss.item(), la.item(), lb.item())
        avg = cur if avg is None else tuple(0.95 * a + 0.05 * c for a, c in zip(avg, cur))
        done = step + 1
        if done % 20 == 0 or done == steps or done % ckpt_every == 0:
            rec = {"step": done, "loss": round(avg[0], 4), "loss_a": round(avg[1], 4),
                   "loss_b": round(avg[2], 4), "lr": round(sched.get_last_lr()[0], 6),
                   "s": round(time.time() - t0, 1)}
            if done % ckpt_every == 0 or done == steps:
                head.eval()
                rec["val_head"] = validate(head, val, geo)
                rec["val_raw_top1"] = raw["top1"]
                head.train()
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            log(" ".join(f"{k} {v}" for k, v in rec.items()))
        if done % ckpt_every == 0 or done == steps:
            torch.save({"head": head.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "step": done}, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)
            M.save_model(net.eval(), os.path.join(out_dir, f"model-{done:06d}.safetensors"))
            head.train()
        if stop_after is not None and done >= stop_after:
            logf.close()
            return ""
    logf.close()
    path = os.path.join(out_dir, "model.safetensors")
    M.save_model(net.eval(), path)
    return path


def main_args(p) -> None:
    p.add_argument("--model", required=True, help="the base model (its backbone stays frozen)")
    p.add_argument("--naip", required=True, help="folder of the NAIP GeoTIFFs (all years)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log, model.safetensors")
    p.add_argument("--steps", type=int, default=1500,
                   help="steps (1500: about 12 minutes on 2 idle cores at batch 32)")
    p.add_argument("--batch", type=int, default=32, help="samples per step")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--layer", type=int, default=6, help="backbone block the head reads")
    p.add_argument("--size", type=int, default=None,
                   help="the fine stage's input in pixels for the head (config dense_head.size; "
                        "default: the model's input_size), e.g. 128 with --layer 10: cells of the "
                        "same ground size from a deeper block")
    p.add_argument("--dim", type=int, default=64, help="head output channels")
    p.add_argument("--hidden", type=int, default=56, help="head hidden channels")
    p.add_argument("--temperature", type=float, default=0.05, help="placement InfoNCE")
    p.add_argument("--cell-temperature", type=float, default=0.1, help="per-cell InfoNCE")
    p.add_argument("--val-count", type=int, default=VAL_COUNT, help="validation samples")
    p.add_argument("--ref-years", type=xtime.parse_years, default=(),
                   help="draw training references only from these years, e.g. 2018,2019,2020 "
                        "(default: 2020 half the time, else any other year)")
    p.add_argument("--focus-years", type=xtime.parse_years, default=(),
                   help="draw this share (--focus-share) of the training queries from these years")
    p.add_argument("--focus-share", type=float, default=0.0)
    p.add_argument("--batch-negatives", choices=["all", "hardest"], default="",
                   help="the batch's other windows (those that do not overlap a view's own) "
                        "as more negatives of the placement InfoNCE: every placement, or the "
                        "best-scoring one of each window")
    p.add_argument("--val-band", choices=xtime.VAL_BANDS, default="south",
                   help="the band of the training ground held out for validation "
                        "(xtime.dense_northings; default south)")
    p.add_argument("--fuse-layer", type=int, default=0,
                   help="train the head within fused cells: the head's cells joined with "
                        "this block's raw cells (config dense_head.fuse_layer), as the fine "
                        "stage scores them (default: the head's cells alone)")
    p.add_argument("--fuse-weight", type=float, default=0.5,
                   help="the fused block's share of the cosine (with --fuse-layer)")
    p.add_argument("--init", default="",
                   help="start the head from this model's (the same base and head sizes) "
                        "instead of the identity")


CENTERING = 0.5  # the fine stage's default (src/loc/fine.h step 4)
OLD_YEARS = (2009, 2010)


@torch.no_grad()
def band_scan(model_path: str, naip_dir: str, *, val_band: str = "south",
              map_years: Tuple[int, ...] = (2018, 2019, 2020),
              query_years: Optional[Tuple[int, ...]] = None, count: int = 1000,
              seed: int = 777, raw: bool = False) -> dict:
    """Validation as a multi-year map is searched: views of query_years
    (default: every year before the first map year) drawn in train-dense's
    held-out band, each scored over every placement of the band's cells of
    map_years (fine.scores' mean cosine, best year per placement) at a
    compass's headings (the true one +- 10 degrees of noise, then -20..20 in
    steps of 10) and at 36 headings (0..350, centred as the fine stage
    does, fine.h step 4); a view is found when the best placement lies
    within one cell of the true one (per axis). raw: the raw cells (no
    head). Returns {"compass" | "unknown": bool array} and "year": the
    views' years."""
    net = M.load_model(model_path)
    if not raw and net.cfg.dense_head is None:
        raise ValueError(f"{model_path} has no dense head (use raw)")
    layer = net.cfg.dense_head["layer"] if net.cfg.dense_head else 6
    head = None if raw else net.dense_head
    rasters = open_rasters(naip_dir)
    if query_years is None:
        query_years = tuple(y for y in rasters if y < min(map_years))
    _need_years(map_years + query_years, rasters, naip_dir)
    geo = Geometry(net, layer)
    ground = Ground(rasters, net, layer, "val", geo, val_band)
    n, mask = geo.n, geo.mask.reshape(-1).bool()
    cells = []
    for y in map_years:
        d = cells_of(head, geo, ground.feats[y][None],
                     ground.fused[y][None] if geo.fuse else None)[0]
        cells.append(F.unfold(d[None], n)[0].reshape(d.shape[0], n * n, -1)[:, mask, :])
    pc = ground.cols - n + 1
    rng = np.random.default_rng(seed)
    qyears = np.array([query_years[i % len(query_years)] for i in range(count)])
    out = {"compass": np.zeros(count, bool), "unknown": np.zeros(count, bool), "year": qyears}
    xa, ya, xb, yb = ground.centre_range()
    for i, qy in enumerate(qyears):
        while True:
            p = views.random_view(rng, rng.uniform(xa, xb), rng.uniform(ya, yb))
            w = ground.window(p.cx, p.cy)
            if w is None or not ground.ok(views.footprint(p)):
                continue
            img, valid = views.render_view(rasters[int(qy)], p, 2 * geo.size)
            if valid:
                break
        base = fine.warp(img, 0.0, 2 * geo.size)
        tr, tc = w[0] + geo.pos, w[1] + geo.pos
        hc = p.heading_deg + rng.uniform(-HEADING_NOISE_DEG, HEADING_NOISE_DEG)
        for kind, hs in (("compass", hc + np.arange(-20, 21, 10.0)),
                         ("unknown", np.arange(0, 360, 10.0))):
            imgs = np.stack([fine.warp(base, float(h), geo.size) for h in hs])
            q = cells_of(head, geo, *query_inputs(net, geo, layer, imgs))
            q = q.reshape(len(hs), q.shape[1], n * n)[:, :, mask]
            sc = torch.stack([torch.einsum("hdk,dkp->hp", q, c) for c in cells]) / mask.sum()
            if kind == "unknown":  # each year centred on its mean over headings (fine.h)
                sc = sc - CENTERING * sc.mean(1, keepdim=True)
            sc = sc.max(0).values
            best = int(sc.max(0).values.argmax())
            out[kind][i] = abs(best // pc - tr) <= 1 and abs(best % pc - tc) <= 1
    return out


def scan_args(p) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--naip", required=True, help="folder of the NAIP GeoTIFFs")
    p.add_argument("--val-band", choices=xtime.VAL_BANDS, default="south")
    p.add_argument("--map-years", type=xtime.parse_years, default=(2018, 2019, 2020))
    p.add_argument("--query-years", type=xtime.parse_years, default=None,
                   help="default: every year before the first map year")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--raw", action="store_true", help="the raw cells, no head")


def run_scan(a) -> int:
    if a.count < 1:
        raise ValueError(f"--count {a.count}: needs 1 or more")
    r = band_scan(a.model, a.naip, val_band=a.val_band, map_years=a.map_years,
                  query_years=a.query_years, count=a.count, seed=a.seed, raw=a.raw)
    old = np.isin(r["year"], OLD_YEARS)
    print(f"{a.count} views of {', '.join(str(y) for y in sorted(set(r['year'])))} "
          f"({old.sum()} of 2009-2010) in the {a.val_band} band against its cells of "
          f"{', '.join(str(y) for y in a.map_years)}; found within one cell:")

    def pct(v):
        return f"{100 * v.mean():5.1f}%" if len(v) else "    -"
    for kind in ("compass", "unknown"):
        v = r[kind]
        print(f"{kind:8s} all {pct(v)}  2009-2010 {pct(v[old])}  others {pct(v[~old])}")
    return 0


def run(a) -> int:
    path = train_dense(a.model, a.naip, a.out, steps=a.steps, batch=a.batch, seed=a.seed,
                       lr=a.lr, threads=a.threads, ckpt_every=a.ckpt_every, resume=a.resume,
                       layer=a.layer, dim=a.dim, hidden=a.hidden, temperature=a.temperature,
                       cell_temperature=a.cell_temperature, val_count=a.val_count,
                       val_band=a.val_band,
                       how=YearDraw(a.ref_years, a.focus_years, a.focus_share),
                       size=a.size, batch_negatives=a.batch_negatives,
                       fuse_layer=a.fuse_layer, fuse_weight=a.fuse_weight, init=a.init)
    print(f"wrote {path}")
    return 0
