"""Parity vectors for a model file stored in half precision (F16).

    PYTHONPATH=python /usr/bin/python3 tests/parity/gen_f16_vectors.py OUT_DIR

Writes OUT_DIR in the layout of `python -m geoloc_train testvectors` (see
python/geoloc_train/testvectors.py), for one small model saved with
dtype=float16 (BN unfolded, so the engine folds F16-loaded tensors).  The
expected descriptors and intermediates are computed from the F16 file as
model.load_model reads it (float16 widened to float32), so nn_parity checks
that the C engine reads the same F16 file to the same function.
"""

import json
import os
import sys

import torch

from geoloc_train import model as M, safetensors, testvectors as TV
from geoloc_train.config import ModelConfig

NAME = "f16"
CONFIG = {"input_size": [64, 64]}
SIZES = [(64, 64), (97, 71)]  # (width, height): the input size, and a resize


def main(out: str) -> int:
    for sub in ("models", "inputs", "cases"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    seed = TV.DEFAULT_SEED
    cfg = ModelConfig.from_dict(CONFIG)
    rel = f"models/{NAME}.safetensors"
    path = os.path.join(out, rel)
    M.save_model(TV.random_model(cfg, seed), path, dtype=torch.float16)
    stored, _ = safetensors.load(path)
    not_half = [k for k, v in stored.items() if v.dtype != torch.float16]
    if not_half:
        raise AssertionError(f"{path}: tensors not stored as F16: {not_half[:3]}")
    model = M.load_model(path)

    index = {"format": "geoloc-testvectors", "version": TV.VERSION, "seed": seed,
             "descriptor_cosine_min": TV.DESCRIPTOR_COSINE_MIN,
             "models": {NAME: {"file": rel, "config": json.loads(cfg.to_json())}},
             "inputs": {}, "cases": []}
    for w, h in SIZES:
        key = f"{w}x{h}"
        img = TV.test_image(w, h, seed)
        irel = f"inputs/{key}.u8"
        with open(os.path.join(out, irel), "wb") as f:
            f.write(img.numpy().tobytes())
        index["inputs"][key] = {"file": irel, "width": w, "height": h, "channels": 3,
                                "dtype": "u8", "layout": "HWC"}
        trace = {}
        with torch.no_grad():
            desc = model(img.permute(2, 0, 1).unsqueeze(0).to(torch.float32), trace)[0]
        cdir = f"cases/{NAME}/{key}"
        os.makedirs(os.path.join(out, cdir), exist_ok=True)
        TV._write_f32(os.path.join(out, cdir, "descriptor.f32"), desc)
        case = {"model": NAME, "input": key, "intermediates": [],
                "descriptor": {"file": f"{cdir}/descriptor.f32", "dtype": "f32",
                               "shape": list(desc.shape)}}
        for tap in TV._selected_taps(cfg, trace):
            t = trace[tap]
            trel = f"{cdir}/{tap}.f32"
            TV._write_f32(os.path.join(out, trel), t)
            entry = {"name": tap, "file": trel, "dtype": "f32", "shape": list(t.shape)}
            if t.dim() == 4:
                entry["layout"] = "NCHW"
            case["intermediates"].append(entry)
        index["cases"].append(case)
        print(f"{NAME} {key}: descriptor[:4] = {[round(v, 5) for v in desc[:4].tolist()]}")
    with open(os.path.join(out, "index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {os.path.join(out, 'index.json')} ({os.path.getsize(path)}-byte F16 model)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} OUT_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
