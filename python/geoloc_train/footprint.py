"""The camera's ground footprint: the reference of src/img/footprint.h.

A frame from a camera at altitude A (m above the ground), horizontal field
of view hfov and tilt t from nadir (towards the image's top) is cropped to
one map tile, tile_m metres of ground around its centre, before the model
sees it:

    f     = (W / 2) / tan(hfov / 2)          focal length, pixels
    gsd_x = A / (f cos t)                    m per pixel across, at the centre
    gsd_y = A / (f cos^2 t)                  m per pixel along the tilt
    ground_w, ground_h = W gsd_x, H gsd_y    the frame's ground extent, m
    w, h  = tile_m / gsd_x, tile_m / gsd_y   the centred crop, frame pixels
    n     = min(round(w), max_side)          the square output's side

Output pixel (i, j), centre offset (u, v) = (j + 1/2 - n/2, i + 1/2 - n/2),
samples the frame at x = (W / (2 sx) + u) sx - 1/2, y = (H / (2 sy) + v)
sy - 1/2 with sx = w / n, sy = h / n, bilinearly, coordinates reflected into
the frame (fine.reflect); when shrinking it averages nx x ny samples at
offsets ((b + 1/2)/nx - 1/2) of u and ((a + 1/2)/ny - 1/2) of v, nx =
min(ceil(sx), 16), ny = min(ceil(sy), 16) (1 up to sx = 1 + 1e-6, the
ceiling taken of sx - 1e-6).  Rounded to nearest.

Refused (FootprintError): a camera out of range (altitude (0, 10000], hfov
[1, 170], tilt [0, 60]); min(ground_w, ground_h) < 0.8 tile_m; min(w, h) <
min_side (half the model's input).  The C code is held to these functions
by tests/python/test_footprint_c.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .fine import _bilinear, reflect

MAX_ALTITUDE_M = 10000.0
MIN_HFOV_DEG, MAX_HFOV_DEG = 1.0, 170.0
MAX_TILT_DEG = 60.0
MIN_COVER = 0.8
MAX_AA = 16


class FootprintError(ValueError):
    """A camera or footprint the model cannot serve."""


@dataclass
class Footprint:
    width: int
    height: int
    gsd_x: float
    gsd_y: float
    ground_w: float
    ground_h: float
    crop_w: float
    crop_h: float
    side: int
    aa_x: int
    aa_y: int


def check_camera(altitude_m: float, hfov_deg: float, tilt_deg: float) -> None:
    if not 0 < altitude_m <= MAX_ALTITUDE_M:
        raise FootprintError(f"altitude {altitude_m} not in (0, {MAX_ALTITUDE_M}]")
    if not MIN_HFOV_DEG <= hfov_deg <= MAX_HFOV_DEG:
        raise FootprintError(f"hfov {hfov_deg} not in [{MIN_HFOV_DEG}, {MAX_HFOV_DEG}]")
    if not 0 <= tilt_deg <= MAX_TILT_DEG:
        raise FootprintError(f"tilt {tilt_deg} not in [0, {MAX_TILT_DEG}]")


def _aa(s: float) -> int:
    """ceil(s) samples when shrinking by s, with a margin for rounding."""
    return min(math.ceil(s - 1e-6), MAX_AA) if s > 1 + 1e-6 else 1


def plan(width: int, height: int, altitude_m: float, hfov_deg: float, tilt_deg: float,
         tile_m: float, min_side: int, max_side: int) -> Footprint:
    """The footprint of a width x height frame and its crop to tile_m."""
    check_camera(altitude_m, hfov_deg, tilt_deg)
    deg = math.pi / 180.0
    f = (width / 2.0) / math.tan(hfov_deg * deg / 2.0)
    ct = math.cos(tilt_deg * deg)
    gsd_x = altitude_m / (f * ct)
    gsd_y = altitude_m / (f * ct * ct)
    ground_w, ground_h = width * gsd_x, height * gsd_y
    crop_w, crop_h = tile_m / gsd_x, tile_m / gsd_y
    if min(ground_w, ground_h) < MIN_COVER * tile_m:
        raise FootprintError(f"the camera sees {ground_w:.0f} x {ground_h:.0f} m, less than "
                             f"{MIN_COVER} of {tile_m} m tiles")
    if crop_h < min_side:
        raise FootprintError(f"{tile_m} m tiles span {crop_w:.0f} x {crop_h:.0f} pixels, fewer "
                             f"than {min_side}")
    n = math.floor(crop_w + 0.5)
    side = max_side if n >= max_side else max(int(n), 1)
    return Footprint(width, height, gsd_x, gsd_y, ground_w, ground_h, crop_w, crop_h, side,
                     _aa(crop_w / side), _aa(crop_h / side))


def crop(rgb: np.ndarray, fp: Footprint) -> np.ndarray:
    """uint8 (side, side, 3): the frame resampled to its tile's footprint."""
    rgb = np.asarray(rgb)
    h, w = rgb.shape[:2]
    if (w, h) != (fp.width, fp.height) or rgb.ndim != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"crop: a uint8 {fp.width}x{fp.height} RGB frame, got {rgb.shape}")
    img = rgb.astype(np.float64)
    n = fp.side
    sx, sy = fp.crop_w / n, fp.crop_h / n
    ox, oy = w / (2.0 * sx), h / (2.0 * sy)
    c, s = 1.0, 0.0  # gl_img_warp's sampling at heading 0, term for term
    acc = np.zeros((n, n, 3), np.float64)
    for a in range(fp.aa_y):
        v = np.arange(n, dtype=np.float64)[:, None] + 0.5 - n / 2.0 + ((a + 0.5) / fp.aa_y - 0.5)
        for b in range(fp.aa_x):
            u = np.arange(n, dtype=np.float64)[None, :] + 0.5 - n / 2.0 + \
                ((b + 0.5) / fp.aa_x - 0.5)
            x = (ox + c * u + s * v) * sx - 0.5
            y = (oy - s * u + c * v) * sy - 0.5
            acc += _bilinear(img, reflect(x, w), reflect(y, h))
    acc /= fp.aa_x * fp.aa_y
    return np.clip(np.floor(acc + 0.5), 0, 255).astype(np.uint8)


def hfov_from_35mm(focal_35mm: float) -> float:
    """The horizontal field of view (degrees) of a 35 mm equivalent focal
    length: 2 atan(36 / (2 f35)), 36 mm being the film frame's width."""
    return math.degrees(2 * math.atan(36.0 / (2 * focal_35mm)))
