"""Training on real aerial imagery: the same place in two different years
is a positive pair.

A step draws `batch` distinct reference tiles of the map grid from the
training region (the west half of naip-xtime, 300 m from the split), each
north-up from one year, and for each a simulated drone view (views.py)
centred near that tile's centre (within half a grid step, so the tile is
the one nearest to the view, as in evaluation) from another year. The
other pairs of the batch are the negatives.

Losses (docs/ARCHITECTURE.md section 5):
  infonce      symmetric InfoNCE over in-batch negatives (default)
  triplet      triplet ranking loss, hardest in-batch negative, margin
  soft-margin  weighted soft-margin triplet loss log(1 + exp(a (d_p - d_n)))
               over all in-batch negatives (CVM-Net)

The backbone starts from the ImageNet MobileNetV2 imported from the TFLite
file; the descriptor head starts random. Everything random comes from
--seed, so a run is reproducible on the same machine and thread count.
"""

from __future__ import annotations

import glob
import json
import os
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import model as M, tflite, views, xtime
from .config import ModelConfig

LOSSES = ("infonce", "triplet", "soft-margin")


def default_config(input_px: int, ref_rotations: int = 4) -> ModelConfig:
    """The geo model: MobileNetV2 as imported (BN folded, TF SAME padding,
    its own input normalisation), input sized to the imagery (a 320 m tile
    at 5 m/px is 64 px), hierarchical OSM on the /16 and /32 stages, and
    reference tiles encoded at four headings (so the model learns rotation
    within +-45 degrees, not all of 0-360)."""
    return ModelConfig(bn=False, padding="tf_same", activation="relu6",
                       input_size=[input_px, input_px], mean=[128.0] * 3, std=[128.0] * 3,
                       levels=[13, 18], ref_rotations=ref_rotations).validate()


def init_from_imagenet(cfg: ModelConfig, tflite_path: str) -> M.GeoNet:
    """A GeoNet with cfg whose backbone holds the dequantized ImageNet
    weights (the descriptor head keeps its random init)."""
    src = tflite.import_file(tflite_path)
    if (src.cfg.bn, src.cfg.padding, src.cfg.width_mult) != (cfg.bn, cfg.padding, cfg.width_mult):
        raise ValueError("the config's backbone (bn, padding, width) differs from the imported one")
    net = M.GeoNet(cfg)
    state = {k: v for k, v in src.state_dict().items() if k.startswith("backbone.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(k.startswith("backbone.") for k in missing):
        raise ValueError(f"backbone tensors do not match: {unexpected[:3]} {missing[:3]}")
    return net


class PairSampler:
    """Positive pairs from the training region of the naip-xtime split.

    The tiles of a batch lie at least MIN_SEP_M apart, so that no negative
    is nearly the positive's own ground.  With near > 1 they come in groups
    of `near` tiles within NEAR_M of each other: negatives from the same
    fields and roads, which is what localizing to the right tile among its
    neighbours takes (random tiles of the whole area are easy negatives)."""

    MIN_SEP_M = 2 * views.STRIDE_M
    NEAR_M = 6 * views.STRIDE_M
    # Reference tiles are cut on this grid, much finer than the map's: the
    # training region holds under a thousand tiles of the map grid, which a
    # network memorizes, and any crop of the ground is as good a reference.
    STEP_M = 10.0

    def __init__(self, naip_dir: str, input_px: int, seed: int, query_px: Optional[int] = None,
                 ref_rotations: int = 1, near: int = 1):
        paths = sorted(glob.glob(os.path.join(naip_dir, "*.tif")))
        if len(paths) < 2:
            raise ValueError(f"{naip_dir}: need GeoTIFFs of at least two years, found {len(paths)}")
        self.rasters = [views.Raster.open(p) for p in paths]
        self.input_px = input_px
        self.query_px = query_px or input_px
        if ref_rotations not in (1, 2, 4):
            raise ValueError(f"ref_rotations must be 1, 2 or 4, not {ref_rotations}")
        self.ref_rotations = ref_rotations
        if near < 1:
            raise ValueError(f"near must be at least 1, not {near}")
        self.near = near
        self.rng = np.random.default_rng(seed)
        # Tiles wholly inside every year and wholly in the training region
        # (the views around them are checked again when drawn).
        ext = np.array([r.extent() for r in self.rasters])
        common = (ext[:, 0].max(), ext[:, 1].max(), ext[:, 2].min(), ext[:, 3].min())
        corners = views.grid_corners(common, stride_m=self.STEP_M)
        t = views.TILE_M
        self.corners = corners[corners[:, 0] + t <= xtime.X_SPLIT - xtime.BUFFER_M]
        if not len(self.corners):
            raise ValueError("no tile lies in the training region")

    def _view(self, raster, cx, cy):
        for _ in range(50):
            p = views.random_view(self.rng, cx, cy)
            if not xtime.train_ok(views.footprint(p)):
                continue
            img, ok = views.render_view(raster, p, self.query_px)
            if ok:
                return img, p
        return None, None

    def reference(self, tile: np.ndarray, heading_deg: float) -> np.ndarray:
        """The positive for a view with this heading: with R reference
        rotations the map holds each tile turned to headings 0, 360/R, ...
        (np.rot90 by k turns it to heading 90 k, as the map builder does),
        and the view's match is the one nearest its heading."""
        step = 360.0 / self.ref_rotations
        r = round(heading_deg / step) % self.ref_rotations
        return np.ascontiguousarray(np.rot90(tile, r * 4 // self.ref_rotations))

    def _tiles(self):
        """Indices into corners, in the order a batch takes them: pairwise
        at least MIN_SEP_M apart, in groups of `near` within NEAR_M."""
        pts = self.corners
        taken = np.empty((0, 2))

        def free(j):
            return len(taken) == 0 or np.hypot(*(taken - pts[j]).T).min() >= self.MIN_SEP_M
        for i in self.rng.permutation(len(pts)):
            if not free(i):
                continue
            group = [i]
            if self.near > 1:
                d = np.hypot(*(pts - pts[i]).T)
                for j in self.rng.permutation(np.flatnonzero(d <= self.NEAR_M)):
                    if len(group) == self.near:
                        break
                    if j != i and np.hypot(*(pts[group] - pts[j]).T).min() >= self.MIN_SEP_M \
                            and free(j):
                        group.append(j)
            taken = np.vstack([taken, pts[group]])
            yield from group

    def batch(self, n: int):
        """(queries, references) as float32 tensors [n, 3, H, W] in 0..255."""
        q, r = [], []
        half = views.STRIDE_M / 2
        for i in self._tiles():
            if len(q) == n:
                break
            x0, y0 = self.corners[i]
            ya, yb = self.rng.choice(len(self.rasters), 2, replace=False)
            cx = x0 + views.TILE_M / 2 + self.rng.uniform(-half, half)
            cy = y0 + views.TILE_M / 2 + self.rng.uniform(-half, half)
            img, p = self._view(self.rasters[ya], cx, cy)
            if img is None:
                continue
            q.append(img)
            tile = views.render_tile(self.rasters[yb], x0, y0, self.input_px)
            r.append(self.reference(tile, p.heading_deg))
        if len(q) < n:
            raise ValueError(f"could draw only {len(q)} pairs of {n}")

        def t(imgs):
            return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
        return t(q), t(r)


def pair_loss(q: torch.Tensor, r: torch.Tensor, kind: str, temperature: float = 0.07,
              margin: float = 0.3, alpha: float = 10.0) -> torch.Tensor:
    """Loss over a batch of L2-normalised descriptors where (q[i], r[i]) are
    positives and every other pairing is a negative."""
    sim = q @ r.t()
    n = sim.shape[0]
    labels = torch.arange(n, device=sim.device)
    if kind == "infonce":
        logits = sim / temperature
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    pos = sim.diag()
    off = ~torch.eye(n, dtype=torch.bool, device=sim.device)
    if kind == "triplet":
        neg = sim.masked_fill(~off, -2.0)
        hard = torch.maximum(neg.max(dim=1).values, neg.max(dim=0).values)
        return F.relu(margin + hard - pos).mean()
    if kind == "soft-margin":
        # d = 2 - 2 sim for unit vectors; d_p - d_n = 2 (sim_n - sim_p).
        d = 2.0 * (sim - pos[:, None])
        d_t = 2.0 * (sim - pos[None, :])
        return 0.5 * (F.softplus(alpha * d[off]).mean() + F.softplus(alpha * d_t[off]).mean())
    raise ValueError(f"unknown loss {kind!r}; one of {', '.join(LOSSES)}")


def one_cycle(opt: torch.optim.Optimizer, max_lr, steps: int):
    """The one-cycle schedule of both trainers over `steps` (at least 1),
    warming up over 5 % of them. torch divides by the length of each phase,
    so a run of 3 steps or more warms up for at least 2 steps and ends
    after at least 1 more (5 % of 20 steps is 1 step: torch fails on it);
    where 5 % is a whole number of steps, as in the recipes, this is
    exactly pct_start 0.05."""
    total = max(steps, 1)
    pct = 0.05
    if total >= 3:
        pct = min(max(2, round(0.05 * total)), total - 1) / total
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total,
                                               pct_start=pct)


@torch.no_grad()
def recall_at_1(net: M.GeoNet, q: torch.Tensor, r: torch.Tensor) -> float:
    net.eval()
    sim = (net(q) @ net(r).t()).cpu()
    net.train()
    return float((sim.argmax(dim=1) == torch.arange(len(q))).float().mean())


def train(naip_dir: str, out_dir: str, *, steps: int, batch: int, seed: int, loss: str,
          lr: float, tflite_path: str, config: Optional[ModelConfig] = None,
          threads: int = 0, ckpt_every: int = 200, resume: bool = False, near: int = 1,
          device: str = "cpu", log=print) -> str:
    """Trains and writes out_dir/model.safetensors (plus checkpoints and
    train.log.jsonl). Returns the model path. steps 0 writes the untrained
    model (ImageNet backbone, random head): the baseline training is
    measured against."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; one of {', '.join(LOSSES)}")
    if steps < 0 or batch < 2:
        raise ValueError(f"need steps >= 0 and a batch of at least 2 pairs (got {steps}, {batch})")
    os.makedirs(out_dir, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = config or default_config(64)
    dev = torch.device(device)
    net = init_from_imagenet(cfg, tflite_path).to(dev).train()
    head = [p for n, p in net.named_parameters() if not n.startswith("backbone.")]
    body = [p for n, p in net.named_parameters() if n.startswith("backbone.")]
    opt = torch.optim.AdamW([{"params": body, "lr": lr}, {"params": head, "lr": lr * 10}],
                            weight_decay=1e-4)
    sched = one_cycle(opt, [lr, lr * 10], steps)
    sampler = PairSampler(naip_dir, cfg.input_size[0], seed, ref_rotations=cfg.ref_rotations,
                          near=near)
    val_q, val_r = (t.to(dev) for t in PairSampler(naip_dir, cfg.input_size[0], seed + 1,
                                                   ref_rotations=cfg.ref_rotations).batch(128))
    ckpt = os.path.join(out_dir, "checkpoint.pt")
    start = 0
    if resume and os.path.exists(ckpt):
        state = torch.load(ckpt, map_location=dev)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        sampler.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"].cpu())
        start = state["step"]
        log(f"resumed from {ckpt} at step {start}")
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        f.write(cfg.to_json() + "\n")
    logf = open(os.path.join(out_dir, "train.log.jsonl"), "a", encoding="utf-8")
    t0 = time.time()
    avg = None
    for step in range(start, steps):
        q, r = (t.to(dev) for t in sampler.batch(batch))
        lossv = pair_loss(net(q), net(r), loss)
        opt.zero_grad(set_to_none=True)
        lossv.backward()
        opt.step()
        sched.step()
        avg = lossv.item() if avg is None else 0.95 * avg + 0.05 * lossv.item()
        done = step + 1
        if done % 20 == 0 or done == steps:
            rec = {"step": done, "loss": round(avg, 4), "s": round(time.time() - t0, 1)}
            if done % ckpt_every == 0 or done == steps:
                rec["val_r1_128"] = recall_at_1(net, val_q, val_r)
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            log(" ".join(f"{k} {v}" for k, v in rec.items()))
        if done % ckpt_every == 0 or done == steps:
            torch.save({"model": net.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "rng": sampler.rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state(), "step": done}, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)
            M.save_model(net.eval(), os.path.join(out_dir, f"model-{done:06d}.safetensors"))
            net.train()
    logf.close()
    path = os.path.join(out_dir, "model.safetensors")
    M.save_model(net.eval(), path)
    return path


def main_args(p) -> None:
    p.add_argument("--naip", required=True, help="folder of the NAIP GeoTIFFs (all years)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log, model.safetensors")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch", type=int, default=48, help="positive pairs per step")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--loss", choices=LOSSES, default="infonce")
    p.add_argument("--lr", type=float, default=5e-5, help="peak backbone learning rate (head: 10x)")
    p.add_argument("--input", type=int, default=64, help="model input side in pixels")
    p.add_argument("--config", help="model config JSON (default: the geo model of train.py)")
    p.add_argument("--tflite", help="ImageNet MobileNetV2 TFLite file (default: data/backbone)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device: cpu, cuda, cuda:1, ... (default: cuda when present)")
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--ref-rotations", type=int, default=4, choices=(1, 2, 4),
                   help="headings the map encodes each tile at (config ref_rotations)")
    p.add_argument("--near", type=int, default=4,
                   help="tiles per group of nearby tiles in a batch (1: tiles drawn anywhere)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")


def run(a, repo_root: str) -> int:
    cfg = ModelConfig.load(a.config) if a.config else default_config(a.input, a.ref_rotations)
    path = train(a.naip, a.out, steps=a.steps, batch=a.batch, seed=a.seed, loss=a.loss,
                 lr=a.lr, config=cfg, threads=a.threads, ckpt_every=a.ckpt_every,
                 resume=a.resume, near=a.near, device=a.device,
                 tflite_path=a.tflite or os.path.join(repo_root, "data", "backbone",
                                                      "mobilenet_v2_1.0_224_quant.tflite"))
    print(f"wrote {path}")
    return 0

