"""Command line: PYTHONPATH=python /usr/bin/python3 -m geoloc_train <command> ...

  export-random [--config C.json] --seed S --out M.safetensors
  encode --model M.safetensors IMAGE...        one JSON array per image, one per line
  import-tflite --tflite F.tflite --out M.safetensors
  classify --model M.safetensors [--labels L] IMAGE
  testvectors --out DIR [--seed S] [--configs a,b] [--sizes 224x224,1280x720]
  to-fp16 --model IN.safetensors --out OUT.safetensors   half-precision copy
  make-eval-set --naip DIR --out DIR [--count N] [--seed S] [--size PX] [--region east|west]
  make-flight --naip DIR --out DIR [--year Y] [--frames N] [--seed S] [--size PX]
  make-flights --naip DIR --out DIR [--region east|west] [--flights N] [--frames N] [--seed S]
        [--size PX] [--years 2009,2012] [--no-events] [--val-band north]
                                        flights for testing a tracker
  xtime-bbox --naip DIR [--region east|west]   a naip-xtime map's --bbox WEST,SOUTH,EAST,NORTH
  warp --image IN --heading H --size S --out OUT.png      fine stage step 1 (fine.py)
  dense --model M --image CANVAS --out OUT.f32 [--layer L] [--block B] [--margin P]
                                        dense features, raw float32 rows x cols x C
  query-features --model M --image IN --headings 0,10,20 --out OUT.f32 [--layer L]
                                        raw float32 [headings, n, n, C]
  train --naip DIR --out RUN [--steps N] [--batch B] [--seed S] [--loss L] [--near N]
        [--ref-rotations R] [--lr LR] [--resume]    (--steps 0: the untrained model)
  train-dense --model BASE --naip DIR --out RUN [--steps N] [--batch B] [--seed S] [--lr LR]
        [--layer 6] [--dim 64] [--hidden 56] [--fuse-layer 10 [--fuse-weight W]] [--init M]
        [--resume]
                                        the fine stage's dense head on BASE's frozen backbone
  dense-scan --model M --naip DIR [--val-band B] [--map-years 2018,2019,2020] [--count N]
        [--raw]                         validation: the held-out band scanned whole
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from . import image, model as M, safetensors, testvectors, tflite, train, train_dense, xtime
from .config import ConfigError, ModelConfig
from .safetensors import SafetensorsError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_LABELS = os.path.join(REPO_ROOT, "data", "backbone", "imagenet_labels.txt")


def cmd_export_random(a) -> int:
    cfg = ModelConfig.load(a.config)
    model = testvectors.random_model(cfg, a.seed)
    M.save_model(model, a.out)
    print(f"wrote {a.out}: {sum(t.numel() for t in M.model_tensors(model).values())} parameters")
    return 0


def cmd_encode(a) -> int:
    model = M.load_model(a.model)
    for path in a.images:
        with torch.no_grad():
            d = model(image.to_batch(image.load_image(path)))[0]
        print(json.dumps(d.tolist()))
    return 0


def cmd_import_tflite(a) -> int:
    model = tflite.import_file(a.tflite)
    M.save_model(model, a.out)
    c = model.cfg
    print(f"wrote {a.out}: MobileNetV2, {c.num_classes} classes, input {c.input_size}, "
          f"mean {c.mean[0]} std {c.std[0]}")
    return 0


def cmd_classify(a) -> int:
    model = M.load_model(a.model)
    with open(a.labels, encoding="utf-8") as f:
        labels = f.read().splitlines()
    if len(labels) != model.cfg.num_classes:
        raise ConfigError(f"{a.labels}: {len(labels)} labels but the model has "
                          f"{model.cfg.num_classes} classes")
    with torch.no_grad():
        p = torch.softmax(model.classify(image.to_batch(image.load_image(a.image))), dim=1)[0]
    top = torch.topk(p, 5)
    for prob, idx in zip(top.values.tolist(), top.indices.tolist()):
        print(f"{prob:.4f}  {idx:4d}  {labels[idx]}")
    return 0


def _parse_sizes(text: str):
    sizes = []
    for s in text.split(","):
        try:
            w, h = s.lower().split("x")
            sizes.append((int(w), int(h)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"size {s!r} is not WIDTHxHEIGHT") from None
    return sizes


def cmd_testvectors(a) -> int:
    configs = a.configs.split(",") if a.configs else None
    testvectors.generate(a.out, configs, a.sizes, a.seed)
    print(f"wrote {os.path.join(a.out, 'index.json')}")
    return 0


def cmd_to_fp16(a) -> int:
    if os.path.abspath(a.out) == os.path.abspath(a.model):
        raise ValueError("--out must name another file than --model")
    model = M.load_model(a.model)
    M.save_model(model, a.out, dtype=torch.float16)
    half = M.load_model(a.out)  # as a consumer loads it: float16 back to float32
    h, w = model.cfg.input_size
    seeds = range(1, 5)
    x = torch.stack([testvectors.test_image(w, h, s).permute(2, 0, 1) for s in seeds]).float()
    what = "descriptor" if model.cfg.descriptor else "logits"  # a classifier-only model
    run = (lambda m: m(x)) if model.cfg.descriptor else (lambda m: m.classify(x))
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(run(model).double(), run(half).double(), dim=1)
    print(f"wrote {a.out}: {os.path.getsize(a.out)} bytes (from {os.path.getsize(a.model)})")
    print(f"worst {what} cosine f32 vs f16 over {len(seeds)} test images at {w}x{h}: "
          f"{float(cos.min()):.8f}")
    return 0


# The naip-xtime commands.
def cmd_make_eval_set(a) -> int:
    xtime.make_eval_set(a.naip, a.out, a.count, a.seed, a.size, a.region)
    return 0


def cmd_make_flight(a) -> int:
    xtime.make_flight(a.naip, a.out, a.year, a.frames, a.seed, a.size)
    return 0


def cmd_make_flights(a) -> int:
    if a.val_band and a.region != "west":
        raise ValueError("--val-band needs --region west")
    xtime.make_flights(a.naip, a.out, a.region, a.flights, a.frames, a.seed, a.size, a.years,
                       a.events, a.val_band)
    return 0


def cmd_xtime_bbox(a) -> int:
    print(xtime.bbox_string(a.naip, a.region))
    return 0


def cmd_xtime_water(a) -> int:
    rows = xtime.water_breakdown(a.naip, a.labels, a.results)
    print("water in the frame  2009-2010 queries: n, success@100m   other years: n, success@100m")
    for i in range(0, len(rows), 2):
        cells = []
        for lo, hi, old, n, hits in rows[i:i + 2]:
            cells.append(f"{n:5d} {100.0 * hits / n:6.1f}%" if n else f"{n:5d}      -")
        print(f"{rows[i][0]:5.2f}-{rows[i][1]:4.2f}          {cells[0]}            {cells[1]}")
    return 0


def cmd_xtime_change(a) -> int:
    rows = xtime.water_change(a.naip, a.ref)
    parts = xtime.CHANGE_PARTS
    print(f"year  water / changed since {a.ref} (share of the ground): " + ", ".join(parts))
    for year, r in rows.items():
        print(f"{year}  " + "   ".join(f"{100 * r[k][0]:4.1f}% / {100 * r[k][1]:4.1f}%"
                                       for k in parts))
    return 0


# The fine stage's reference (fine.py): outputs for the C parity tests.
def _rgb(path):
    return image.load_image(path).numpy()


def _write_f32(path, arr) -> None:
    import numpy as np
    np.ascontiguousarray(arr, dtype="<f4").tofile(path)


def cmd_warp(a) -> int:
    from . import fine
    try:
        from PIL import Image
    except ImportError:
        raise image.ImageError("writing PNG needs Pillow (Debian: python3-pil)") from None
    out = fine.warp(_rgb(a.image), a.heading, a.size)
    Image.fromarray(out).save(a.out, format="PNG")
    print(f"wrote {a.out}: {a.size}x{a.size}")
    return 0


def cmd_dense(a) -> int:
    from . import fine
    model = M.load_model(a.model)
    f = fine.dense_features(model, _rgb(a.image), a.layer, a.block, a.margin)
    _write_f32(a.out, f)
    print(" ".join(str(v) for v in f.shape))
    return 0


def cmd_fuse_dense(a) -> int:
    """A copy of a model whose dense head fuses block a.layer (config
    dense_head.fuse_layer, fuse_weight; fine.cells), or none with --layer 0."""
    model = M.load_model(a.model)
    if model.cfg.dense_head is None:
        raise ConfigError("the model has no dense head (config dense_head) to fuse a block with")
    cfg = json.loads(model.cfg.to_json())
    head = {k: v for k, v in cfg["dense_head"].items() if not k.startswith("fuse_")}
    if a.layer:
        head.update(fuse_layer=a.layer, fuse_weight=a.weight)
    net = M.GeoNet(ModelConfig.from_dict({**cfg, "dense_head": head}))
    net.load_state_dict(M.model_tensors(model))
    # The tensors as stored: a float16 file stays float16 (exactly, since
    # they were read from it).
    tensors, _ = safetensors.load(a.model)
    half = any(t.dtype == torch.float16 for t in tensors.values())
    M.save_model(net.eval(), a.out, dtype=torch.float16 if half else torch.float32)
    return 0


def _parse_headings(text: str):
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"headings {text!r} are not comma-separated "
                                         "degrees") from None


def cmd_query_features(a) -> int:
    from . import fine
    model = M.load_model(a.model)
    f = fine.query_features(model, _rgb(a.image), a.headings, a.layer)
    _write_f32(a.out, f)
    print(" ".join(str(v) for v in f.shape))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m geoloc_train",
                                description="geoloc reference model tools")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("export-random", help="write a model with random weights")
    s.add_argument("--config", help="JSON architecture config (default: the default architecture)")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_export_random)

    s = sub.add_parser("encode", help="print the descriptor of each image as a JSON array")
    s.add_argument("--model", required=True)
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.set_defaults(func=cmd_encode)

    s = sub.add_parser("import-tflite", help="dequantize the TFLite MobileNetV2 into a model file")
    s.add_argument("--tflite", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_import_tflite)

    s = sub.add_parser("classify", help="top-5 ImageNet classes of an image")
    s.add_argument("--model", required=True)
    s.add_argument("--labels", default=DEFAULT_LABELS)
    s.add_argument("image", metavar="IMAGE")
    s.set_defaults(func=cmd_classify)

    s = sub.add_parser("testvectors", help="write C parity test vectors")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=testvectors.DEFAULT_SEED)
    s.add_argument("--configs", help=f"comma-separated subset of {','.join(testvectors.CONFIGS)}")
    s.add_argument("--sizes", type=_parse_sizes, help="comma-separated WIDTHxHEIGHT list (default "
                   + ",".join(f"{w}x{h}" for w, h in testvectors.SIZES) + ")")
    s.set_defaults(func=cmd_testvectors)

    s = sub.add_parser("to-fp16", help="write a half-precision (F16) copy of a model file")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_to_fp16)

    s = sub.add_parser("make-eval-set", help="write the labelled naip-xtime query set")
    s.add_argument("--naip", required=True, help="folder of the NAIP GeoTIFFs")
    s.add_argument("--out", required=True)
    s.add_argument("--count", type=int, default=1000)
    s.add_argument("--seed", type=int, default=None,
                   help="default 2020 for the east region, 7 for the west")
    s.add_argument("--size", type=int, default=128, help="frame side in pixels")
    s.add_argument("--region", choices=["east", "west"], default="east",
                   help="east: the evaluation half; west: the validation tiles on training ground")
    s.set_defaults(func=cmd_make_eval_set)

    s = sub.add_parser("make-flight", help="write a simulated demo flight over the east half")
    s.add_argument("--naip", required=True, help="folder of the NAIP GeoTIFFs")
    s.add_argument("--out", required=True)
    s.add_argument("--year", type=int, default=2009)
    s.add_argument("--frames", type=int, default=60)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--size", type=int, default=256, help="frame side in pixels")
    s.set_defaults(func=cmd_make_flight)

    s = sub.add_parser("make-flights", help="write simulated flights with gaps and kidnaps "
                       "for testing a position tracker")
    s.add_argument("--naip", required=True, help="folder of the NAIP GeoTIFFs")
    s.add_argument("--out", required=True)
    s.add_argument("--region", choices=["east", "west"], default="east",
                   help="east: the evaluation half; west: the validation tiles on training ground")
    s.add_argument("--flights", type=int, default=20)
    s.add_argument("--frames", type=int, default=100, help="frames per flight")
    s.add_argument("--seed", type=int, default=None,
                   help="default 3030 for the east region, 3131 for the west")
    s.add_argument("--size", type=int, default=128, help="frame side in pixels")
    s.add_argument("--years", type=xtime.parse_years, default=None,
                   help="comma-separated imagery years (default: all but 2018-2020)")
    s.add_argument("--no-events", dest="events", action="store_false",
                   help="no gaps and no kidnaps")
    s.add_argument("--val-band", choices=["north"], default=None,
                   help="with --region west: fly over train-dense's north validation band only")
    s.set_defaults(func=cmd_make_flights)

    s = sub.add_parser("xtime-bbox", help="print the --bbox of the naip-xtime reference map")
    s.add_argument("--naip", required=True, help="folder of the NAIP GeoTIFFs")
    s.add_argument("--region", choices=["east", "west"], default="east",
                   help="east: the evaluation map; west: the validation map on training ground")
    s.set_defaults(func=cmd_xtime_bbox)

    s = sub.add_parser("xtime-water", help="success of `geoloc eval --csv` results by the share "
                       "of open water in each query's footprint, 2009-2010 apart")
    s.add_argument("--naip", required=True, help="folder of the NAIP GeoTIFFs (4 bands)")
    s.add_argument("--labels", required=True, help="the query set's labels.csv")
    s.add_argument("--results", required=True, help="geoloc eval --csv output for those queries")
    s.set_defaults(func=cmd_xtime_water)

    s = sub.add_parser("xtime-change", help="open water per year and the share of the ground "
                       "whose water changed since a reference year, per part of naip-xtime")
    s.add_argument("--naip", required=True, help="folder of the NAIP GeoTIFFs (4 bands)")
    s.add_argument("--ref", type=int, default=2020, help="reference year (default 2020)")
    s.set_defaults(func=cmd_xtime_change)

    s = sub.add_parser("warp", help="fine stage: turn a frame north-up for a heading")
    s.add_argument("--image", required=True)
    s.add_argument("--heading", type=float, required=True,
                   help="degrees clockwise from north of the direction the frame's top looks at")
    s.add_argument("--size", type=int, required=True, help="output side in pixels")
    s.add_argument("--out", required=True, help="PNG file")
    s.set_defaults(func=cmd_warp)

    s = sub.add_parser("dense", help="fine stage: dense L2-normalised features of a canvas "
                       "(raw little-endian float32 rows x cols x C)")
    s.add_argument("--model", required=True)
    s.add_argument("--image", required=True, help="canvas; sides multiples of the layer's stride")
    s.add_argument("--layer", type=int, default=6, help="backbone feature index (default 6)")
    s.add_argument("--block", type=int, default=512)
    s.add_argument("--margin", type=int, default=None,
                   help="context on each side of a block (default: fine.layer_margin)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_dense)

    s = sub.add_parser("query-features", help="fine stage: L2-normalised features of a frame "
                       "warped to each heading (raw little-endian float32 [H, n, n, C])")
    s.add_argument("--model", required=True)
    s.add_argument("--image", required=True)
    s.add_argument("--headings", type=_parse_headings, required=True,
                   help="comma-separated degrees, e.g. 0,10,20")
    s.add_argument("--layer", type=int, default=6, help="backbone feature index (default 6)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_query_features)

    s = sub.add_parser("fuse-dense", help="fine stage: a copy of a model whose cells join its "
                       "dense head's with a deeper block's raw cells")
    s.add_argument("--model", required=True)
    s.add_argument("--layer", type=int, required=True,
                   help="the block to fuse (config dense_head.fuse_layer; 0: none)")
    s.add_argument("--weight", type=float, default=0.5,
                   help="its share of a cell's cosine (config dense_head.fuse_weight)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_fuse_dense)

    s = sub.add_parser("train", help="train the geo model on the naip-xtime training region")
    train.main_args(s)
    s.set_defaults(func=lambda a: train.run(a, REPO_ROOT))

    s = sub.add_parser("train-dense", help="train the fine stage's dense descriptor head "
                       "(config dense_head) on a model's frozen backbone")
    train_dense.main_args(s)
    s.set_defaults(func=train_dense.run)
    s = sub.add_parser("dense-scan", help="validation: views of the held-out band found "
                       "by scanning the band's cells of a multi-year map")
    train_dense.scan_args(s)
    s.set_defaults(func=train_dense.run_scan)

    a = p.parse_args(argv)
    try:
        return a.func(a)
    except (ConfigError, SafetensorsError, tflite.TFLiteError, image.ImageError, OSError,
            ValueError) as e:
        print(f"geoloc_train {a.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
