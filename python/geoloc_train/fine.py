"""The fine stage's reference: steps 1-4 of src/loc/fine.h.

The C implementation is checked against these functions, so they follow the
specification literally (formulas, rounding, reflection, the block scheme)
rather than being fast:

1. warp: a frame resampled north-up to S x S for a heading hypothesis
   (bilinear, coordinates reflected into the frame, antialiased by an
   n x n box of sub-pixel samples when the frame is larger than S).
2. query_features: the backbone up to layer L on the warped frames, each
   cell L2-normalised; disc_mask: the cells the frame covers at every
   heading.
3. dense_features: the same layers over a whole canvas (the reference
   imagery), in blocks with a margin of context, pixels outside the canvas
   reflected.
4. scores: the mean cosine of the aligned cells of the disc, for every
   placement of the query on the dense grid.

Images are uint8 numpy arrays (H, W, 3), RGB; feature maps are NHWC / HWC,
channels last.  Steps 5 and 6 (search region, estimates) are C only.
"""

from __future__ import annotations

import math
from typing import List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import ops
from .config import ConfigError
from .model import MOBILENET_V2_STAGES

DEFAULT_LAYER = 6        # MobileNetV2 block 6: 32 channels at stride 8
DEFAULT_BLOCK = 512      # dense features: block side in pixels
MIN_MARGIN = 64          # dense features: least context on each side of a block
MAX_AA = 4               # warp: at most MAX_AA x MAX_AA samples per pixel


# --- step 1: the query warp ------------------------------------------------------


def reflect(x, n: int):
    """Coordinates (float or integer arrays) reflected into [0, n - 1] with
    period 2 (n - 1), the edge not repeated (numpy's pad mode 'reflect'):
    x -> |x| mod 2(n-1), then 2(n-1) - x where that exceeds n - 1.  A
    1-pixel axis maps everything to 0."""
    x = np.asarray(x)
    if n < 1:
        raise ValueError(f"cannot reflect into an empty axis (n = {n})")
    if n == 1:
        return np.zeros_like(x)
    p = 2 * (n - 1)
    x = np.abs(x) % p
    return np.where(x > n - 1, p - x, x)


def aa_factor(width: int, height: int, size: int) -> int:
    """n of the warp's n x n antialiasing: min(ceil(max(W, H) / S), 4); 1
    when the frame is no larger than the output."""
    return min(-(-max(width, height) // size), MAX_AA)


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """float64 (..., 3) bilinear samples at reflected coordinates x in
    [0, W-1], y in [0, H-1]: x0 = floor(x), fx = x - x0, x1 = min(x0 + 1,
    W - 1) (and the same for y)."""
    h, w = img.shape[:2]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0.astype(np.intp), y0.astype(np.intp)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    top = (1 - fx) * img[y0, x0] + fx * img[y0, x1]
    bot = (1 - fx) * img[y1, x0] + fx * img[y1, x1]
    return (1 - fy) * top + fy * bot


def warp(rgb: np.ndarray, heading_deg: float, size: int) -> np.ndarray:
    """Step 1: uint8 (size, size, 3) north-up resampling of a frame whose
    top looks at heading_deg (clockwise from north).

    Output pixel (i, j), centre offset (u, v) = (j + 1/2 - S/2, i + 1/2 -
    S/2), samples the frame at x = (S/2 + cos h u + sin h v) W/S - 1/2,
    y = (S/2 - sin h u + cos h v) H/S - 1/2 (frame pixel centres at
    integers), bilinearly, x and y reflected into the frame.  With
    n = aa_factor(W, H, S) > 1 it averages the n x n samples at offsets
    ((a + 1/2)/n - 1/2) added to u and to v before the rotation.  Computed
    in float64; rounded to nearest (floor(v + 1/2)), clipped to 0..255.

    Heading 90 on a square frame of side S is np.rot90(rgb, -1): the
    frame's top (looking east) becomes the right edge."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"warp needs a uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    if h < 1 or w < 1 or size < 1:
        raise ValueError(f"warp: empty frame {w}x{h} or output size {size}")
    img = rgb.astype(np.float64)
    th = math.radians(heading_deg)
    c, s = math.cos(th), math.sin(th)
    half = size / 2
    n = aa_factor(w, h, size)
    u0 = np.arange(size, dtype=np.float64)[None, :] + 0.5 - half   # (1, S): columns j
    v0 = np.arange(size, dtype=np.float64)[:, None] + 0.5 - half   # (S, 1): rows i
    acc = np.zeros((size, size, 3), np.float64)
    offs = [(a + 0.5) / n - 0.5 for a in range(n)] if n > 1 else [0.0]
    for dv in offs:
        for du in offs:
            u, v = u0 + du, v0 + dv
            x = (half + c * u + s * v) * w / size - 0.5
            y = (half - s * u + c * v) * h / size - 0.5
            acc += _bilinear(img, reflect(x, w), reflect(y, h))
    acc /= len(offs) * len(offs)
    return np.clip(np.floor(acc + 0.5), 0, 255).astype(np.uint8)


# --- step 2 and 3: features ---------------------------------------------------------


def layer_strides() -> List[int]:
    """Stride (input pixels per cell) of each MobileNetV2 feature index
    0..18: 2, 2, 4, 4, 8, 8, 8, 16 (x7), 32 (x5)."""
    out, cur = [2], 2                       # features[0]: the 3x3/2 stem
    for _, _, n, s in MOBILENET_V2_STAGES:
        for i in range(n):
            cur *= s if i == 0 else 1
            out.append(cur)
    out.append(cur)                         # features[18]: 1x1 conv
    return out


def layer_margin(layer: int) -> int:
    """The dense features' context on each side of a block for feature
    `layer` (dense_raw_features): the layer's reach (half its receptive
    field, (R - 1) / 2), plus one cell for a dense head's 3x3, rounded up to
    a multiple of its stride, and at least MIN_MARGIN: 64 pixels for
    blocks 1-6 (R = 59 for block 6), 112 for block 10 (R = 171).  With
    this much context, blocks join exactly."""
    strides = layer_strides()
    if not 0 <= layer < len(strides):
        raise ValueError(f"layer {layer!r} is not a backbone feature index")
    rf = 3                                  # features[0]: 3x3
    for i in range(1, layer + 1):
        if i < len(strides) - 1:            # each block's 3x3 depthwise conv
            rf += 2 * strides[i - 1]
    s = strides[layer]
    reach = (rf - 1) // 2 + s
    return max(MIN_MARGIN, -(-reach // s) * s)


def layer_stride(model, layer: int) -> int:
    """Stride s of feature `layer` of the model's backbone (8 for layer 6)."""
    if model.cfg.backbone != "mobilenet_v2":
        raise ConfigError(f"no layer strides for backbone {model.cfg.backbone!r}")
    strides = layer_strides()
    if not (isinstance(layer, int) and 0 <= layer < len(model.backbone.features)):
        raise ValueError(f"layer {layer!r} is not a backbone feature index "
                         f"(0..{len(model.backbone.features) - 1})")
    return strides[layer]


def layer_channels(model, layer: int) -> int:
    """Channels of the backbone's feature `layer` (before any dense head)."""
    layer_stride(model, layer)              # checks the index
    return model.backbone.channels[layer]


def head_applies(model, layer: int) -> bool:
    """True when the model has a dense head (config dense_head) on `layer`:
    layer_features then returns the head's output."""
    h = model.cfg.dense_head
    return h is not None and getattr(model, "dense_head", None) is not None and \
        layer == h["layer"]


def feature_channels(model, layer: int) -> int:
    """Channels of layer_features(model, ., layer): the head's dim where it
    applies, else the block's channels."""
    return model.cfg.dense_head["dim"] if head_applies(model, layer) else \
        layer_channels(model, layer)


def _check_dense_model(model) -> None:
    if model.resizer is not None:
        raise ConfigError("the model has an AS-Geo resizer (config resizer=true): its backbone "
                          "only sees images resized to input_size, so it has no dense "
                          "features at an image's own size")


def layer_features(model, x, layer: int, head: bool = True) -> torch.Tensor:
    """float32 [B, H/s, W/s, C]: backbone features up to index `layer` of a
    uint8 batch [B, H, W, 3] (numpy or torch) at the images' own size.

    The network input is the model's preprocess without the resize:
    ops.normalize with the model's mean and std.  When the model has a
    dense head on this layer (and `head`), the head's output (C = its dim,
    OPS.md 3.5) instead of the block's.  Not L2-normalised."""
    _check_dense_model(model)
    layer_stride(model, layer)
    t = torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.dim() != 4 or t.shape[3] != 3:
        raise ValueError(f"expected an image batch [B, H, W, 3], got shape {list(t.shape)}")
    t = t.permute(0, 3, 1, 2).to(torch.float32)
    with torch.no_grad():
        t = ops.normalize(t, model.mean, model.std)
        f = model.backbone(t, [layer])[layer]
        if head and head_applies(model, layer):
            f = model.dense_head(f)
    return f.permute(0, 2, 3, 1).contiguous()


def l2n(x):
    """Per-cell L2 normalisation over the last (channel) axis, as
    ops.l2_normalize: x / max(||x||, ops.L2_EPS) (a zero cell stays zero).
    numpy in, numpy out; torch in, torch out."""
    if isinstance(x, np.ndarray):
        return l2n(torch.from_numpy(x)).numpy()
    return F.normalize(x, p=2.0, dim=-1, eps=ops.L2_EPS)


def fused(model, layer: int):
    """(B, w, k) when the model's dense head reads `layer` and fuses block B
    with weight w (config dense_head.fuse_layer, fuse_weight), k = B's
    stride / layer's; else None."""
    h = model.cfg.dense_head
    if not head_applies(model, layer) or "fuse_layer" not in h:
        return None
    b = h["fuse_layer"]
    return b, float(h["fuse_weight"]), layer_stride(model, b) // layer_stride(model, layer)


def cell_stride(model, layer: int) -> int:
    """Input pixels per cell of the fine stage's cells of `layer` (`cells`):
    the layer's stride, times k for a fused block."""
    f = fused(model, layer)
    return layer_stride(model, layer) * (f[2] if f else 1)


def cell_channels(model, layer: int) -> int:
    """Floats per cell of `cells`: feature_channels, plus the fused block's."""
    f = fused(model, layer)
    return feature_channels(model, layer) + (layer_channels(model, f[0]) if f else 0)


def box(x: np.ndarray, k: int) -> np.ndarray:
    """uint8 [..., H/k, W/k, 3]: the mean of each k x k block of a uint8
    [..., H, W, 3] array, rounded half up (H and W multiples of k)."""
    x = np.asarray(x)
    if k == 1:
        return x
    *lead, h, w, c = x.shape
    s = x.reshape(*lead, h // k, k, w // k, k, c).astype(np.int32).sum(axis=(-4, -2))
    return ((s + k * k // 2) // (k * k)).astype(np.uint8)


def _join(a, b, w) -> np.ndarray:
    """[sqrt(1 - w) a, sqrt(w) b] along the last axis, float32."""
    return np.concatenate([np.float32(np.sqrt(1 - w)) * a, np.float32(np.sqrt(w)) * b], -1)


def cells(model, imgs: np.ndarray, layer: int = DEFAULT_LAYER) -> np.ndarray:
    """float32 [B, n, n, C]: the fine stage's unit cells of a uint8 batch [B,
    F, F, 3] (F = model_size): l2n(layer_features), or for a fused block
    (config dense_head.fuse_layer B, fuse_weight w) the head's unit cells of
    box(imgs, k) times sqrt(1 - w) joined with block B's raw unit cells of
    imgs times sqrt(w): a cosine of two cells is then (1 - w) times the
    head's plus w times block B's."""
    f = fused(model, layer)
    if f is None:
        return l2n(layer_features(model, imgs, layer)).numpy()
    b, w, k = f
    return _join(l2n(layer_features(model, box(imgs, k), layer)).numpy(),
                 l2n(layer_features(model, imgs, b, head=False)).numpy(), w)


def dense_features(model, canvas: np.ndarray, layer: int = DEFAULT_LAYER,
                   block: int = DEFAULT_BLOCK, margin: int = None) -> np.ndarray:
    """dense_raw_features, L2-normalised per cell (the reference's dense
    layer): see there. For a fused block (see `cells`), the head's on
    box(canvas, k) joined with block B's raw cells of the canvas, each in
    blocks of `block` pixels with its own layer_margin (margin must be
    None); the canvas's sides multiples of cell_stride."""
    f = fused(model, layer)
    if f is None:
        return l2n(dense_raw_features(model, canvas, layer, block, margin))
    if margin is not None:
        raise ValueError("a fused block takes each block's own margin (margin=None)")
    b, w, k = f
    canvas, s = np.asarray(canvas), cell_stride(model, layer)
    if canvas.ndim != 3 or canvas.shape[0] % s or canvas.shape[1] % s:
        raise ValueError(f"canvas {list(canvas.shape)}: sides must be multiples of {s}")
    return _join(l2n(dense_raw_features(model, box(canvas, k), layer, block)),
                 l2n(dense_raw_features(model, canvas, b, block, head=False)), w)


def dense_raw_features(model, canvas: np.ndarray, layer: int = DEFAULT_LAYER,
                       block: int = DEFAULT_BLOCK, margin: int = None,
                       head: bool = True) -> np.ndarray:
    """Step 3: float32 [H/s, W/s, C] cells of a uint8 (H, W, 3) canvas, H
    and W multiples of the layer's stride s (C: feature_channels).

    For each block origin (by, bx) on multiples of `block` covering the
    canvas, the network runs on canvas[by - margin : by + block + margin,
    bx - margin : bx + block + margin] (always that size; pixels outside
    the canvas reflected as in `reflect`, as often as needed) and keeps the
    cells [margin/s : (margin + block)/s] of each axis, clipped to the
    canvas.  With margin at least the layer's receptive field this equals
    one pass over the canvas reflect-padded by margin.  A dense head on the
    layer (unless `head` is false) runs on each block's feature map, its 3x3
    zero padding at the block's edges (in the margin, cropped away).
    margin None: layer_margin(layer).  dense_raw_features is not
    normalised."""
    _check_dense_model(model)
    s = layer_stride(model, layer)
    margin = layer_margin(layer) if margin is None else margin
    canvas = np.asarray(canvas)
    if canvas.ndim != 3 or canvas.shape[2] != 3 or canvas.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) canvas, got {canvas.dtype} {canvas.shape}")
    h, w = canvas.shape[:2]
    if h < 1 or w < 1 or h % s or w % s:
        raise ValueError(f"canvas {w}x{h}: width and height must be positive multiples of "
                         f"layer {layer}'s stride {s}")
    if block < s or block % s or margin < 0 or margin % s:
        raise ValueError(f"block {block} and margin {margin} must be multiples of layer "
                         f"{layer}'s stride {s} (block > 0)")
    use_head = head and head_applies(model, layer)
    out = np.zeros((h // s, w // s, feature_channels(model, layer) if use_head
                    else layer_channels(model, layer)), np.float32)
    m, nb = margin // s, block // s
    for by in range(0, h, block):
        rows = reflect(np.arange(by - margin, by + block + margin), h)
        for bx in range(0, w, block):
            cols = reflect(np.arange(bx - margin, bx + block + margin), w)
            f = layer_features(model, canvas[np.ix_(rows, cols)][None], layer,
                               use_head)[0].numpy()
            rh, rw = min(nb, (h - by) // s), min(nb, (w - bx) // s)
            out[by // s:by // s + rh, bx // s:bx // s + rw] = f[m:m + rh, m:m + rw]
    return out


def model_size(model, layer: int = DEFAULT_LAYER) -> int:
    """S: the fine stage's square input size for `layer`: when the dense
    head reads that layer, its size (config dense_head.size, else the
    model's input_size) times k for a fused block (`fused`); else the
    model's input_size."""
    f = fused(model, layer)
    if head_applies(model, layer) and "size" in model.cfg.dense_head:
        size = model.cfg.dense_head["size"]
    else:
        size, ww = model.cfg.input_size
        if size != ww:
            raise ConfigError(f"the fine stage needs a square input_size, not "
                              f"{model.cfg.input_size}")
    return size * (f[2] if f else 1)


def query_features(model, rgb: np.ndarray, headings: Sequence[float],
                   layer: int = DEFAULT_LAYER) -> np.ndarray:
    """Step 2: float32 [len(headings), S/s, S/s, C]: the frame resized once
    to 2S x 2S (warp at heading 0), that image warped to each heading at S =
    model_size, then `cells` (s = cell_stride)."""
    size = model_size(model, layer)
    s = cell_stride(model, layer)
    if size % s:
        raise ValueError(f"input size {size} is not a multiple of layer {layer}'s stride {s}")
    if not len(headings):
        raise ValueError("no headings")
    base = warp(rgb, 0.0, 2 * size)
    imgs = np.stack([warp(base, float(h), size) for h in headings])
    return cells(model, imgs, layer)


def disc_mask(n_cells: int, s: int, size: int) -> np.ndarray:
    """bool [n, n]: the cells (a, b) whose centre ((b + 1/2) s - S/2,
    (a + 1/2) s - S/2) lies within S/2 of the image centre (52 of 64 for
    n = 8, s = 8, S = 64)."""
    a, b = np.indices((n_cells, n_cells), dtype=np.float64)
    x, y = (b + 0.5) * s - size / 2, (a + 0.5) * s - size / 2
    return x * x + y * y <= (size / 2) ** 2


# --- step 4: the score --------------------------------------------------------------


def scores(q, d, mask) -> np.ndarray:
    """Step 4 for one source: float64 [Hh, R - n + 1, Q - n + 1] with

        out[h, r, c] = 1/|K| sum over (a, b) in K of <q[h, a, b], d[r + a, c + b]>

    q [Hh, n, m, C] query cells, d [R, Q, C] reference cells, mask bool
    [n, m] the set K.  A multi-year map takes the maximum over sources."""
    q = torch.as_tensor(np.asarray(q), dtype=torch.float64)
    d = torch.as_tensor(np.asarray(d), dtype=torch.float64)
    mask = torch.as_tensor(np.asarray(mask, dtype=bool))
    if q.dim() != 4 or d.dim() != 3 or q.shape[3] != d.shape[2]:
        raise ValueError(f"scores: q [Hh, n, m, C] and d [R, Q, C] expected, got "
                         f"{list(q.shape)} and {list(d.shape)}")
    if tuple(mask.shape) != tuple(q.shape[1:3]):
        raise ValueError(f"scores: mask {list(mask.shape)} does not match q's cells "
                         f"{list(q.shape[1:3])}")
    if d.shape[0] < q.shape[1] or d.shape[1] < q.shape[2]:
        raise ValueError(f"scores: reference {list(d.shape[:2])} smaller than the query "
                         f"{list(q.shape[1:3])}")
    k = int(mask.sum())
    if k == 0:
        raise ValueError("scores: empty mask")
    weight = (q * mask[None, :, :, None]).permute(0, 3, 1, 2)      # [Hh, C, n, m]
    out = F.conv2d(d.permute(2, 0, 1)[None], weight)[0]              # cross-correlation
    return (out / k).numpy()
