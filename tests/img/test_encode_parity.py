"""`geoloc encode` (C: libspng/libjpeg-turbo + the C engine) against
`python -m geoloc_train encode` (Pillow + PyTorch) on the same image files,
of every kind the decoder handles: cosine >= 0.9999 per image. Also the CLI's
error messages and `geoloc inspect`.

Run by meson with Debian's /usr/bin/python3 (where python3-torch lives);
GEOLOC is the geoloc executable, PYTHONPATH the repository's python/.
Exits 77 (skipped) when torch, numpy or Pillow cannot be imported."""

import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import zlib

GEOLOC = os.environ.get("GEOLOC", "geoloc")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYDIR = os.path.join(REPO, "python")
CAT = os.path.join(REPO, "data", "backbone", "cat.bmp")
MIN_COSINE = 0.9999

failures = 0


def check(ok, what):
    global failures
    if not ok:
        failures += 1
        print(f"FAILED: {what}", flush=True)
    return ok


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)


def python_cli(*args):
    env = dict(os.environ, PYTHONPATH=PYDIR)
    return run([sys.executable, "-m", "geoloc_train", *args], env=env)


def errors_without_a_model(tmp):
    """CLI errors that need no torch: usage, a model that is not one."""
    p = run([GEOLOC, "encode"])
    check(p.returncode == 2 and "usage" in p.stderr, f"encode without args: {p.returncode}")
    p = run([GEOLOC, "encode", "--model", "x", "--batch", "0", "a.png"])
    check(p.returncode == 2 and "--batch" in p.stderr, f"--batch 0: {p.returncode} {p.stderr}")
    bad = os.path.join(tmp, "bad.safetensors")
    with open(bad, "wb") as f:
        f.write(b"\xff" * 16)
    for cmd in (["encode", "--model", bad, CAT], ["inspect", bad]):
        p = run([GEOLOC, *cmd])
        check(p.returncode == 1 and bad in p.stderr and p.stdout == "",
              f"{cmd[0]} on a bad model: rc {p.returncode}, stderr {p.stderr!r}")
    missing = os.path.join(tmp, "missing.safetensors")
    p = run([GEOLOC, "inspect", missing])
    check(p.returncode == 1 and missing in p.stderr, f"inspect missing: {p.stderr!r}")
    p = run([GEOLOC, "inspect"])
    check(p.returncode == 2, f"inspect without args: {p.returncode}")


def write_png16(path, rgb):
    """16-bit RGB PNG (Pillow cannot write one): each 8-bit value v becomes
    v * 257 + small noise in the low byte, so only the high byte matters."""
    h, w, _ = rgb.shape
    raw = bytearray()
    for y in range(h):
        raw.append(0)
        row = rgb[y].astype("uint32") * 257
        row = (row & 0xFF00) | ((row + y) & 0x7F)
        raw += row.astype(">u2").tobytes()

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(bytes(raw), 6)) + chunk(b"IEND", b""))


def make_images(tmp, Image, np):
    cat = Image.open(CAT).convert("RGB")
    arr = np.asarray(cat)
    imgs = []

    def add(name, save):
        path = os.path.join(tmp, name)
        save(path)
        imgs.append(path)

    add("rgb.png", lambda p: cat.save(p))
    rgba = cat.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(cat.size))
    add("rgba.png", lambda p: rgba.save(p))
    add("palette.png", lambda p: cat.quantize(64).save(p))
    add("gray.png", lambda p: cat.convert("L").save(p))
    add("rgb16.png", lambda p: write_png16(p, arr))
    add("q90_420.jpg", lambda p: cat.save(p, quality=90))
    add("q95_444.jpg", lambda p: cat.save(p, quality=95, subsampling=0))
    add("q75_422.jpg", lambda p: cat.save(p, quality=75, subsampling=1))
    add("progressive.jpg", lambda p: cat.save(p, quality=85, progressive=True))
    add("gray.jpg", lambda p: cat.convert("L").save(p, quality=90))
    add("cmyk.jpg", lambda p: cat.convert("CMYK").save(p, quality=90))
    # A size that is not a multiple of the MCU, cropped from the cat.
    add("odd.jpg", lambda p: cat.crop((3, 5, 300, 222)).save(p, quality=88))
    return imgs


def vectors(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def main():
    with tempfile.TemporaryDirectory() as tmp:
        errors_without_a_model(tmp)
        try:
            import numpy as np
            import torch  # noqa: F401
            from PIL import Image
        except ImportError as e:
            print(f"SKIP: {e} (apt-get install python3-torch python3-numpy python3-pil)")
            return 77 if failures == 0 else 1

        model = os.path.join(tmp, "m.safetensors")
        p = python_cli("export-random", "--seed", "11", "--out", model)
        if not check(p.returncode == 0, f"export-random: {p.stderr}"):
            return 1
        imgs = make_images(tmp, Image, np)

        c = run([GEOLOC, "encode", "--model", model, "--batch", "4", *imgs])
        if not check(c.returncode == 0, f"geoloc encode exited {c.returncode}: {c.stderr}"):
            return 1
        py = python_cli("encode", "--model", model, *imgs)
        if not check(py.returncode == 0, f"python encode: {py.stderr}"):
            return 1
        cv, pv = vectors(c.stdout), vectors(py.stdout)
        check(len(cv) == len(imgs) and len(pv) == len(imgs),
              f"{len(cv)} C and {len(pv)} Python vectors for {len(imgs)} images")
        for path, a, b in zip(imgs, cv, pv):
            cos = cosine(a, b)
            norm = math.sqrt(sum(x * x for x in a))
            print(f"{os.path.basename(path):16s} 1 - cosine {1 - cos:.2e}  |c| {norm:.6f}  dim {len(a)}")
            check(len(a) == len(b), f"{path}: dim {len(a)} != {len(b)}")
            check(abs(norm - 1) < 1e-4, f"{path}: C descriptor norm {norm}")
            check(cos >= MIN_COSINE, f"{path}: cosine {cos:.7f} < {MIN_COSINE}")

        # The same images one at a time (batch 1) give the same numbers.
        one = run([GEOLOC, "encode", "--model", model, "--batch", "1", "--threads", "1",
                   imgs[0], imgs[6]])
        ov = vectors(one.stdout)
        check(one.returncode == 0 and len(ov) == 2, f"batch 1: {one.stderr}")
        if len(ov) == 2:
            check(min(cosine(ov[0], cv[0]), cosine(ov[1], cv[6])) > 0.999999,
                  "batch 1 differs from batch 4")

        # A bad image among good ones: exit 1, the file named.
        junk = os.path.join(tmp, "junk.jpg")
        with open(junk, "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 this is no jpeg")
        p = run([GEOLOC, "encode", "--model", model, imgs[0], junk])
        check(p.returncode == 1 and junk in p.stderr and "JPEG" in p.stderr,
              f"bad image: rc {p.returncode}, stderr {p.stderr!r}")
        # The good image before it is still printed, as the Python command does.
        check(len(vectors(p.stdout)) == 1, "bad image: the one before it is printed")
        p = run([GEOLOC, "encode", "--model", model, os.path.join(tmp, "nope.png")])
        check(p.returncode == 1 and "nope.png" in p.stderr, f"missing image: {p.stderr!r}")

        # inspect: hash, parameter count, descriptor size, config.
        p = run([GEOLOC, "inspect", model])
        check(p.returncode == 0, f"inspect: {p.stderr}")
        out = p.stdout
        print(out)
        with open(model, "rb") as f:
            data = f.read()
        check(hashlib.sha256(data).hexdigest() in out, "inspect: sha256")
        hlen = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + hlen])
        meta = header.pop("__metadata__")
        params = sum(math.prod(t["shape"]) for t in header.values())
        check(f"parameters:  {params} " in out, f"inspect: parameters {params}")
        check("descriptor:  512 floats" in out, "inspect: descriptor size")
        cfg_text = out.split("config:", 1)[1] if "config:" in out else ""
        try:
            check(json.loads(cfg_text) == json.loads(meta["config"]), "inspect: config")
        except ValueError as e:
            check(False, f"inspect: config is not JSON: {e}")
    print("ok" if failures == 0 else f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
