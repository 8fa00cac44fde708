"""Map tiles and simulated drone views cut from a georeferenced raster.

Everything is placed by coordinates in the raster's metric CRS, never by
pixel index, so rasters of different years whose origins differ by a metre
give tiles and views of the same ground.

- Tiles mirror the map builder (src/map/grid.c, src/map/build.c): lower-left
  corners on multiples of the stride, side tile_m, wholly inside the raster,
  cut row by row from the north, each row west to east (tile id = index + 1
  for a single-raster map), resampled north-up to the model input.
- Views simulate a drone camera: a pinhole camera looking down, pitched
  forward by a tilt and turned to a heading, whose centre ray hits the
  labelled ground point; then photometric changes (brightness, contrast,
  hue, saturation, blur, noise).

Only numpy, GDAL's Python bindings and PIL (no torch), so tools that just
cut images stay light.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from osgeo import gdal, osr

gdal.UseExceptions()
osr.UseExceptions()

TILE_M = 320.0
STRIDE_M = 80.0
# Horizontal (= vertical: images are square) field of view of the simulated
# camera.  The camera distance is chosen from it so that a nadir view covers
# scale * tile_m; a tilted view keeps that distance along its centre ray.
FOV_DEG = 60.0
_TAN_HALF_FOV = math.tan(math.radians(FOV_DEG / 2))
_NAIP_DATE = re.compile(r"_(\d{4})(\d{2})(\d{2})[_.]")


def naip_date(path: str) -> str:
    """"YYYY-MM-DD" from a NAIP file name, m_<quad>_<quarter>_<zone>_<res>_
    YYYYMMDD.tif (older names add a processing date after the capture
    date), or "" for another name."""
    base = os.path.basename(path)
    m = _NAIP_DATE.search(base) if base.startswith("m_") else None
    return "-".join(m.groups()) if m else ""


def _date_of(path: str, ds) -> str:
    """The NAIP capture date, else the TIFF DateTime, else ""."""
    if naip_date(path):
        return naip_date(path)
    dt = ds.GetMetadataItem("TIFFTAG_DATETIME") or ""
    m = re.match(r"(\d{4}):(\d{2}):(\d{2})", dt)
    return "-".join(m.groups()) if m else ""


class Raster:
    """An RGB raster in memory with its north-up geotransform and CRS.

    Plain arrays and strings only, so it pickles (e.g. to data loader
    workers); coordinate transformations are created on first use."""

    def __init__(self, path: str, date: str, rgb: np.ndarray, gt: tuple, wkt: str,
                 nodata: np.ndarray | None = None):
        if not (gt[2] == 0 and gt[4] == 0 and gt[1] > 0 and gt[5] < 0):
            raise ValueError(f"{path}: the geotransform {gt} is not north-up")
        self.path, self.date, self.rgb, self.gt, self.wkt = path, date, rgb, tuple(gt), wkt
        # (H, W) bool, true where the first band's mask says nodata; None
        # when every pixel is valid.
        self.nodata = nodata
        self._ct = None

    @classmethod
    def open(cls, path) -> "Raster":
        path = os.fspath(path)
        try:
            ds = gdal.Open(path)
        except RuntimeError as e:
            raise ValueError(f"{path}: not a raster GDAL can read: {e}") from None
        if ds.RasterCount < 3:
            raise ValueError(f"{path}: {ds.RasterCount} band(s); the first three must be R, G, B")
        for b in (1, 2, 3):
            t = ds.GetRasterBand(b).DataType
            if t != gdal.GDT_Byte:
                raise ValueError(f"{path}: band {b} is {gdal.GetDataTypeName(t)}; "
                                 "only 8-bit (Byte) RGB is supported")
        srs = ds.GetSpatialRef()
        gt = ds.GetGeoTransform(can_return_null=True)
        if srs is None or gt is None:
            raise ValueError(f"{path}: not georeferenced (no geotransform or CRS)")
        if not srs.IsProjected() or abs(srs.GetLinearUnits() - 1.0) > 1e-12:
            raise ValueError(f"{path}: the CRS is not projected in metres "
                             "(reproject it, e.g. gdalwarp -t_srs EPSG:326NN)")
        rgb = np.ascontiguousarray(ds.ReadAsArray(band_list=[1, 2, 3]).transpose(1, 2, 0))
        band = ds.GetRasterBand(1)
        nodata = None
        if not band.GetMaskFlags() & gdal.GMF_ALL_VALID:
            m = band.GetMaskBand().ReadAsArray() == 0
            nodata = m if m.any() else None
        return cls(path, _date_of(path, ds), rgb, gt, srs.ExportToWkt(), nodata)

    def __getstate__(self):
        s = dict(self.__dict__)
        s["_ct"] = None
        return s

    def extent(self) -> tuple:
        """(xmin, ymin, xmax, ymax) in CRS metres."""
        h, w = self.rgb.shape[:2]
        g = self.gt
        return (g[0], g[3] + h * g[5], g[0] + w * g[1], g[3])

    def sample(self, x, y) -> tuple:
        """Bilinear samples at CRS coordinates x, y (arrays of one shape S):
        float32 (S..., 3) and bool (S...) valid, true where all four
        neighbouring pixel centres lie inside the raster (and hold data)."""
        h, w = self.rgb.shape[:2]
        g = self.gt
        u = (np.asarray(x, np.float64) - g[0]) / g[1] - 0.5
        v = (np.asarray(y, np.float64) - g[3]) / g[5] - 0.5
        i0, j0 = np.floor(u), np.floor(v)
        valid = (i0 >= 0) & (i0 < w - 1) & (j0 >= 0) & (j0 < h - 1)
        i0 = np.clip(i0, 0, w - 2).astype(np.intp)
        j0 = np.clip(j0, 0, h - 2).astype(np.intp)
        fu = np.clip(u - i0, 0, 1).astype(np.float32)[..., None]
        fv = np.clip(v - j0, 0, 1).astype(np.float32)[..., None]
        idx = j0 * w + i0
        flat = self.rgb.reshape(-1, 3)
        p00, p01 = np.take(flat, idx, 0), np.take(flat, idx + 1, 0)
        p10, p11 = np.take(flat, idx + w, 0), np.take(flat, idx + w + 1, 0)
        top = p00 + fu * (p01.astype(np.float32) - p00)
        bot = p10 + fu * (p11.astype(np.float32) - p10)
        if self.nodata is not None:
            nd = self.nodata.reshape(-1)
            valid &= ~(nd[idx] | nd[idx + 1] | nd[idx + w] | nd[idx + w + 1])
        return top + fv * (bot - top), valid

    def _transforms(self):
        if self._ct is None:
            src, wgs = osr.SpatialReference(), osr.SpatialReference()
            src.ImportFromWkt(self.wkt)
            wgs.ImportFromEPSG(4326)
            for s in (src, wgs):
                s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            self._ct = (osr.CoordinateTransformation(src, wgs),
                        osr.CoordinateTransformation(wgs, src))
        return self._ct

    @staticmethod
    def _apply(ct, a, b):
        a0, b0 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        pts = np.column_stack([a0.ravel(), b0.ravel()])
        out = np.array(ct.TransformPoints(pts), np.float64).reshape(-1, 3) if len(pts) else \
            np.zeros((0, 3))
        ra, rb = out[:, 0].reshape(a0.shape), out[:, 1].reshape(a0.shape)
        return (float(ra), float(rb)) if a0.ndim == 0 else (ra, rb)

    def to_lonlat(self, x, y) -> tuple:
        """CRS coordinates -> WGS84 (lon, lat) degrees; scalars or arrays."""
        return self._apply(self._transforms()[0], x, y)

    def from_lonlat(self, lon, lat) -> tuple:
        """WGS84 (lon, lat) degrees -> CRS (x, y); scalars or arrays."""
        return self._apply(self._transforms()[1], lon, lat)


# --- map tiles --------------------------------------------------------------------


def grid_corners(extent, tile_m=TILE_M, stride_m=STRIDE_M) -> np.ndarray:
    """(N, 2) lower-left corners of the tiles the map builder cuts from a
    raster with this extent, in its order: rows from the north down, each
    row west to east."""
    xmin, ymin, xmax, ymax = extent
    eps = 1e-9
    c0, c1 = math.ceil(xmin / stride_m - eps), math.floor((xmax - tile_m) / stride_m + eps)
    r0, r1 = math.ceil(ymin / stride_m - eps), math.floor((ymax - tile_m) / stride_m + eps)
    cols = np.arange(c0, c1 + 1, dtype=np.float64) * stride_m
    rows = np.arange(r1, r0 - 1, -1, dtype=np.float64) * stride_m
    if not len(cols) or not len(rows):
        return np.zeros((0, 2))
    xx, yy = np.meshgrid(cols, rows)
    return np.column_stack([xx.ravel(), yy.ravel()])


def tile_corners(x0, y0, tile_m=TILE_M) -> np.ndarray:
    """(4, 2) corners of the tile with lower-left corner (x0, y0)."""
    return np.array([[x0, y0], [x0 + tile_m, y0], [x0 + tile_m, y0 + tile_m],
                     [x0, y0 + tile_m]], np.float64)


def _resample_weights(off, length, n, limit):
    """Rows of weights (n, hi - lo) over source pixels lo..hi-1 for n output
    pixels spanning source pixel coordinates off..off+length: a triangle
    kernel on pixel centres, widened by the ratio when downsampling,
    renormalised where the raster edge cuts it."""
    ratio = length / n
    width = max(ratio, 1.0)
    centres = off + (np.arange(n) + 0.5) * ratio
    lo = max(int(math.floor(off - width)), 0)
    hi = min(int(math.ceil(off + length + width)), limit)
    src = np.arange(lo, hi) + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(src[None, :] - centres[:, None]) / width)
    return lo, hi, w / w.sum(axis=1, keepdims=True)


def render_tile(raster, x0, y0, size, tile_m=TILE_M) -> np.ndarray:
    """(size, size, 3) uint8 north-up tile with lower-left corner (x0, y0):
    output pixel centres at x0 + (i + 0.5) * tile_m / size (and from the top
    for rows), bilinear on source pixel centres, the kernel renormalised
    where the raster edge cuts it.  This is what the map builder's GDAL
    RasterIO bilinear read of a north-up GeoTIFF gives (to within one level
    where a value falls on .5) when the tile spans no more source pixels
    than output pixels, as 320 m tiles of 5 m imagery do for inputs of 64
    px and more.  With more source pixels this widens the kernel to average
    them, which GDAL's reads of GeoTIFFs do not."""
    g = raster.gt
    h, w = raster.rgb.shape[:2]
    px, py = (x0 - g[0]) / g[1], (y0 + tile_m - g[3]) / g[5]
    xa, xb, wx = _resample_weights(px, tile_m / g[1], size, w)
    ya, yb, wy = _resample_weights(py, tile_m / -g[5], size, h)
    if xb <= xa or yb <= ya:
        raise ValueError(f"tile at {x0:.3f},{y0:.3f} is outside {raster.path}")
    sub = raster.rgb[ya:yb, xa:xb].astype(np.float64)
    out = np.tensordot(wy, sub, axes=(1, 0))                  # (size, xb - xa, 3)
    out = np.tensordot(out, wx, axes=(1, 1)).transpose(0, 2, 1)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


# --- drone views ------------------------------------------------------------------


@dataclass
class ViewParams:
    cx: float                 # CRS coordinates of the ground point at the image centre
    cy: float
    heading_deg: float        # direction of the image's top edge, clockwise from north
    scale: float              # nadir footprint side = scale * tile_m
    tilt_deg: float           # pitch off nadir; the top of the image looks further away
    brightness: float         # gain, 1 = unchanged
    contrast: float           # about the mean luminance, 1 = unchanged
    hue_deg: float            # hue rotation, 0 = unchanged
    saturation: float         # 1 = unchanged
    blur_sigma: float         # Gaussian blur, output pixels (0 = none)
    noise_sigma: float        # Gaussian noise, 0..255 levels (0 = none)
    noise_seed: int = 0       # seeds the noise, so a render is reproducible


def random_view(rng: np.random.Generator, cx, cy) -> ViewParams:
    """A random view of (cx, cy): heading U(0, 360), scale U(0.8, 1.25),
    tilt U(0, 30) degrees, moderate photometric changes."""
    return ViewParams(
        cx=float(cx), cy=float(cy),
        heading_deg=float(rng.uniform(0, 360)),
        scale=float(rng.uniform(0.8, 1.25)),
        tilt_deg=float(rng.uniform(0, 30)),
        brightness=float(rng.uniform(0.8, 1.2)),
        contrast=float(rng.uniform(0.8, 1.2)),
        hue_deg=float(rng.uniform(-10, 10)),
        saturation=float(rng.uniform(0.7, 1.3)),
        blur_sigma=float(rng.uniform(0, 1.0)),
        noise_sigma=float(rng.uniform(0, 4.0)),
        noise_seed=int(rng.integers(2**31)))


def _ground(p: ViewParams, a, b, tile_m):
    """Ground (x, y) hit by the rays through image points (a, b): a to the
    right, b down, as tangents of the angle off the optical axis (+-tan of
    half the field of view at the image edges, 0 at the centre)."""
    dist = p.scale * tile_m / 2 / _TAN_HALF_FOV  # camera to centre point
    th, t = math.radians(p.heading_deg), math.radians(p.tilt_deg)
    ue, un = math.sin(th), math.cos(th)           # ground direction of the image's top
    ct, st = math.cos(t), math.sin(t)
    # Camera axes in (east, north, up): x = image right, y = image down,
    # z = optical axis; the camera sits at -dist * z from the centre point.
    x_ax = (un, -ue, 0.0)
    y_ax = (-ct * ue, -ct * un, -st)
    z_ax = (st * ue, st * un, -ct)
    de = z_ax[0] + a * x_ax[0] + b * y_ax[0]
    dn = z_ax[1] + a * x_ax[1] + b * y_ax[1]
    du = z_ax[2] + b * y_ax[2]
    s = dist * ct / -du                             # ray length to the ground
    return p.cx - dist * z_ax[0] + s * de, p.cy - dist * z_ax[1] + s * dn


def footprint(p: ViewParams, tile_m=TILE_M) -> np.ndarray:
    """(4, 2) ground corners (CRS metres) of the image's top-left, top-right,
    bottom-right and bottom-left corners."""
    k = _TAN_HALF_FOV
    a = np.array([-k, k, k, -k])
    b = np.array([-k, -k, k, k])
    return np.column_stack(_ground(p, a, b, tile_m))


@lru_cache(maxsize=16)
def _pixel_coords(size):
    c = ((np.arange(size) + 0.5) / size * 2 - 1) * _TAN_HALF_FOV
    return c[None, :], c[:, None]


def ground_coords(p: ViewParams, size, tile_m=TILE_M) -> tuple:
    """CRS (x, y), each (size, size), of the ground at every output pixel
    centre of a size x size view."""
    a, b = _pixel_coords(size)
    return _ground(p, a, b, tile_m)


_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def _blur(img, sigma):
    """Separable Gaussian blur of an (H, W, 3) float32 image, edges repeated."""
    r = max(1, math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    h, w = img.shape[:2]
    src = np.pad(img, ((r, r), (r, r), (0, 0)), mode="edge")
    rows = src[:h] * k[0]
    for i in range(1, len(k)):
        rows += src[i:i + h] * k[i]
    out = rows[:, :w] * k[0]
    for i in range(1, len(k)):
        out += rows[:, i:i + w] * k[i]
    return out


def apply_photometric(img: np.ndarray, p: ViewParams) -> np.ndarray:
    """The photometric changes of p applied to a float32 (H, W, 3) image in
    0..255: colour (hue rotation and saturation in YIQ, brightness gain),
    contrast about the mean luminance, blur, noise; uint8 result."""
    h = math.radians(p.hue_deg)
    rot = np.array([[1, 0, 0],
                    [0, math.cos(h), -math.sin(h)],
                    [0, math.sin(h), math.cos(h)]])
    rot[1:, 1:] *= p.saturation
    m = p.brightness * (_YIQ_TO_RGB @ rot @ _RGB_TO_YIQ)
    out = img @ m.T.astype(np.float32)
    grey = float((out @ _RGB_TO_YIQ[0].astype(np.float32)).mean())
    out = out * np.float32(p.contrast) + np.float32((1 - p.contrast) * grey)
    if p.blur_sigma > 0.2:
        out = _blur(out, p.blur_sigma)
    if p.noise_sigma > 0:
        rng = np.random.default_rng(p.noise_seed)
        out += np.float32(p.noise_sigma) * rng.standard_normal(out.shape, np.float32)
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def render_view(raster, p: ViewParams, size, tile_m=TILE_M, photometric=True) -> tuple:
    """(uint8 (size, size, 3) view, valid): valid is true when every pixel
    was sampled inside the raster."""
    x, y = ground_coords(p, size, tile_m)
    img, ok = raster.sample(x, y)
    out = apply_photometric(img, p) if photometric else \
        np.rint(np.clip(img, 0, 255)).astype(np.uint8)
    return out, bool(ok.all())
