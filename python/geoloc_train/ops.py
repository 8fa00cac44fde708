"""The primitive ops of a geoloc model, one function each.

model.py builds every network only from these functions, and OPS.md
documents their exact semantics for the C engine (padding, rounding, eps).
Adding an op here means adding it to OPS.md and to the C engine.

Tensors are NCHW float32 (batch, channels, height, width).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

L2_EPS = 1e-12       # l2_normalize: x / max(||x||, L2_EPS)
POOL_EPS = 1e-6      # overlap-weighted pooling: divide by (sum of weights + POOL_EPS)
GEM_CLAMP = 1e-6     # GeM: features clamped to >= GEM_CLAMP before the power


def same_pads(size: int, k: int, stride: int, dilation: int) -> Tuple[int, int]:
    """TensorFlow SAME padding along one axis: (before, after).

    out = ceil(size / stride); the total is whatever makes that output
    possible, and the odd pixel goes after (bottom/right), unlike PyTorch.
    """
    k_eff = dilation * (k - 1) + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2


def conv_pads(h: int, w: int, k: int, stride: int, dilation: int, padding: str
              ) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding of a square k x k conv."""
    if padding == "tf_same":
        t, b = same_pads(h, k, stride, dilation)
        l, r = same_pads(w, k, stride, dilation)
        return t, b, l, r
    if padding == "torch":
        p = dilation * (k - 1) // 2
        return p, p, p, p
    raise ValueError(f"unknown padding mode {padding!r}")


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
           stride: int = 1, dilation: int = 1, groups: int = 1,
           padding: str = "torch") -> torch.Tensor:
    """2-D cross-correlation, weight OIHW (I = in_channels / groups), zero padding."""
    k = weight.shape[-1]
    t, b, l, r = conv_pads(x.shape[-2], x.shape[-1], k, stride, dilation, padding)
    if t == b and l == r:
        return F.conv2d(x, weight, bias, stride, (t, l), dilation, groups)
    # Asymmetric padding: F.conv2d only pads symmetrically.
    x = F.pad(x, (l, r, t, b))
    return F.conv2d(x, weight, bias, stride, 0, dilation, groups)


def activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "relu6":
        return torch.clamp(x, 0.0, 6.0)
    if kind == "relu":
        return torch.relu(x)
    if kind == "none":
        return x
    raise ValueError(f"unknown activation {kind!r}")


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize, half-pixel centres (align_corners=False), no antialias."""
    h, w = int(size[0]), int(size[1])
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean[c]) / std[c]; mean and std have shape [C]."""
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C]: mean over the H*W positions."""
    return x.mean(dim=(2, 3))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """[B, in] -> [B, out]; weight [out, in]."""
    return F.linear(x, weight, bias)


def spatial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Self-attention over positions.  q, k, v: [B, d, H, W] -> [B, d, H, W].

    S[i, j] = sum_c q[c, i] k[c, j] / sqrt(d); A = softmax over j (keys);
    out[c, i] = sum_j A[i, j] v[c, j].
    """
    b, d, h, w = q.shape
    qf, kf, vf = q.reshape(b, d, h * w), k.reshape(b, d, h * w), v.reshape(b, d, h * w)
    s = torch.bmm(qf.transpose(1, 2), kf) / math.sqrt(d)        # [B, N, N]
    a = torch.softmax(s, dim=-1)
    return torch.bmm(vf, a.transpose(1, 2)).reshape(b, d, h, w)


def weighted_mean_pool(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W], m [B, 1, H, W] -> [B, C]: sum(m*x) / (sum(m) + POOL_EPS)."""
    num = (x * m).sum(dim=(2, 3))
    den = m.sum(dim=(2, 3)) + POOL_EPS
    return num / den


def weighted_gem_pool(x: torch.Tensor, m: torch.Tensor, p: float) -> torch.Tensor:
    """Generalised mean weighted by m: (sum(m * max(x, eps)^p) / (sum(m) + eps))^(1/p)."""
    xp = torch.clamp(x, min=GEM_CLAMP).pow(p)
    return weighted_mean_pool(xp, m).pow(1.0 / p)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """[B, n] -> x / max(||x||_2, L2_EPS) along n."""
    return F.normalize(x, p=2.0, dim=1, eps=L2_EPS)
