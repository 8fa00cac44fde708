"""CPU engine benchmark: frames/s of geoloc's C engine against PyTorch eager,
same weights, same thread count, measured in the same run.

    ninja -C BUILD bench/cpu_engine
    /usr/bin/python3 bench/cpu_engine.py --driver BUILD/bench/cpu_engine \
        [--threads N] [--seconds S] [--batches 1,8] [--config default]

Debian's /usr/bin/python3 is the interpreter with torch (python3-torch).
A random model of the chosen test-vector config (python/geoloc_train/
testvectors.py) is written to a temporary file; PyTorch runs the reference
model loaded from that file (GeoNet in eval mode, batch norm unfolded, as
eager inference does), the C driver loads the same file. Input: synthetic
224x224 uint8 frames, so preprocessing is the identity resize on both sides.
The last column is engine / PyTorch. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "python"))

import torch  # noqa: E402

from geoloc_train import model as M  # noqa: E402
from geoloc_train import testvectors  # noqa: E402
from geoloc_train.config import ModelConfig  # noqa: E402


def torch_fps(model, batch: int, seconds: float) -> float:
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (batch, 3, 224, 224), generator=g).to(torch.float32)
    with torch.inference_mode():
        for _ in range(3):
            model(img)
        n, t0 = 0, time.perf_counter()
        while True:
            model(img)
            n += 1
            t = time.perf_counter() - t0
            if t >= seconds and n >= 5:
                return n * batch / t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--driver", required=True, help="the built bench/cpu_engine executable")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--config", default="default", choices=sorted(testvectors.CONFIGS))
    a = p.parse_args()
    batches = [int(b) for b in a.batches.split(",")]

    torch.set_num_threads(a.threads)
    cfg = ModelConfig.from_dict(testvectors.CONFIGS[a.config])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        M.save_model(testvectors.random_model(cfg, seed=1), path)
        model = M.load_model(path)
        rows = []
        for b in batches:
            out = subprocess.run([a.driver, path, str(b), str(a.threads), str(a.seconds)],
                                 check=True, capture_output=True, text=True).stdout
            eng = json.loads(out.strip().splitlines()[-1])
            ref = torch_fps(model, b, a.seconds)
            rows.append((b, eng["frames_per_s"], ref, eng["frames_per_s"] / ref))

    print(f"cpu_engine: config {a.config}, 224x224, {a.threads} thread(s), "
          f"torch {torch.__version__}, {a.seconds:g} s per measurement")
    print(f"{'batch':>5}  {'engine fps':>10}  {'torch fps':>10}  {'ratio':>6}")
    for b, e, t, r in rows:
        print(f"{b:>5}  {e:>10.1f}  {t:>10.1f}  {r:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
