"""The architecture config of a geoloc model.

A model file (safetensors) stores this config as a JSON string under
__metadata__["config"]; the C engine builds its graph from the same fields.
Every field has a default, so `{}` (or no config at all) is the default
architecture: MobileNetV2 1.0 + one overlap scanning module -> 512-d.
Unknown fields are an error (a typo must not silently give the default).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import List, Optional

# Indices into MobileNetV2's `features` list (see model.py), with the
# channel count at width 1.0 and the stride relative to the input:
#   0: 32 @ /2   1: 16 @ /2   2-3: 24 @ /4   4-6: 32 @ /8   7-10: 64 @ /16
#   11-13: 96 @ /16   14-16: 160 @ /32   17: 320 @ /32   18: 1280 @ /32
MOBILENET_V2_LAST = 18
# Default levels for hierarchical fusion: the last feature of the /8, /16
# and /32 stages (low, mid, high level), as in the ICASSP 2021 paper's use
# of conv3/conv4/conv5 of VGG16.
HIERARCHICAL_LEVELS = [6, 13, 18]


class ConfigError(ValueError):
    """An invalid model config; the message names the field."""


@dataclass
class ModelConfig:
    # --- backbone ---------------------------------------------------------
    backbone: str = "mobilenet_v2"      # the only one so far
    width_mult: float = 1.0
    activation: str = "relu6"           # "relu6" | "relu"
    # true: conv (no bias) + batch norm, as trained; the C engine folds BN
    # into the conv when it loads the model.  false: conv with bias and no
    # BN tensors (BN already folded, as in the imported TFLite model).
    bn: bool = True
    bn_eps: float = 1e-5
    # "tf_same": TensorFlow SAME padding, computed from the input size: the
    # total padding max((ceil(in/s)-1)*s + d*(k-1)+1 - in, 0) is split with
    # the smaller half before (top/left) and the larger after (bottom/right).
    # The pretrained weights come from TensorFlow, so this is the default.
    # "torch": symmetric d*(k-1)/2 on each side, as PyTorch's MobileNetV2.
    padding: str = "tf_same"

    # --- input ------------------------------------------------------------
    # [height, width] the image is resized to before the backbone.
    input_size: List[int] = field(default_factory=lambda: [224, 224])
    # Per-channel (R, G, B) normalisation of uint8-range pixels:
    # x = (pixel - mean) / std.  127.5/127.5 maps 0..255 to -1..1, the
    # MobileNetV2 (TensorFlow) convention.
    mean: List[float] = field(default_factory=lambda: [127.5, 127.5, 127.5])
    std: List[float] = field(default_factory=lambda: [127.5, 127.5, 127.5])

    # --- AS-Geo learnable resizer ----------------------------------------
    resizer: bool = False
    resizer_channels: int = 16
    resizer_reduction: int = 4          # SK and SE bottleneck: C / r (at least 4)

    # --- heads --------------------------------------------------------------
    # ImageNet classifier on the last feature map (global average pool +
    # linear); 0 = none.  Used to check imported weights, not for geo.
    num_classes: int = 0
    # Overlap scanning module(s) producing the descriptor; false for a pure
    # classifier (e.g. the imported TFLite model).
    descriptor: bool = True
    # Backbone feature indices the OSM runs on: one = plain FOENet head;
    # two or three = hierarchical fusion.
    levels: List[int] = field(default_factory=lambda: [MOBILENET_V2_LAST])
    # Initial fusion weights, one per level; null = 0.1/0.4/0.5 for three
    # levels, 0.4/0.6 for two (low-level weight moved to the mid level).
    fusion_init: Optional[List[float]] = None
    osm_dim: int = 512                  # D
    osm_groups: int = 4                 # G; D % G == 0
    osm_se_reduction: int = 4
    pool: str = "mean"                  # "mean" (overlap-weighted) | "gem"
    gem_p: float = 3.0
    descriptor_dim: int = 512
    # Query and reference branches share weights; "separate" is not
    # implemented (docs/ARCHITECTURE.md section 5).
    branches: str = "shared"

    # --- map --------------------------------------------------------------
    # How many headings each reference tile is encoded at (1, 2 or 4): the
    # map builder stores the tile turned to headings 0, 360/R, ... (whole
    # quarter turns of the pixels, no resampling), and a query is scored
    # against the best of them, so the model only has to be invariant to
    # rotation within +-180/R degrees.  The model is trained to match.
    ref_rotations: int = 1

    # --- fine stage -----------------------------------------------------------
    # A dense descriptor head on one backbone block, trained for the fine
    # stage (train_dense.py; OPS.md 3.5): null = none (the fine stage uses
    # the raw block features), else {"layer": L, "dim": D, "hidden": H}, all
    # integers: L the backbone block it reads (1..17), D >= that block's
    # channels the output channels, H >= 1 the hidden channels; optionally
    # "size": S, the fine stage's square input in pixels (a multiple of
    # block L's stride, 16..1024; absent: input_size), so that the head can
    # read a deeper block at the same cell size in metres; optionally
    # "fuse_layer": B and "fuse_weight": w (together, 0 < w < 1): the fine
    # stage's cells join the head's with block B's raw cells at k times the
    # detail (k = B's stride / L's), so that a cosine is (1 - w) times the
    # head's plus w times block B's (fine.cells). Left out of the JSON when
    # null, so configs and model files without a head read as before.
    dense_head: Optional[dict] = None

    # ------------------------------------------------------------------------
    def validate(self) -> "ModelConfig":
        def bad(name, why):
            raise ConfigError(f"config field {name!r}: {why} (got {getattr(self, name)!r})")

        if self.backbone != "mobilenet_v2":
            bad("backbone", "only 'mobilenet_v2' is supported")
        if not (isinstance(self.width_mult, (int, float)) and self.width_mult > 0):
            bad("width_mult", "must be a positive number")
        if self.activation not in ("relu6", "relu"):
            bad("activation", "must be 'relu6' or 'relu'")
        if not isinstance(self.bn, bool):
            bad("bn", "must be true or false")
        if not (isinstance(self.bn_eps, (int, float)) and self.bn_eps > 0):
            bad("bn_eps", "must be a positive number")
        if self.padding not in ("tf_same", "torch"):
            bad("padding", "must be 'tf_same' or 'torch'")
        if (not isinstance(self.input_size, list) or len(self.input_size) != 2
                or not all(isinstance(v, int) and v >= 32 for v in self.input_size)):
            bad("input_size", "must be [height, width], integers >= 32")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if not isinstance(v, list) or len(v) != 3 or not all(isinstance(x, (int, float)) for x in v):
                bad(name, "must be a list of 3 numbers (R, G, B)")
        if any(s <= 0 for s in self.std):
            bad("std", "entries must be positive")
        for name in ("resizer_channels", "resizer_reduction", "osm_dim", "osm_groups",
                     "osm_se_reduction", "descriptor_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                bad(name, "must be a positive integer")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            bad("num_classes", "must be a non-negative integer")
        if not self.descriptor and self.num_classes == 0:
            bad("descriptor", "a model needs a descriptor head or a classifier")
        if (not isinstance(self.levels, list) or not 1 <= len(self.levels) <= 3
                or not all(isinstance(v, int) and 0 <= v <= MOBILENET_V2_LAST for v in self.levels)
                or sorted(set(self.levels)) != self.levels):
            bad("levels", f"must be 1 to 3 increasing feature indices in 0..{MOBILENET_V2_LAST}")
        if self.fusion_init is not None and (
                not isinstance(self.fusion_init, list) or len(self.fusion_init) != len(self.levels)):
            bad("fusion_init", "must be null or one number per level")
        if self.osm_dim % self.osm_groups:
            bad("osm_groups", f"must divide osm_dim={self.osm_dim}")
        if self.pool not in ("mean", "gem"):
            bad("pool", "must be 'mean' or 'gem'")
        if not (isinstance(self.gem_p, (int, float)) and self.gem_p > 0):
            bad("gem_p", "must be a positive number")
        if self.ref_rotations not in (1, 2, 4) or isinstance(self.ref_rotations, bool):
            bad("ref_rotations", "must be 1, 2 or 4")
        if self.ref_rotations > 1 and self.input_size[0] != self.input_size[1]:
            bad("ref_rotations", "needs a square input_size")
        if self.branches != "shared":
            bad("branches", "only 'shared' is implemented")
        if self.dense_head is not None:
            self._validate_dense_head(bad)
        return self

    DENSE_HEAD_KEYS = ("layer", "dim", "hidden")
    DENSE_HEAD_OPTIONAL = ("size", "fuse_layer", "fuse_weight")

    def _validate_dense_head(self, bad) -> None:
        h = self.dense_head
        if not isinstance(h, dict):
            bad("dense_head", 'must be null or an object {"layer": L, "dim": D, "hidden": H}')
        unknown = sorted(set(h) - set(self.DENSE_HEAD_KEYS) - set(self.DENSE_HEAD_OPTIONAL))
        if unknown:
            bad("dense_head", f"unknown key(s) {', '.join(unknown)}")
        missing = [k for k in self.DENSE_HEAD_KEYS if k not in h]
        if missing:
            bad("dense_head", f"missing key(s) {', '.join(missing)}")
        for k in self.DENSE_HEAD_KEYS + tuple(k for k in ("size", "fuse_layer") if k in h):
            if not isinstance(h[k], int) or isinstance(h[k], bool):
                bad("dense_head", f"{k} must be an integer")
        if not 1 <= h["layer"] <= MOBILENET_V2_LAST - 1:
            bad("dense_head", f"layer must be a backbone block 1..{MOBILENET_V2_LAST - 1}")
        if h["hidden"] < 1:
            bad("dense_head", "hidden must be at least 1")
        c = self.block_channels()[h["layer"]]
        if h["dim"] < c:
            bad("dense_head", f"dim must be at least the {c} channels of block {h['layer']}")
        if "size" in h:
            from .fine import layer_strides                    # fine imports this module
            s = layer_strides()[h["layer"]]
            if not 16 <= h["size"] <= 1024 or h["size"] % s:
                bad("dense_head", f"size must be 16..1024 and a multiple of block "
                                  f"{h['layer']}'s stride {s}")
        if ("fuse_layer" in h) != ("fuse_weight" in h):
            bad("dense_head", "fuse_layer and fuse_weight go together")
        if "fuse_layer" in h:
            from .fine import layer_strides                    # fine imports this module
            w, b = h["fuse_weight"], h["fuse_layer"]
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < 1:
                bad("dense_head", "fuse_weight must be a number strictly between 0 and 1")
            if not 1 <= b <= MOBILENET_V2_LAST - 1:
                bad("dense_head", f"fuse_layer must be a backbone block 1..{MOBILENET_V2_LAST - 1}")
            st = layer_strides()
            sa, sb = st[h["layer"]], st[b]
            size = h.get("size", self.input_size[1]) * (sb // sa)
            cb = self.block_channels()[b]
            if h["dim"] + cb > 4096:
                bad("dense_head", f"dim {h['dim']} and block {b}'s {cb} channels are more "
                                  f"than 4096 a cell")
            if b == h["layer"] or sb % sa or size > 1024:
                bad("dense_head", f"fuse_layer must be another block whose stride ({sb}) is a "
                                  f"multiple of block {h['layer']}'s ({sa}), the fused input at "
                                  f"most 1024 pixels ({size})")

    def block_channels(self) -> List[int]:
        """Channels of the backbone's feature indices 0..18 at this width
        (as model.MobileNetV2 builds them)."""
        from .model import MOBILENET_V2_STAGES, make_divisible   # model imports this module
        out = [make_divisible(32 * self.width_mult)]
        for _, c, n, _ in MOBILENET_V2_STAGES:
            out += [make_divisible(c * self.width_mult)] * n
        out.append(make_divisible(1280 * max(1.0, self.width_mult)))
        return out

    def fusion_weights(self) -> List[float]:
        if self.fusion_init is not None:
            return [float(v) for v in self.fusion_init]
        return {1: [1.0], 2: [0.4, 0.6], 3: [0.1, 0.4, 0.5]}[len(self.levels)]

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        if d["dense_head"] is None:     # no head: the JSON of configs before the field
            del d["dense_head"]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        d = dict(d)
        if isinstance(d.get("input_size"), int):  # 224 is shorthand for [224, 224]
            d["input_size"] = [d["input_size"], d["input_size"]]
        return cls(**d).validate()

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: Optional[str]) -> "ModelConfig":
        if path is None:
            return cls().validate()
        with open(path, encoding="utf-8") as f:
            try:
                return cls.from_json(f.read())
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
