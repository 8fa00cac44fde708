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
- Flights (make_flights): simulated drone flights over a region for
  testing a position tracker, in the years the maps are not built from
  (MAP_YEARS), with capture times, noisy odometry velocities and per flight
  one gap in the frames and one kidnap (a teleport of at least a kilometre).

X_SPLIT is the middle easting of the 2020 raster, moved down onto the
nearest multiple of the stride plus half a stride: tile centres lie on
multiples of the stride (320 m tiles, 80 m grid), so every tile centre is
40 m from the split line, far more than the few metres by which a line of
constant easting departs from a meridian across the raster (meridian
convergence); splitting by longitude and by easting keeps the same tiles.
"""

from __future__ import annotations

import argparse
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
# The other band train-dense can hold out (--val-band north): the northern
# 30 %, northings at or above VAL_NORTH_NORTHING (30 % of the range begins at
# 5208161.9, moved down to a multiple of 40 m); training then keeps south of
# VAL_NORTH_NORTHING - VAL_BUFFER_M. Its ground changed more since 2020 (the
# water of 2009 and 2010 differs from 2020's on 16-19 % of it, against 6-10 %
# in the south band; `xtime-change`), as the evaluation half's did.
VAL_NORTH_NORTHING = 5208160.0
VAL_BANDS = ("south", "north")
REGIONS = ("east", "west")  # evaluation, validation
DEFAULT_SEEDS = {"east": 2020, "west": 7}
# labels.csv: the required columns, then extra ones (capture date of the
# query's imagery, scale, tilt in degrees).
LABEL_FIELDS = ["file", "lat", "lon", "heading"]
EXTRA_FIELDS = ["date", "scale", "tilt"]
# Simulated flights (make_flight, make_flights) keep their frames' centres
# this far inside the region's centre range, which keeps the tilted views
# on the raster.
FLIGHT_MARGIN_M = TILE_M * 0.75


def split_easting(raster: Raster, stride_m=STRIDE_M) -> float:
    """The middle easting of the raster's extent, moved down to a multiple
    of the stride plus half a stride."""
    xmin, _, xmax, _ = raster.extent()
    return math.floor((xmin + xmax) / 2 / stride_m) * stride_m + stride_m / 2


def train_ok(corners) -> bool:
    """True when every corner (an (N, 2) array of CRS points, e.g. a view's
    footprint or a tile's corners) lies at or west of X_SPLIT - BUFFER_M."""
    return bool(np.all(np.asarray(corners, np.float64)[:, 0] <= X_SPLIT - BUFFER_M))


def dense_northings(part: str, band: str = "south") -> tuple:
    """[lo, hi): the northings (EPSG:26914 metres, +-inf for open ends) of
    train-dense's part ("train" or "val") when it holds out `band` (VAL_BANDS)."""
    if band not in VAL_BANDS or part not in ("train", "val"):
        raise ValueError(f"band {band!r} and part {part!r}: need one of {VAL_BANDS}, train or val")
    inf = math.inf
    if band == "south":
        return (VAL_NORTHING + VAL_BUFFER_M, inf) if part == "train" else (-inf, VAL_NORTHING)
    return (-inf, VAL_NORTH_NORTHING - VAL_BUFFER_M) if part == "train" else \
        (VAL_NORTH_NORTHING, inf)


def dense_ok(corners, part: str, band: str = "south") -> bool:
    """True when every corner lies on training ground (train_ok) and within
    train-dense's part for `band` (dense_northings)."""
    c = np.asarray(corners, np.float64)
    lo, hi = dense_northings(part, band)
    return train_ok(c) and bool(np.all((c[:, 1] >= lo) & (c[:, 1] < hi)))


def parse_years(text: str) -> tuple:
    """The years of a command-line value such as "2009,2012" (argparse type)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"years {text!r} are not comma-separated years, "
                                         "e.g. 2009,2012") from None


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


def _flight_camera(rng) -> tuple:
    """One camera for a flight: a steady altitude and pitch (scale, tilt),
    half the photometric changes of a random view (cam)."""
    cam = random_view(rng, 0, 0)
    return cam, rng.uniform(0.95, 1.05), rng.uniform(12, 18)


def _flight_view(rng, camera, x, y, heading) -> ViewParams:
    """A frame of a flight's camera (_flight_camera) centred on (x, y),
    its top toward heading: the scale and tilt with small wobbles, the
    brightness with a small flicker, its own noise seed."""
    cam, scale, tilt = camera
    return ViewParams(
        cx=float(x), cy=float(y), heading_deg=float(heading),
        scale=float(scale + rng.normal(0, 0.01)),
        tilt_deg=float(np.clip(tilt + rng.normal(0, 1), 10, 20)),
        brightness=1 + (cam.brightness - 1) / 2 + float(rng.normal(0, 0.01)),
        contrast=1 + (cam.contrast - 1) / 2, hue_deg=cam.hue_deg / 2,
        saturation=1 + (cam.saturation - 1) / 2, blur_sigma=cam.blur_sigma / 2,
        noise_sigma=cam.noise_sigma / 2, noise_seed=int(rng.integers(2**31)))


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
    m = FLIGHT_MARGIN_M
    rng = np.random.default_rng(seed)
    for _ in range(100):
        x, y, heading = _flight_path(rng, (xa + m, ya + m, xb - m, yb - m), frames)
        camera = _flight_camera(rng)
        rows = []
        for i in range(frames):
            p = _flight_view(rng, camera, x[i], y[i], heading[i])
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


# --- the flights protocol (make_flights) ------------------------------------------

MAP_YEARS = (2018, 2019, 2020)     # maps are built from these; flights use the other years
FLIGHT_SEEDS = {"east": 3030, "west": 3131}
# labels.csv of make_flights: LABEL_FIELDS + EXTRA_FIELDS, then these.
FLIGHT_FIELDS = ["flight", "time_us", "vel_n", "vel_e", "event"]
FLIGHT_T0_US = 1_700_000_000_000_000   # flight f starts at FLIGHT_T0_US + f * FLIGHT_DT_US
FLIGHT_DT_US = 3_600_000_000
ODOMETRY_SIGMA = 0.5                   # m/s, Gaussian noise on vel_n, vel_e
KIDNAP_MIN_M = 1000.0
MIN_EVENT_FRAMES = 34                  # the fewest frames that fit a gap and a kidnap
_SUBSTEP_S = 0.1                       # integration step of the simulated flight
_AVOID_RATE = (5.0, 8.0)               # degrees/s of a turn back from the region's edge


def _wrap(deg):
    """Degrees into -180..180."""
    return (deg + 180.0) % 360.0 - 180.0


class _Pilot:
    """The direction of travel of a simulated flight: straight legs of 4-20 s
    and turns of 20-120 degrees at 3-8 degrees/s either way; whenever the
    point a lookahead ahead (two seconds of flight plus the widest turning
    radius plus 20 m) leaves the box, a turn of 30-120 degrees at 5-8
    degrees/s toward the box's middle. fly() integrates the position at the
    flight's constant ground speed."""

    def __init__(self, rng, box, speed: float):
        self.rng, self.box, self.speed = rng, box, speed
        self.lookahead = 2 * speed + speed / math.radians(_AVOID_RATE[0]) + 20
        self.straight()

    def straight(self) -> None:
        self.rate, self.left, self.avoiding = 0.0, float(self.rng.uniform(4, 20)), False

    def _turn(self, angle: float, rate: float, avoiding: bool) -> None:
        self.rate, self.left, self.avoiding = rate, angle / abs(rate), avoiding

    def clear_ahead(self, x: float, y: float, h: float) -> bool:
        x0, y0, x1, y1 = self.box
        ax = x + self.lookahead * math.sin(math.radians(h))
        ay = y + self.lookahead * math.cos(math.radians(h))
        return x0 <= ax <= x1 and y0 <= ay <= y1

    def fly(self, x: float, y: float, h: float, seconds: float) -> tuple:
        """(x, y, h) after flying for seconds from (x, y) with direction of
        travel h (degrees clockwise from north)."""
        rng = self.rng
        while seconds > 1e-9:
            if not self.avoiding and not self.clear_ahead(x, y, h):
                x0, y0, x1, y1 = self.box
                to_mid = _wrap(math.degrees(math.atan2((x0 + x1) / 2 - x, (y0 + y1) / 2 - y)) - h)
                angle = float(np.clip(abs(to_mid) + rng.uniform(-20, 20), 30, 120))
                self._turn(angle, math.copysign(rng.uniform(*_AVOID_RATE), to_mid), True)
            ds = min(seconds, _SUBSTEP_S, self.left)
            mid = math.radians(h + self.rate * ds / 2)
            x += self.speed * ds * math.sin(mid)
            y += self.speed * ds * math.cos(mid)
            h = (h + self.rate * ds) % 360
            seconds -= ds
            self.left -= ds
            if self.left <= 1e-9:
                if self.rate:
                    self.straight()
                else:
                    self._turn(rng.uniform(20, 120), rng.choice([-1, 1]) * rng.uniform(3, 8),
                               False)
        return x, y, h

    def place(self, away_from=None):
        """A random (x, y, h) in the box with the path ahead clear, at least
        KIDNAP_MIN_M from away_from (x, y) when given; None when 1000 draws
        find none."""
        x0, y0, x1, y1 = self.box
        for _ in range(1000):
            x, y = float(self.rng.uniform(x0, x1)), float(self.rng.uniform(y0, y1))
            h = float(self.rng.uniform(0, 360))
            far = away_from is None or math.hypot(x - away_from[0],
                                                  y - away_from[1]) >= KIDNAP_MIN_M
            if far and self.clear_ahead(x, y, h):
                self.straight()
                return x, y, h
        return None


def _event_frames(rng, frames: int) -> tuple:
    """(gap, kidnap) frame indices: the kidnap in the last third, at least 20
    frames before the end (for short flights the last frame that allows,
    moved up to 3 frames after the middle third's start), the gap in the
    middle third at least 3 frames before the kidnap."""
    third = frames // 3
    k_hi = frames - 20
    k_lo = max(min(-(-2 * frames // 3), k_hi), third + 3)
    kidnap = int(rng.integers(k_lo, k_hi + 1))
    gap = int(rng.integers(third, min(2 * frames // 3, kidnap - 2)))
    return gap, kidnap


def _flight_track(rng, box, frames: int, events: bool):
    """One simulated flight's frames inside box: a dict of t (s from its
    start), x, y, course (direction of travel, degrees), event (list of
    str), speed (m/s), flown (m, the teleport not counted); None when the
    path left the box."""
    speed = float(rng.uniform(5, 20))
    dt = float(rng.uniform(0.5, 1.0)) * rng.uniform(0.9, 1.1, frames)
    dt[0] = 0.0
    gap, kidnap = _event_frames(rng, frames) if events else (-1, -1)
    if events:
        dt[gap] += rng.uniform(10, 30)
    pilot = _Pilot(rng, box, speed)
    state = pilot.place()
    if state is None:
        return None
    x, y, h = state
    track = np.zeros((frames, 3))
    event = [""] * frames
    event[0] = "start"
    for i in range(frames):
        if i == kidnap:
            state = pilot.place(away_from=(x, y))
            if state is None:
                return None
            x, y, h = state
            event[i] = "kidnap"
        elif i:
            x, y, h = pilot.fly(x, y, h, dt[i])
            event[i] = "gap" if i == gap else ""
        track[i] = x, y, h
    x0, y0, x1, y1 = box
    if not (track[:, 0].min() >= x0 and track[:, 0].max() <= x1 and track[:, 1].min() >= y0
            and track[:, 1].max() <= y1):
        return None
    flown = speed * float(dt.sum() - (dt[kidnap] if events else 0.0))
    return {"t": np.cumsum(dt), "x": track[:, 0], "y": track[:, 1], "course": track[:, 2],
            "event": event, "speed": speed, "flown": flown}


def _flight_years(paths: dict, years) -> list:
    if years is None:
        years = [y for y in paths if y not in MAP_YEARS]
        if not years:
            raise ValueError(f"no NAIP raster of a year other than {MAP_YEARS} for flights")
    missing = [y for y in years if y not in paths]
    if missing:
        raise ValueError(f"no NAIP raster of {', '.join(map(str, missing))}")
    return sorted(set(int(y) for y in years))


def make_flights(naip_dir, out_dir, region: str = "east", flights: int = 20, frames: int = 100,
                 seed=None, size: int = 128, years=None, events: bool = True,
                 band: str = None) -> int:
    """Simulated drone flights over a region for testing a position tracker,
    `flights` flights of `frames` frames, all in one labels.csv (a flight's
    frames on consecutive rows, flights one after another) with the columns
    LABEL_FIELDS + EXTRA_FIELDS + FLIGHT_FIELDS.

    Each flight uses one year's imagery (years: default every year but the
    maps' MAP_YEARS), the years cycling through a seeded permutation. It
    flies at a constant ground speed U(5, 20) m/s, a frame every U(0.5, 1)
    s +-10 %, on straight legs and turns of up to 120 degrees at a few
    degrees/s (_Pilot); each frame looks along the direction of travel with
    a yaw wobble of a degree or two, through one camera per flight as in
    make_flight. vel_n, vel_e: the true ground velocity plus Gaussian
    odometry noise (ODOMETRY_SIGMA); time_us: capture time, flight f
    starting at FLIGHT_T0_US + f * FLIGHT_DT_US. With events, each flight
    has one gap (in the middle third the capture time jumps by U(10, 30) s
    while the vehicle flies on; event "gap" on the frame after it) and one
    kidnap (in the last third, at least 20 frames before the end: a teleport
    at least KIDNAP_MIN_M away with a new heading, at the normal interval;
    event "kidnap"); without, neither. A flight's first frame says "start".
    Every frame's centre lies FLIGHT_MARGIN_M inside the region's centre
    range (centre_range); flights that leave it or whose views reach off
    the raster are redrawn. band "north" (region west only): the frames'
    centres keep to train-dense's north validation band instead (northings
    from VAL_NORTH_NORTHING up), ground a head trained with `--val-band
    north` never saw; there is no margin on that side, so the views of
    frames near the band's south edge also see some of the buffer below it
    and at most a strip of about 80 m of training ground (a view reaches
    about FLIGHT_MARGIN_M from its centre). seed None: FLIGHT_SEEDS[region].
    Deterministic for a seed. Returns the number of frames written."""
    _check_region(region)
    if band not in (None, "north") or (band and region != "west"):
        raise ValueError("make_flights: band is None or 'north' (region west only)")
    if flights < 1 or frames < 2:
        raise ValueError("flights must be at least 1 and frames at least 2")
    if events and frames < MIN_EVENT_FRAMES:
        raise ValueError(f"a flight with a gap and a kidnap needs at least {MIN_EVENT_FRAMES} "
                         f"frames (or no events)")
    if seed is None:
        seed = FLIGHT_SEEDS[region]
    paths = rasters(naip_dir)
    years = _flight_years(paths, years)
    ref, opened = Raster.open(paths[REFERENCE_YEAR]), {}
    xa, ya, xb, yb = centre_range(ref, region)
    m = FLIGHT_MARGIN_M
    box = (xa + m, ya + m if band is None else dense_northings("val", band)[0], xb - m, yb - m)
    order = np.random.default_rng(seed).permutation(years)
    stats = {"km": 0.0, "redrawn": 0}

    def rows():
        for f in range(flights):
            year = int(order[f % len(order)])
            if year not in opened:
                opened[year] = Raster.open(paths[year])
            r = opened[year]
            rng = np.random.default_rng([seed, f])
            for _ in range(1000):
                track = _flight_track(rng, box, frames, events)
                if track is None:
                    stats["redrawn"] += 1
                    continue
                camera = _flight_camera(rng)
                out = []
                for i in range(frames):
                    course = track["course"][i]
                    wobble = float(np.clip(rng.normal(0, 1.0), -2.5, 2.5))
                    p = _flight_view(rng, camera, track["x"][i], track["y"][i], course + wobble)
                    img, valid = render_view(r, p, size)
                    if not valid:
                        break
                    vn, ve = track["speed"] * np.array([math.cos(math.radians(course)),
                                                        math.sin(math.radians(course))])
                    vn, ve = rng.normal([vn, ve], ODOMETRY_SIGMA)
                    t_us = FLIGHT_T0_US + f * FLIGHT_DT_US + round(track["t"][i] * 1e6)
                    out.append((img, _label(r, p) + [str(f), str(t_us), f"{vn:.3f}",
                                                     f"{ve:.3f}", track["event"][i]]))
                if len(out) == frames:
                    stats["km"] += track["flown"] / 1000
                    yield from out
                    break
                stats["redrawn"] += 1
            else:
                raise ValueError(f"no {frames}-frame flight stays inside the {region} region; "
                                 "use fewer frames")

    _write_set(out_dir, rows(), EXTRA_FIELDS + FLIGHT_FIELDS)
    what = "a gap and a kidnap each" if events else "no events"
    used = sorted({int(order[f % len(order)]) for f in range(flights)})
    where = f"{region} region" + (f", {band} band" if band else "")
    print(f"wrote {flights} flights x {frames} frames ({where}, {size}x{size}, years "
          f"{','.join(map(str, used))}; {what}; {stats['km']:.1f} km flown, "
          f"{stats['redrawn']} flights redrawn) and labels.csv to {out_dir}")
    return flights * frames


# --- Where the queries fail: open water in the frame ---------------------------------
#
# Open water (the prairie potholes) is nearly black in near-infrared, and
# the shorelines are the most distinctive thing on this ground; the share
# of water in a frame's footprint is a measure of how much it shows.

WATER_BINS = (0.0, 0.02, 0.10, 0.20, 0.40)


def _otsu(values: np.ndarray) -> int:
    """Otsu's threshold t of uint8 values: the split into <= t and > t that
    maximises the between-class variance."""
    p = np.bincount(values.ravel(), minlength=256)[:256].astype(np.float64)
    p /= p.sum()
    w, m = np.cumsum(p), np.cumsum(p * np.arange(256))
    between = (m[-1] * w - m) ** 2 / np.maximum(w * (1 - w), 1e-12)
    return int(np.argmax(between))


def water_mask(path) -> tuple:
    """(bool (H, W) water mask, geotransform) of a 4-band NAIP GeoTIFF: the
    near-infrared band (4) at or below its Otsu threshold."""
    from osgeo import gdal
    ds = gdal.Open(os.fspath(path))
    if ds is None or ds.RasterCount < 4:
        raise ValueError(f"{path}: needs a 4th (near-infrared) band to find water")
    nir = ds.GetRasterBand(4).ReadAsArray()
    return nir <= _otsu(nir), ds.GetGeoTransform()


def water_share(mask_gt: tuple, x: float, y: float, radius: float, samples: int = 40) -> float:
    """Share of water in the disc of `radius` metres around (x, y), sampled
    on a (2 samples + 1)^2 grid of the disc."""
    mask, gt = mask_gt
    g = np.linspace(-1.0, 1.0, 2 * samples + 1)
    gx, gy = np.meshgrid(g, g)
    inside = gx ** 2 + gy ** 2 <= 1.0
    c = np.clip(((x + gx[inside] * radius - gt[0]) / gt[1]).astype(int), 0, mask.shape[1] - 1)
    r = np.clip(((y + gy[inside] * radius - gt[3]) / gt[5]).astype(int), 0, mask.shape[0] - 1)
    return float(mask[r, c].mean())


def water_breakdown(naip_dir, labels_csv, results_csv, old_years=(2009, 2010)) -> list:
    """Rows (bin low, bin high, old, queries, successes within 100 m): the
    results of `geoloc eval --csv` by the share of water in each query's own
    year within the disc inscribed in its nadir footprint (scale * TILE_M a
    side), the queries of old_years apart from the others."""
    paths = {int(naip_date(p)[:4]): p for p in sorted(glob.glob(os.path.join(naip_dir, "*.tif")))}
    masks, ref = {}, Raster.open(paths[REFERENCE_YEAR])
    share = {}
    with open(labels_csv, newline="") as f:
        for row in csv.DictReader(f):
            year = int(row["date"][:4])
            if year not in masks:
                masks[year] = water_mask(paths[year])
            x, y = ref.from_lonlat(float(row["lon"]), float(row["lat"]))
            share[row["file"]] = (year in old_years,
                                  water_share(masks[year], x, y, float(row["scale"]) * TILE_M / 2))
    edges = list(WATER_BINS) + [1.0 + 1e-9]
    counts = {}
    with open(results_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["file"] not in share:
                raise ValueError(f"{results_csv}: {row['file']} is not in {labels_csv}")
            old, s = share[row["file"]]
            k = (int(np.searchsorted(edges, s, side="right")) - 1, old)
            ok = row["error_m"] != "" and float(row["error_m"]) <= 100.0
            n, hits = counts.get(k, (0, 0))
            counts[k] = (n + 1, hits + ok)
    return [(edges[b], min(edges[b + 1], 1.0), old, *counts.get((b, old), (0, 0)))
            for b in range(len(WATER_BINS)) for old in (True, False)]


CHANGE_PARTS = ("head training", "validation band", "north band", "evaluation")


def water_change(naip_dir, ref_year: int = REFERENCE_YEAR, step_m: float = 10.0) -> dict:
    """year -> {part: (share of water, share of ground whose water state
    differs from ref_year's)} over the parts of naip-xtime's ground: the
    dense head's training ground (west, north of the validation band), the
    validation band (west, south of VAL_NORTHING), the band train-dense
    holds out with --val-band north (west, at or north of
    VAL_NORTH_NORTHING) and the evaluation half
    (east of X_SPLIT). Each year's water mask (water_mask) is read at the
    same points, every step_m metres over the reference raster, by their
    coordinates (the rasters' grids differ by a pixel or so)."""
    paths = {int(naip_date(p)[:4]): p for p in sorted(glob.glob(os.path.join(naip_dir, "*.tif")))}
    if ref_year not in paths:
        raise ValueError(f"no NAIP raster of {ref_year} in {naip_dir}")
    masks = {y: water_mask(p) for y, p in paths.items()}
    ext = np.array([Raster.open(p).extent() for p in paths.values()])
    x0, y0, x1, y1 = ext[:, 0].max(), ext[:, 1].max(), ext[:, 2].min(), ext[:, 3].min()
    xs, ys = np.meshgrid(np.arange(x0 + step_m / 2, x1, step_m),
                         np.arange(y0 + step_m / 2, y1, step_m))
    west = xs <= X_SPLIT - BUFFER_M

    def band(part, held_out):
        lo, hi = dense_northings(part, held_out)
        return west & (ys >= lo) & (ys < hi)
    parts = {CHANGE_PARTS[0]: band("train", "south"), CHANGE_PARTS[1]: band("val", "south"),
             CHANGE_PARTS[2]: band("val", "north"), CHANGE_PARTS[3]: xs >= X_SPLIT}

    def read(year):
        mask, gt = masks[year]
        c = np.clip(((xs - gt[0]) / gt[1]).astype(int), 0, mask.shape[1] - 1)
        r = np.clip(((ys - gt[3]) / gt[5]).astype(int), 0, mask.shape[0] - 1)
        return mask[r, c]

    ref = read(ref_year)
    out = {}
    for year in sorted(masks):
        w = read(year)
        out[year] = {k: (float(w[m].mean()), float((w != ref)[m].mean())) for k, m in parts.items()}
    return out
