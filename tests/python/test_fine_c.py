"""The C fine stage against the Python reference (geoloc_train.fine) and on
real imagery: query cells and the north-up warp (`geoloc encode --dense
--heading`), dense cells of a canvas (`geoloc encode --dense`), the dense
layer of a pack on the map's grid (a shifted raster gives a shifted layer),
the scores and placement `geoloc locate` finds against the reference's,
views turned and shifted by known amounts recovered within a cell and a
heading step, packs without a dense layer, and multi-year packs.

Needs the geoloc binary ($GEOLOC_BIN), GDAL's Python bindings and Pillow."""

import csv
import io
import json
import os
import subprocess
import tempfile
import unittest

import numpy as np

from _common import REPO
from geoloc_train import fine
from geoloc_train import model as M

try:
    from geoloc_train import views as V
    from osgeo import gdal
    from PIL import Image
except ImportError:  # no GDAL (python3-gdal) or Pillow (python3-pil)
    V = None

GEOLOC = os.environ.get("GEOLOC_BIN") or os.path.join(REPO, "build", "tools", "geoloc")
MODEL = os.path.join(REPO, "data", "models", "geoloc-naip-mnv2-64.safetensors")
NAIP = os.path.join(REPO, "data", "naip")
R2020 = os.path.join(NAIP, "m_4709963_se_14_1_20200831.tif")
R2019 = os.path.join(NAIP, "m_4709963_se_14_1_20190904.tif")
# A 1.3 km x 1.3 km block of the raster (EPSG:26914) and a point in it that
# lies on no 80 m grid line (57 m east and 23 m south of a tile centre).
BOX = (486400.0, 5206200.0, 487700.0, 5207500.0)
PX, PY = 486960.0 + 57.0, 5206840.0 - 23.0


def geoloc(*args):
    p = subprocess.run([GEOLOC, *args], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise AssertionError(f"geoloc {' '.join(args)} exited {p.returncode}:\n{p.stderr}")
    return p.stdout


def cosines(a, b):
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1),
                                        1e-12)


def view(raster, x, y, heading, size=128):
    p = V.ViewParams(x, y, heading, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0)
    img, ok = V.render_view(raster, p, size, photometric=False)
    assert ok
    return img


@unittest.skipIf(V is None, "GDAL's Python bindings or Pillow not installed")
class FineC(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(GEOLOC, os.X_OK):
            raise unittest.SkipTest(f"{GEOLOC} is missing (set GEOLOC_BIN)")
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = M.load_model(MODEL)
        cls.channels = fine.cell_channels(cls.model, 6)
        cls.stride = fine.cell_stride(cls.model, 6)
        cls.r = V.Raster.open(R2020)
        cls.bbox = cls.lonlat_box(BOX)
        cls.pack = cls.build("one.map", R2020)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def lonlat_box(cls, box):
        lon, lat = cls.r.to_lonlat(np.array([box[0], box[2]]), np.array([box[1], box[3]]))
        return f"{lon[0]:.7f},{lat[0]:.7f},{lon[1]:.7f},{lat[1]:.7f}"

    @classmethod
    def build(cls, name, *orthos, extra=(), model=MODEL):
        out = os.path.join(cls.tmp.name, name)
        args = ["map", "build", "--model", model, "--bbox", cls.bbox, "--out", out, *extra]
        for o in orthos:
            args += ["--ortho", o]
        geoloc(*args)
        return out

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def save(self, name, img):
        Image.fromarray(img).save(self.path(name))
        return self.path(name)

    @staticmethod
    def dense(pack, layer=0):
        with open(os.path.join(pack, "manifest.json")) as f:
            d = json.load(f)["dense"]
        q = np.fromfile(os.path.join(pack, d["layers"][layer]["file"]), np.int8)
        return d, q.reshape(d["rows"], d["cols"], d["channels"]).astype(np.float32) / 127

    def locate(self, pack, image, *extra, model=MODEL):
        out = geoloc("locate", "--model", model, "--map", pack, "--format", "csv", "--top-k", "1",
                     *extra, image)
        return next(csv.DictReader(io.StringIO(out)))

    def to_xy(self, row):
        srs = gdal.osr.SpatialReference()
        srs.ImportFromWkt(self.r.wkt)
        wgs = gdal.osr.SpatialReference()
        wgs.ImportFromEPSG(4326)
        wgs.SetAxisMappingStrategy(gdal.osr.OAMS_TRADITIONAL_GIS_ORDER)
        srs.SetAxisMappingStrategy(gdal.osr.OAMS_TRADITIONAL_GIS_ORDER)
        ct = gdal.osr.CoordinateTransformation(wgs, srs)
        x, y, _ = ct.TransformPoint(float(row["lon"]), float(row["lat"]))
        return x, y

    # --- parity with the reference ---------------------------------------------

    def test_query_cells_match_the_reference(self):
        """The warp (plain and antialiased) and the query features."""
        for size in (64, 128):
            img = self.save(f"q{size}.png", view(self.r, PX, PY, 37.0, size))
            out = self.path("c.f32")
            shape = geoloc("encode", "--model", MODEL, "--dense", "6", "--heading", "0,37,250",
                           "--out", out, img).split()
            # The shipped model's cells: 8 x 8 of 40 m.
            self.assertEqual(shape, ["3", "8", "8", str(self.channels)])
            c = np.fromfile(out, np.float32).reshape(3, 8, 8, self.channels)
            rgb = np.asarray(Image.open(img).convert("RGB"))
            p = fine.query_features(self.model, rgb, [0, 37, 250], 6)
            self.assertGreater(cosines(c, p).min(), 0.9999, size)

    def check_head(self, name, head, seed, canvas_box, canvas_cells, channels=64):
        """A random model with this dense head config: the C feature engine
        computes query cells (two headings) and a canvas's cells (the
        raster's rows and columns canvas_box = (y, x, h, w)) as the
        reference does. Returns (model path, loaded model)."""
        from _common import run_cli
        layer = head["layer"]
        cfg = self.path(f"{name}.json")
        with open(cfg, "w") as f:
            json.dump({"input_size": [64, 64], "dense_head": head}, f)
        model_path = self.path(f"{name}.safetensors")
        run_cli("export-random", "--config", cfg, "--seed", str(seed), "--out", model_path)
        model = M.load_model(model_path)
        img = self.save(f"{name}.png", view(self.r, PX, PY, 111.0))
        out = self.path(f"{name}.f32")
        shape = geoloc("encode", "--model", model_path, "--dense", str(layer), "--heading",
                       "0,111", "--out", out, img).split()
        self.assertEqual(shape, ["2", "8", "8", str(channels)])
        c = np.fromfile(out, np.float32).reshape(2, 8, 8, channels)
        p = fine.query_features(model, np.asarray(Image.open(img).convert("RGB")), [0, 111],
                                layer)
        self.assertGreater(cosines(c, p).min(), 0.9999)
        y, x, h, w = canvas_box
        canvas = self.save(f"{name}c.png", self.r.rgb[y:y + h, x:x + w])
        self.assertEqual(geoloc("encode", "--model", model_path, "--dense", str(layer), "--out",
                                out, canvas).split(), [*map(str, canvas_cells), str(channels)])
        c = np.fromfile(out, np.float32).reshape(*canvas_cells, channels)
        p = fine.dense_features(model, np.asarray(Image.open(canvas).convert("RGB")), layer)
        self.assertGreater(cosines(c, p).min(), 0.9999)
        return model_path, model

    def check_pack(self, name, model_path, want):
        """A pack of the 2020 raster built with model_path: its dense layer's
        (layer, input_px, stride_px, cell_m, m_per_px, margin_px, channels)
        are want. Returns the pack."""
        pack = self.build(name, R2020, model=model_path)
        meta, d = self.dense(pack)
        self.assertEqual((meta["layer"], meta["input_px"], meta["stride_px"], meta["cell_m"],
                          meta["m_per_px"], meta["margin_px"], d.shape[2]), want)
        return pack

    def test_dense_head_matches_the_reference(self):
        """A model with a dense head (random, non-trivial weights): the C
        feature engine computes the head as the reference does, for query
        cells and canvas cells alike."""
        self.check_head("head", {"layer": 6, "dim": 64, "hidden": 56}, 5, (40, 16, 136, 200),
                        (17, 25))

    def test_head_on_a_deeper_block_at_its_own_size(self):
        """A head on block 10 (stride 16) whose config gives the fine stage
        an input of 128 pixels (dense_head.size): cells of 40 m again, from
        a deeper block. Query cells at 128 pixels, a canvas wider than one
        tiled block (512 pixels, 112 of margin), and a pack built with it
        (its dense layer at 2.5 m a pixel, scored as the reference scores
        it), all against the reference."""
        model_path, model = self.check_head(
            "head10", {"layer": 10, "dim": 64, "hidden": 24, "size": 128}, 6,
            (40, 16, 528, 592), (33, 37))
        self.assertEqual((fine.model_size(model, 10), fine.layer_margin(10)), (128, 112))
        # The pack: block 10 by default (the head's), read at 128 px a tile.
        pack = self.check_pack("head10.map", model_path, (10, 128, 16, 40, 2.5, 112, 64))
        self.check_scores("h10s.png", 37, [17, 27, 37, 47, 57], 0.0,
                          model=(model_path, model), pack=pack, layer=10)

    def test_fused_block_matches_the_reference(self):
        """A head on block 6 fusing block 10's raw cells (dense_head.fuse_layer,
        fuse_weight): query cells of a 128-pixel input, a canvas wider than
        one tiled block of either block, and a pack built with it (its cells
        joined at 2.5 m a pixel, scored as the reference scores them), all
        against the reference."""
        head = {"layer": 6, "dim": 64, "hidden": 24, "fuse_layer": 10, "fuse_weight": 0.4}
        model_path, model = self.check_head("fused", head, 7, (40, 16, 528, 592), (33, 37),
                                            channels=128)
        pack = self.check_pack("fused.map", model_path, (6, 128, 16, 40, 2.5, 128, 128))
        self.check_scores("fuseds.png", 37, [17, 27, 37, 47, 57], 0.0,
                          model=(model_path, model), pack=pack)
        self.check_scores("fusedu.png", None, list(range(0, 360, 10)), 0.5,
                          model=(model_path, model), pack=pack)

    def test_dense_cells_match_the_reference(self):
        canvas = self.save("canvas.png", self.r.rgb[40:40 + 576, 16:16 + 528])
        out = self.path("d.f32")
        rows, cols = 576 // self.stride, 528 // self.stride
        self.assertEqual(geoloc("encode", "--model", MODEL, "--dense", "6", "--out", out,
                                canvas).split(), [str(rows), str(cols), str(self.channels)])
        c = np.fromfile(out, np.float32).reshape(rows, cols, self.channels)
        p = fine.dense_features(self.model, np.asarray(Image.open(canvas).convert("RGB")), 6)
        self.assertGreater(cosines(c, p).min(), 0.9999)

    def test_dense_layer_on_the_grid(self):
        """A raster moved 40 m (one cell) east gives the same cells one
        column further east: the layer is tied to the map's grid, not to the
        raster's pixels."""
        moved = self.path("moved.tif")
        gt = list(self.r.gt)
        gt[0] += 40.0
        ds = gdal.Translate(moved, R2020, options=gdal.TranslateOptions(
            outputBounds=[gt[0], gt[3], gt[0] + self.r.rgb.shape[1] * 5, gt[3] -
                          self.r.rgb.shape[0] * 5]))
        ds = None
        a_meta, a = self.dense(self.pack)
        b_meta, b = self.dense(self.build("moved.map", moved))
        self.assertEqual(a_meta["cell_m"], 40)
        # Cell (r, q) of a covers x0a + 40 q; b's cell at the same ground + 40 m.
        dq = round((a_meta["geotransform"][0] + 40 - b_meta["geotransform"][0]) / 40)
        dr = round((b_meta["geotransform"][3] - a_meta["geotransform"][3]) / 40)
        rows = min(a.shape[0], b.shape[0] - dr) - 16
        cols = min(a.shape[1], b.shape[1] - dq) - 16
        cos = cosines(a[8:8 + rows, 8:8 + cols], b[8 + dr:8 + dr + rows, 8 + dq:8 + dq + cols])
        self.assertGreater(np.median(cos), 0.999)
        self.assertGreater(cos.min(), 0.99)
        # Without the move the same comparison does not hold.
        self.assertLess(np.median(cosines(a[8:8 + rows, 8:8 + cols],
                                          b[8 + dr:8 + dr + rows, 7 + dq:7 + dq + cols])), 0.9)

    def check_scores(self, name, heading, headings, centring, model=None, pack=None, layer=6):
        """The best score and placement of a full scan of the pack (at a
        compass heading, or None: every heading) against the reference's
        scores over the pack's own cells at `headings`, each placement's
        scores lowered by `centring` times their mean over headings.
        model: (path, loaded model), default the shipped one and its pack."""
        path, model = model or (MODEL, self.model)
        pack = pack or self.pack
        img = self.save(name, view(self.r, PX, PY, 37.0))
        args = ("--heading", str(heading)) if heading is not None else ()
        row = self.locate(pack, img, *args, "--fine-full-scan", "100000", model=path)
        meta, d = self.dense(pack)
        q = fine.query_features(model, np.asarray(Image.open(img).convert("RGB")), headings, layer)
        size, stride = fine.model_size(model, layer), fine.cell_stride(model, layer)
        s = fine.scores(q, d, fine.disc_mask(size // stride, stride, size))
        s = s - centring * s.mean(axis=0, keepdims=True)
        h, r, c = np.unravel_index(np.argmax(s), s.shape)
        self.assertAlmostEqual(float(row["score"]), float(s.max()), places=4)
        x, y = self.to_xy(row)
        gt = meta["geotransform"]
        px, py = gt[0] + (c + 4) * 40, gt[3] - (r + 4) * 40
        self.assertLessEqual(max(abs(x - px), abs(y - py)), 20.0 + 1e-6)
        return row, headings[h]

    def test_scores_match_the_reference(self):
        """A compass heading: 5 headings, no centring. A scan of the whole
        pack at this few headings correlates every query cell with every
        cell in reach (fine.h step 4)."""
        _, best = self.check_scores("s.png", 37, [17, 27, 37, 47, 57], 0.0)
        self.assertEqual(best, 37)

    def test_scores_match_the_reference_at_every_heading(self):
        """No heading: 36 headings, each placement's scores lowered by half
        their mean over headings. With this many headings the stage gathers
        each placement's cells: both ways of scoring are held to the
        reference."""
        row, best = self.check_scores("u.png", None, list(range(0, 360, 10)), 0.5)
        self.assertLess(abs((float(row["heading_deg"]) - best + 180) % 360 - 180), 10.0)

    # --- recovering known views ---------------------------------------------------

    def check_found(self, row, x, y, heading):
        ex, ey = self.to_xy(row)
        self.assertLess(np.hypot(ex - x, ey - y), 40.0, row)
        err = abs((float(row["heading_deg"]) - heading + 180) % 360 - 180)
        self.assertLess(err, 10.0, row)

    def test_turned_and_shifted_views_are_found(self):
        for x, y, h in ((PX, PY, 37.0), (PX - 131.0, PY + 88.0, 248.0), (PX + 210, PY - 70, 121.0)):
            img = self.save("t.png", view(self.r, x, y, h))
            self.check_found(self.locate(self.pack, img), x, y, h)
            self.check_found(self.locate(self.pack, img, "--heading", f"{h + 6:.1f}"), x, y, h)

    def test_pack_without_dense_layer(self):
        pack = self.build("plain.map", R2020, extra=("--dense-layer", "0"))
        with open(os.path.join(pack, "manifest.json")) as f:
            self.assertNotIn("dense", json.load(f))
        img = self.save("p.png", view(self.r, PX, PY, 0.0))
        row = self.locate(pack, img)
        self.assertEqual(row["status"], "OK")
        self.assertEqual(row["heading_deg"], "")  # the global stage estimates no heading

    def test_multi_year_pack(self):
        pack = self.build("years.map", R2020, R2019)
        with open(os.path.join(pack, "manifest.json")) as f:
            m = json.load(f)
        self.assertEqual(m["tiling"]["years"], 2)
        self.assertEqual([l["source"] for l in m["dense"]["layers"]], [0, 1])
        _, a = self.dense(pack, 0)
        _, b = self.dense(pack, 1)
        self.assertEqual(a.shape, b.shape)
        self.assertLess(np.median(cosines(a, b)), 0.999)  # two years, two layers
        r19 = V.Raster.open(R2019)
        img = self.save("y.png", view(r19, PX, PY, 300.0))
        one = self.locate(self.pack, img, "--heading", "300")
        both = self.locate(pack, img, "--heading", "300")
        self.check_found(both, PX, PY, 300.0)
        # Scored by its best year: the 2019 view matches the 2019 layer best.
        self.assertGreater(float(both["score"]), float(one["score"]))


if __name__ == "__main__":
    unittest.main()
