"""The naip-xtime protocol: ten years of NAIP imagery of one place, split
into a west half for training and an east half for evaluation.

- Reference map: tiles of the 2020 raster whose centre lies east of X_SPLIT.
  `geoloc map build --bbox $(xtime-bbox)` keeps exactly these tiles.
- Queries: simulated drone views from the nine other years, centred inside
  the reference tiles' centre range (make_eval_set).
- Training may only use ground at or west of X_SPLIT - BUFFER_M (train_ok).
- Validation (region "west"): the same protocol on the training ground, for
  choosing parameters without looking at the east half. Reference tiles:
  the 2020 grid tiles wholly on training ground (train_corners),
  `geoloc map build --bbox $(xtime-bbox --region west)`; queries centred
  inside their centre range, seed 7 by default (east: 2020).

X_SPLIT is the middle easting of the 2020 raster, moved down onto the
nearest multiple of the stride plus half a stride: tile centres lie on
multiples of the stride (320 m tiles, 80 m grid), so every tile centre is
40 m from the split line, far more than the few metres by which a line of
constant easting departs from a meridian across the raster (meridian
convergence); splitting by longitude and by easting keeps the same tiles.
"""

from __future__ import annotations

import csv
import glob
import math
import os

import numpy as np
from PIL import Image

from .views import (STRIDE_M, TILE_M, Raster, ViewParams, grid_corners, naip_date,
                    random_view, render_view)

REFERENCE_YEAR = 2020
X_SPLIT = 488200.0          # = split_easting(the 2020 raster), EPSG:26914 metres
BUFFER_M = 300.0            # training ground ends this far west of X_SPLIT
BBOX_MARGIN_DEG = 0.001     # around the raster on the sides other than the split
# The validation map's east edge (EPSG:26914 metres): a tile lies wholly on
# training ground when its centre is at or west of it. Tile centres lie on
# multiples of the stride and 487740 is not one: every centre is at least
# 20 m from it, far more than the meridian convergence across the raster.
WEST_EDGE = X_SPLIT - BUFFER_M - TILE_M / 2
# train-dense's held-out validation band (train_dense.py): the southern 30 %
# of the training ground's northing range, i.e. northings below VAL_NORTHING
# (EPSG:26914 metres). The ten rasters' common northing range is 5205631.2
# to 5209245; 30 % of it ends at 5206715.3, moved up to the next multiple of
# the fine stage's 40 m cell. train-dense trains only on ground at or north
# of VAL_NORTHING + VAL_BUFFER_M (views, reference windows and the imagery
# their features see) and validates only on ground south of VAL_NORTHING.
VAL_NORTHING = 5206720.0
VAL_BUFFER_M = 160.0
REGIONS = ("east", "west")  # evaluation, validation
DEFAULT_SEEDS = {"east": 2020, "west": 7}
# labels.csv: the required columns, then extra ones (capture date of the
# query's imagery, scale, tilt in degrees).
LABEL_FIELDS = ["file", "lat", "lon", "heading"]
EXTRA_FIELDS = ["date", "scale", "tilt"]


def split_easting(raster: Raster, stride_m=STRIDE_M) -> float:
    """The middle easting of the raster's extent, moved down to a multiple
    of the stride plus half a stride."""
    xmin, _, xmax, _ = raster.extent()
    return math.floor((xmin + xmax) / 2 / stride_m) * stride_m + stride_m / 2


def train_ok(corners) -> bool:
    """True when every corner (an (N, 2) array of CRS points, e.g. a view's
    footprint or a tile's corners) lies at or west of X_SPLIT - BUFFER_M."""
    return bool(np.all(np.asarray(corners, np.float64)[:, 0] <= X_SPLIT - BUFFER_M))


def dense_train_ok(corners) -> bool:
    """train-dense's training ground: every corner on training ground
    (train_ok) and at or north of VAL_NORTHING + VAL_BUFFER_M."""
    c = np.asarray(corners, np.float64)
    return train_ok(c) and bool(np.all(c[:, 1] >= VAL_NORTHING + VAL_BUFFER_M))


def dense_val_ok(corners) -> bool:
    """train-dense's validation band: every corner on training ground
    (train_ok) and south of VAL_NORTHING."""
    c = np.asarray(corners, np.float64)
    return train_ok(c) and bool(np.all(c[:, 1] < VAL_NORTHING))


def rasters(naip_dir) -> dict:
    """{year: path} of the NAIP GeoTIFFs in a folder (m_..._YYYYMMDD.tif)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(naip_dir, "m_*.tif"))):
        if naip_date(path):
            out[int(naip_date(path)[:4])] = path
    if REFERENCE_YEAR not in out:
        raise ValueError(f"{naip_dir}: no NAIP raster of {REFERENCE_YEAR} (m_*_{REFERENCE_YEAR}MMDD.tif)")
    return out


def reference_raster(naip_dir) -> Raster:
    return Raster.open(rasters(naip_dir)[REFERENCE_YEAR])


def reference_corners(ref: Raster) -> np.ndarray:
    """(N, 2) lower-left corners of the reference tiles: the 2020 grid
    tiles whose centre lies east of X_SPLIT, in map build order."""
    c = grid_corners(ref.extent())
    return c[c[:, 0] + TILE_M / 2 > X_SPLIT]


def train_corners(raster: Raster) -> np.ndarray:
    """(N, 2) lower-left corners of the grid tiles of a raster that lie
    wholly on training ground."""
    c = grid_corners(raster.extent())
    return c[c[:, 0] + TILE_M <= X_SPLIT - BUFFER_M]


def _outer_bbox(ref: Raster) -> tuple:
    """(west, south, east, north) WGS84 degrees just outside the raster:
    its corners' range widened by BBOX_MARGIN_DEG."""
    xmin, ymin, xmax, ymax = ref.extent()
    lon, lat = ref.to_lonlat(np.array([xmin, xmax, xmax, xmin]),
                             np.array([ymin, ymin, ymax, ymax]))
    m = BBOX_MARGIN_DEG
    return (float(lon.min()) - m, float(lat.min()) - m, float(lon.max()) + m,
            float(lat.max()) + m)


def east_bbox(ref: Raster) -> tuple:
    """(west, south, east, north) WGS84 degrees holding the centres of the
    reference tiles and no other 2020 tile centre: west is the split line's
    longitude at the raster's middle northing; the other sides lie just
    outside the raster."""
    _, ymin, _, ymax = ref.extent()
    west, _ = ref.to_lonlat(X_SPLIT, (ymin + ymax) / 2)
    _, south, east, north = _outer_bbox(ref)
    return west, south, east, north


def west_bbox(ref: Raster) -> tuple:
    """(west, south, east, north) WGS84 degrees holding the centres of the
    validation tiles (train_corners) and no other 2020 tile centre: east is
    the longitude of WEST_EDGE at the raster's middle northing; the other
    sides lie just outside the raster (as east_bbox)."""
    _, ymin, _, ymax = ref.extent()
    east, _ = ref.to_lonlat(WEST_EDGE, (ymin + ymax) / 2)
    west, south, _, north = _outer_bbox(ref)
    return west, south, east, north


def _check_region(region: str) -> None:
    if region not in REGIONS:
        raise ValueError(f"region {region!r} is not one of {', '.join(REGIONS)}")


def region_bbox(ref: Raster, region: str = "east") -> tuple:
    """east_bbox or west_bbox."""
    _check_region(region)
    return east_bbox(ref) if region == "east" else west_bbox(ref)


def region_corners(ref: Raster, region: str = "east") -> np.ndarray:
    """(N, 2) lower-left corners of a region's map tiles: reference_corners
    (east) or train_corners (west)."""
    _check_region(region)
    return reference_corners(ref) if region == "east" else train_corners(ref)


def bbox_string(naip_dir, region: str = "east") -> str:
    """"WEST,SOUTH,EAST,NORTH" for `geoloc map build --bbox`."""
    return ",".join(f"{v:.7f}" for v in region_bbox(reference_raster(naip_dir), region))


def _write_set(out_dir, rows, extra_fields):
    """Writes frames/NNNNNN.jpg and labels.csv from (image, fields) rows."""
    os.makedirs(os.path.join(out_dir, "frames"), exist_ok=True)
    with open(os.path.join(out_dir, "labels.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(LABEL_FIELDS + extra_fields)
        for i, (img, fields) in enumerate(rows):
            name = f"frames/{i:06d}.jpg"
            Image.fromarray(img).save(os.path.join(out_dir, name), quality=90)
            w.writerow([name] + fields)


def _label(raster: Raster, p: ViewParams) -> list:
    lon, lat = raster.to_lonlat(p.cx, p.cy)
    return [f"{lat:.7f}", f"{lon:.7f}", f"{p.heading_deg % 360:.2f}", raster.date,
            f"{p.scale:.4f}", f"{p.tilt_deg:.2f}"]


def centre_range(ref: Raster, region: str = "east") -> tuple:
    """(xmin, ymin, xmax, ymax): the range of a region's tile centres
    (default: the reference tiles)."""
    c = region_corners(ref, region) + TILE_M / 2
    return (*c.min(axis=0), *c.max(axis=0))


def make_eval_set(naip_dir, out_dir, count=1000, seed=None, size=128, region="east") -> int:
    """The labelled naip-xtime query set: `count` simulated drone views of
    the region (east: the evaluation half; west: the validation tiles on
    training ground) from the years other than 2020, a year drawn uniformly
    per query, the centre uniformly over the region's tile centres' range,
    random_view parameters; views reaching outside the raster are redrawn.
    seed None: DEFAULT_SEEDS[region]. Deterministic for a seed. Returns the
    number of frames written."""
    _check_region(region)
    if seed is None:
        seed = DEFAULT_SEEDS[region]
    paths = rasters(naip_dir)
    years = sorted(y for y in paths if y != REFERENCE_YEAR)
    if not years:
        raise ValueError(f"{naip_dir}: no query years besides {REFERENCE_YEAR}")
    ref, opened = Raster.open(paths[REFERENCE_YEAR]), {}
    x0, y0, x1, y1 = centre_range(ref, region)
    rng = np.random.default_rng(seed)
    rows, tries = [], 0
    while len(rows) < count:
        tries += 1
        year = years[rng.integers(len(years))]
        if year not in opened:
            opened[year] = Raster.open(paths[year])
        r = opened[year]
        p = random_view(rng, rng.uniform(x0, x1), rng.uniform(y0, y1))
        img, valid = render_view(r, p, size)
        if valid:
            rows.append((img, _label(r, p)))
    _write_set(out_dir, rows, EXTRA_FIELDS)
    where = "" if region == "east" else f"{region} region, "
    print(f"wrote {count} frames ({where}{size}x{size}, from {len(years)} years other than "
          f"{REFERENCE_YEAR}; {tries - count} views off the raster redrawn) and labels.csv "
          f"to {out_dir}")
    return count


def _flight_path(rng, box, frames):
    """A gently curving path inside box: start, heading, step and turn rate
    drawn until every position fits. Returns (x, y, heading) arrays."""
    x0, y0, x1, y1 = box
    for _ in range(20000):
        step = rng.uniform(40, 60)
        turn = rng.uniform(-1.5, 1.5)          # degrees per frame
        h = rng.uniform(0, 360) + turn * np.arange(frames)
        x = rng.uniform(x0, x1) + np.concatenate([[0], np.cumsum(step * np.sin(np.radians(h[:-1])))])
        y = rng.uniform(y0, y1) + np.concatenate([[0], np.cumsum(step * np.cos(np.radians(h[:-1])))])
        if x.min() >= x0 and x.max() <= x1 and y.min() >= y0 and y.max() <= y1:
            return x, y, h % 360
    raise ValueError(f"no {frames}-frame path fits inside the east region; use fewer frames")


def make_flight(naip_dir, out_dir, year=2009, frames=60, seed=7, size=256) -> int:
    """A demo flight over the east half in one year's imagery: a gently
    curving path at 40-60 m per frame, each frame heading along the path,
    tilted 10-20 degrees, with mild photometric changes; the same output as
    make_eval_set. Deterministic for a seed. Returns the number of frames."""
    paths = rasters(naip_dir)
    if year not in paths:
        raise ValueError(f"{naip_dir}: no NAIP raster of {year}")
    ref, r = Raster.open(paths[REFERENCE_YEAR]), Raster.open(paths[year])
    xa, ya, xb, yb = centre_range(ref)
    m = TILE_M * 0.75                          # keeps the tilted views on the raster
    rng = np.random.default_rng(seed)
    for _ in range(100):
        x, y, heading = _flight_path(rng, (xa + m, ya + m, xb - m, yb - m), frames)
        # One camera for the flight: a steady altitude and pitch with small
        # wobbles, half the photometric changes of a random view.
        cam = random_view(rng, 0, 0)
        scale, tilt = rng.uniform(0.95, 1.05), rng.uniform(12, 18)
        rows = []
        for i in range(frames):
            p = ViewParams(
                cx=float(x[i]), cy=float(y[i]), heading_deg=float(heading[i]),
                scale=float(scale + rng.normal(0, 0.01)),
                tilt_deg=float(np.clip(tilt + rng.normal(0, 1), 10, 20)),
                brightness=1 + (cam.brightness - 1) / 2 + float(rng.normal(0, 0.01)),
                contrast=1 + (cam.contrast - 1) / 2, hue_deg=cam.hue_deg / 2,
                saturation=1 + (cam.saturation - 1) / 2, blur_sigma=cam.blur_sigma / 2,
                noise_sigma=cam.noise_sigma / 2, noise_seed=int(rng.integers(2**31)))
            img, valid = render_view(r, p, size)
            if not valid:
                break
            rows.append((img, _label(r, p)))
        if len(rows) == frames:
            _write_set(out_dir, rows, EXTRA_FIELDS)
            length = float(np.hypot(np.diff(x), np.diff(y)).sum())
            print(f"wrote a {frames}-frame flight over {length:.0f} m ({year}, {size}x{size}) "
                  f"and labels.csv to {out_dir}")
            return frames
    raise ValueError("no flight stayed inside the raster")
