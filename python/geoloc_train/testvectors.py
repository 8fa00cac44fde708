"""Test vectors for the C engine's parity tests.

`python -m geoloc_train testvectors --out DIR` writes, for each config in
CONFIGS and each input size in SIZES, the model, the input pixels, the
expected descriptor and a few intermediate outputs.  Layout of DIR:

    index.json                       what is where (below)
    models/<config>.safetensors      random model (export-random, seed)
    inputs/<W>x<H>.u8                pixels: raw uint8, H rows of W RGB
                                     triplets (HWC, row-major, no header)
    cases/<config>/<W>x<H>/<tap>.f32 raw little-endian float32, row-major
                                     in the shape index.json gives; 4-D
                                     tensors are NCHW with N = 1

index.json:
    {"format": "geoloc-testvectors", "version": 1, "seed": 1,
     "descriptor_cosine_min": 0.9999,
     "models": {"<config>": {"file": "models/...", "config": {...}}},
     "inputs": {"<W>x<H>": {"file": "inputs/...", "width": W, "height": H,
                            "channels": 3, "dtype": "u8", "layout": "HWC"}},
     "cases": [{"model": "<config>", "input": "<W>x<H>",
                "descriptor": {"file": ..., "dtype": "f32", "shape": [512]},
                "intermediates": [{"name": "preprocess", "file": ...,
                                   "dtype": "f32", "shape": [1, 3, 224, 224],
                                   "layout": "NCHW"}, ...]}]}

Intermediate names are the trace points of model.py (see OPS.md, "Trace
points"); a C test compares them to find the first op that diverges.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import model as M
from .config import ModelConfig

VERSION = 1
DEFAULT_SEED = 1
DESCRIPTOR_COSINE_MIN = 0.9999

CONFIGS: Dict[str, dict] = {
    "default": {},
    "resizer": {"resizer": True},
    "hierarchical": {"levels": [6, 13, 18]},
    # BN already folded (conv bias), PyTorch padding, GeM pooling and
    # two-level fusion: the options the other configs leave untested.
    "folded_gem": {"bn": False, "padding": "torch", "pool": "gem", "levels": [13, 18]},
}
SIZES: List[Tuple[int, int]] = [(224, 224), (333, 517), (1280, 720)]  # (width, height)


def random_model(cfg: ModelConfig, seed: int) -> M.GeoNet:
    """A deterministic random model with every tensor non-trivial.

    For bn=false the bn=true model is randomised (BN calibrated) and then
    folded: random convs without BN would give activations that vanish or
    saturate through 19 layers.
    """
    torch.manual_seed(seed)
    if cfg.bn:
        return M.randomize_for_test(M.GeoNet(cfg), seed)
    with_bn = ModelConfig.from_dict({**json.loads(cfg.to_json()), "bn": True})
    folded = M.fold_batch_norm(M.randomize_for_test(M.GeoNet(with_bn), seed))
    if folded.cfg != cfg:
        raise AssertionError("folding changed more than the bn field")
    return folded


def test_image(width: int, height: int, seed: int) -> torch.Tensor:
    """Deterministic uint8 [H, W, 3] test picture (smooth structure + noise)."""
    g = torch.Generator().manual_seed(seed * 7919 + width * 31 + height)
    img = M._smooth_noise(g, 1, height, width)[0]
    return img.permute(1, 2, 0).to(torch.uint8).contiguous()


def _selected_taps(cfg: ModelConfig, trace: Dict[str, torch.Tensor]) -> List[str]:
    names = ["preprocess"]
    if cfg.resizer:
        names += ["resizer.features", "resizer.residual"]
    feats = {0, 3} | set(cfg.levels)  # stem (asymmetric pad), a residual block, levels
    names += [f"backbone.features.{i}" for i in sorted(feats)]
    for i in range(len(cfg.levels)):
        p = f"osm.{i}"
        names += [p + ".proj", p + ".groups.0.attention", p + ".groups.0.se",
                  p + ".groups.0.overlap", p + ".groups.0.pooled", p + ".embed"]
    if len(cfg.levels) > 1:
        names.append("fusion")
    names.append("descriptor")
    missing = [n for n in names if n not in trace]
    if missing:
        raise AssertionError(f"trace points missing: {missing}")
    return names


def _write_f32(path: str, t: torch.Tensor) -> None:
    with open(path, "wb") as f:
        f.write(t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes())


def generate(out: str, configs: Optional[Sequence[str]] = None,
             sizes: Optional[Sequence[Tuple[int, int]]] = None,
             seed: int = DEFAULT_SEED, log=print) -> dict:
    configs = list(configs or CONFIGS)
    sizes = list(sizes or SIZES)
    for name in configs:
        if name not in CONFIGS:
            raise ValueError(f"unknown test-vector config {name!r} (known: {', '.join(CONFIGS)})")
    for sub in ("models", "inputs", "cases"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    index = {"format": "geoloc-testvectors", "version": VERSION, "seed": seed,
             "descriptor_cosine_min": DESCRIPTOR_COSINE_MIN,
             "models": {}, "inputs": {}, "cases": []}

    images = {}
    for w, h in sizes:
        key = f"{w}x{h}"
        images[key] = test_image(w, h, seed)
        rel = f"inputs/{key}.u8"
        with open(os.path.join(out, rel), "wb") as f:
            f.write(images[key].numpy().tobytes())
        index["inputs"][key] = {"file": rel, "width": w, "height": h, "channels": 3,
                                "dtype": "u8", "layout": "HWC"}

    for name in configs:
        cfg = ModelConfig.from_dict(CONFIGS[name])
        model = random_model(cfg, seed)
        rel = f"models/{name}.safetensors"
        M.save_model(model, os.path.join(out, rel))
        # Compute from the saved file, exactly as a consumer would load it.
        model = M.load_model(os.path.join(out, rel))
        index["models"][name] = {"file": rel, "config": json.loads(cfg.to_json())}
        for key, img in images.items():
            trace: Dict[str, torch.Tensor] = {}
            with torch.no_grad():
                desc = model(img.permute(2, 0, 1).unsqueeze(0).to(torch.float32), trace)[0]
            cdir = f"cases/{name}/{key}"
            os.makedirs(os.path.join(out, cdir), exist_ok=True)
            case = {"model": name, "input": key, "intermediates": []}
            _write_f32(os.path.join(out, cdir, "descriptor.f32"), desc)
            case["descriptor"] = {"file": f"{cdir}/descriptor.f32", "dtype": "f32",
                                  "shape": list(desc.shape)}
            for tap in _selected_taps(cfg, trace):
                t = trace[tap]
                rel_t = f"{cdir}/{tap}.f32"
                _write_f32(os.path.join(out, rel_t), t)
                entry = {"name": tap, "file": rel_t, "dtype": "f32", "shape": list(t.shape)}
                if t.dim() == 4:
                    entry["layout"] = "NCHW"
                case["intermediates"].append(entry)
            index["cases"].append(case)
            log(f"{name} {key}: descriptor[:4] = {[round(v, 5) for v in desc[:4].tolist()]}")

    with open(os.path.join(out, "index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1, sort_keys=True)
        f.write("\n")
    return index
