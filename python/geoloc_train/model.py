"""geoloc's reference network, built from a ModelConfig.

    pixels [B,3,H,W] (0..255, any H, W)
      -> normalize (mean/std per channel)
      -> resize to config.input_size: bilinear, or the AS-Geo resizer
      -> MobileNetV2 features 0..18
      -> overlap scanning module (OSM) on each level in config.levels
      -> one level: its descriptor; several: weighted sum, L2-normalised
    and optionally an ImageNet classifier on feature 18.

Everything is computed with ops.py; OPS.md is the op-level specification
for the C engine, and "Tensor names" in OPS.md lists every tensor a model
file holds.  Parameters live in ordinary nn.Conv2d / nn.Linear /
nn.BatchNorm2d modules so that state_dict names are stable and training
works as usual; forward() only reads their tensors.
"""

from __future__ import annotations

import json
import math
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from . import ops
from . import safetensors
from .config import ConfigError, ModelConfig

FORMAT = "geoloc-model"
FORMAT_VERSION = "1"

# (expansion t, output channels c, repeats n, first stride s): MobileNetV2's
# inverted residual stages, identical in TF-slim and torchvision.
MOBILENET_V2_STAGES = [
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
]


def make_divisible(v: float, divisor: int = 8) -> int:
    """Channel rounding of MobileNet (TF-slim `_make_divisible`)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # never round down by more than 10%
        new_v += divisor
    return new_v


def _tap(trace: Optional[Dict[str, torch.Tensor]], name: str, t: torch.Tensor) -> None:
    """Record an intermediate output for the test vectors."""
    if trace is not None:
        trace[name] = t.detach().clone()


class ConvUnit(nn.Module):
    """conv -> [batch norm] -> activation.

    With bn the conv has no bias (BN's beta plays that role); without bn
    the conv has a bias (BN folded in).  `padding` is "tf_same" or "torch".
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 act: str = "relu6", bn: bool = False, bn_eps: float = 1e-5,
                 padding: str = "torch", dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, 0, dilation, groups, bias=not bn)
        self.bn = nn.BatchNorm2d(cout, eps=bn_eps) if bn else None
        self.act, self.stride, self.dilation, self.groups = act, stride, dilation, groups
        self.padding = padding

    def forward(self, x):
        x = ops.conv2d(x, self.conv.weight, self.conv.bias, self.stride, self.dilation,
                       self.groups, self.padding)
        if self.bn is not None:
            x = self.bn(x)  # F.batch_norm; in eval: (x-mean)/sqrt(var+eps)*gamma+beta
        return ops.activation(x, self.act)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand, act] -> 3x3 depthwise, act -> 1x1 project (linear)
    (+ input, when stride is 1 and the channel count is unchanged)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, cfg: ModelConfig):
        super().__init__()
        hidden = int(round(cin * expand))
        kw = dict(bn=cfg.bn, bn_eps=cfg.bn_eps, padding=cfg.padding)
        self.expand = ConvUnit(cin, hidden, 1, act=cfg.activation, **kw) if expand != 1 else None
        self.dw = ConvUnit(hidden, hidden, 3, stride, groups=hidden, act=cfg.activation, **kw)
        self.project = ConvUnit(hidden, cout, 1, act="none", **kw)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.dw(y))
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """features[0] = 3x3/2 stem, features[1..17] = inverted residuals,
    features[18] = 1x1 conv to 1280 (x width when width > 1)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        kw = dict(act=cfg.activation, bn=cfg.bn, bn_eps=cfg.bn_eps, padding=cfg.padding)
        cin = make_divisible(32 * cfg.width_mult)
        feats: List[nn.Module] = [ConvUnit(3, cin, 3, 2, **kw)]
        self.channels = [cin]
        for t, c, n, s in MOBILENET_V2_STAGES:
            cout = make_divisible(c * cfg.width_mult)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, cfg))
                self.channels.append(cout)
                cin = cout
        last = make_divisible(1280 * max(1.0, cfg.width_mult))
        feats.append(ConvUnit(cin, last, 1, **kw))
        self.channels.append(last)
        self.features = nn.ModuleList(feats)

    def forward(self, x, want: List[int], trace=None) -> Dict[int, torch.Tensor]:
        out = {}
        for i, f in enumerate(self.features[:max(want) + 1]):
            x = f(x)
            _tap(trace, f"backbone.features.{i}", x)
            if i in want:
                out[i] = x
        return out


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(mean_hw(x))))): channel reweighting."""

    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(c, hidden)
        self.fc2 = nn.Linear(hidden, c)

    def forward(self, x):
        s = ops.global_avg_pool(x)
        e = ops.sigmoid(ops.linear(torch.relu(ops.linear(s, self.fc1.weight, self.fc1.bias)),
                                   self.fc2.weight, self.fc2.bias))
        return x * e[:, :, None, None]


class SelectiveKernel(nn.Module):
    """SKNet block with two 3x3 branches (dilation 1 and 2: receptive fields
    3 and 5); per channel, a softmax over the branches picks the mix."""

    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.branch0 = ConvUnit(c, c, 3, act="relu")
        self.branch1 = ConvUnit(c, c, 3, act="relu", dilation=2)
        self.fc = nn.Linear(c, hidden)
        self.select = nn.Linear(hidden, 2 * c)  # rows 0..c-1: branch0, c..2c-1: branch1

    def forward(self, x):
        u0, u1 = self.branch0(x), self.branch1(x)
        z = torch.relu(ops.linear(ops.global_avg_pool(u0 + u1), self.fc.weight, self.fc.bias))
        logits = ops.linear(z, self.select.weight, self.select.bias)
        b, c = logits.shape[0], u0.shape[1]
        a = torch.softmax(logits.view(b, 2, c), dim=1)
        return u0 * a[:, 0, :, None, None] + u1 * a[:, 1, :, None, None]


class Resizer(nn.Module):
    """AS-Geo learnable resizer: bilinear(x) + a learned residual.

    The residual extracts features at the input resolution (so detail lost
    by plain downsampling is still visible), resizes them bilinearly, then
    refines them with selective-kernel and squeeze-excitation blocks.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.resizer_channels
        hidden = max(c // cfg.resizer_reduction, 4)
        self.size = cfg.input_size
        self.stem = ConvUnit(3, c, 3, act="relu")
        self.sk = SelectiveKernel(c, hidden)
        self.se = SqueezeExcite(c, hidden)
        self.out = ConvUnit(c, 3, 3, act="none")
        # Zero output: a fresh resizer starts as plain bilinear resizing.
        nn.init.zeros_(self.out.conv.weight)
        nn.init.zeros_(self.out.conv.bias)

    def forward(self, x, trace=None):
        base = ops.resize_bilinear(x, self.size)
        f = ops.resize_bilinear(self.stem(x), self.size)
        _tap(trace, "resizer.features", f)
        r = self.out(self.se(self.sk(f)))
        _tap(trace, "resizer.residual", r)
        return base + r


class OSMGroup(nn.Module):
    """One subspace of the overlap scanning module (d channels)."""

    def __init__(self, d: int, cfg: ModelConfig):
        super().__init__()
        self.q = nn.Conv2d(d, d, 1)
        self.k = nn.Conv2d(d, d, 1)
        self.v = nn.Conv2d(d, d, 1)
        self.se = SqueezeExcite(d, max(d // cfg.osm_se_reduction, 1))
        self.overlap = nn.Conv2d(d, 1, 1)
        self.pool, self.gem_p = cfg.pool, cfg.gem_p

    def forward(self, x, trace=None, name=""):
        def c1(conv, t):
            return ops.conv2d(t, conv.weight, conv.bias)
        # Long-range spatial dependencies, with a residual.
        x = x + ops.spatial_attention(c1(self.q, x), c1(self.k, x), c1(self.v, x))
        _tap(trace, name + ".attention", x)
        # Channel dependencies.
        x = self.se(x)
        _tap(trace, name + ".se", x)
        # Where this view likely overlaps the other one.
        m = ops.sigmoid(c1(self.overlap, x))
        _tap(trace, name + ".overlap", m)
        if self.pool == "gem":
            v = ops.weighted_gem_pool(x, m, self.gem_p)
        else:
            v = ops.weighted_mean_pool(x, m)
        _tap(trace, name + ".pooled", v)
        return v


class OSM(nn.Module):
    """Overlap scanning module: 1x1 projection to D channels, G subspaces,
    concatenated, linear projection, L2 normalisation."""

    def __init__(self, cin: int, cfg: ModelConfig):
        super().__init__()
        self.d = cfg.osm_dim // cfg.osm_groups
        self.proj = nn.Conv2d(cin, cfg.osm_dim, 1)
        self.groups = nn.ModuleList(OSMGroup(self.d, cfg) for _ in range(cfg.osm_groups))
        self.embed = nn.Linear(cfg.osm_dim, cfg.descriptor_dim)

    def forward(self, x, trace=None, name="osm"):
        p = ops.conv2d(x, self.proj.weight, self.proj.bias)
        _tap(trace, name + ".proj", p)
        parts = torch.split(p, self.d, dim=1)  # channels [g*d, (g+1)*d) -> group g
        v = torch.cat([g(part, trace, f"{name}.groups.{i}") for i, (g, part)
                       in enumerate(zip(self.groups, parts))], dim=1)
        e = ops.linear(v, self.embed.weight, self.embed.bias)
        _tap(trace, name + ".embed", e)
        return ops.l2_normalize(e)


class DenseHead(nn.Module):
    """The fine stage's dense descriptor head (config dense_head; OPS.md
    3.5) on a backbone block's feature map f [B, C, H, W]:

        xn  = f / max(||f||_2 over channels, 1e-12)      per pixel
        out = conv1x1(xn; proj) + conv1x1(relu(conv3x3(relu(conv1x1(xn; b1)); b2)); b3)

    (3x3: stride 1, zero padding 1), dim output channels, not normalised.
    reset_identity() gives the start of training: proj the identity on the
    first C channels (zero for the others), b3 zero, so the output is xn
    padded with zeros."""

    def __init__(self, cin: int, dim: int, hidden: int):
        super().__init__()
        self.cin, self.dim, self.hidden = cin, dim, hidden
        self.proj = nn.Conv2d(cin, dim, 1)
        self.b1 = nn.Conv2d(cin, hidden, 1)
        self.b2 = nn.Conv2d(hidden, hidden, 3)
        self.b3 = nn.Conv2d(hidden, dim, 1)

    @torch.no_grad()
    def reset_identity(self, generator: Optional[torch.Generator] = None) -> None:
        """proj = identity, b1 and b2 He-initialised (fan_in, from
        `generator`), biases and b3 zero."""
        self.proj.weight.zero_()
        for i in range(self.cin):
            self.proj.weight[i, i, 0, 0] = 1.0
        for conv in (self.b1, self.b2):
            fan_in = conv.weight[0].numel()
            conv.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
        for conv in (self.proj, self.b1, self.b2, self.b3):
            conv.bias.zero_()
        self.b3.weight.zero_()

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        xn = ops.l2_normalize(f)                      # dim 1: channels, per pixel
        p = ops.conv2d(xn, self.proj.weight, self.proj.bias)
        b = torch.relu(ops.conv2d(xn, self.b1.weight, self.b1.bias))
        b = torch.relu(ops.conv2d(b, self.b2.weight, self.b2.bias, padding="torch"))
        return p + ops.conv2d(b, self.b3.weight, self.b3.bias)


class GeoNet(nn.Module):
    def __init__(self, cfg: Optional[ModelConfig] = None):
        super().__init__()
        self.cfg = (cfg or ModelConfig()).validate()
        cfg = self.cfg
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32), persistent=False)
        self.resizer = Resizer(cfg) if cfg.resizer else None
        self.backbone = MobileNetV2(cfg)
        last = self.backbone.channels[-1]
        self.classifier = nn.Linear(last, cfg.num_classes) if cfg.num_classes else None
        if cfg.descriptor:
            self.osm = nn.ModuleList(OSM(self.backbone.channels[l], cfg) for l in cfg.levels)
            self.fusion = None
            if len(cfg.levels) > 1:
                self.fusion = nn.Module()
                self.fusion.weight = nn.Parameter(torch.tensor(cfg.fusion_weights()))
        else:
            self.osm, self.fusion = None, None
        self._init_weights()
        # Built last, so that a model without a head draws the same random
        # init as before the head existed (and the other tensors of a model
        # with one are those of the same model without it).
        self.dense_head = None
        if cfg.dense_head is not None:
            h = cfg.dense_head
            self.dense_head = DenseHead(self.backbone.channels[h["layer"]], h["dim"], h["hidden"])
            self.dense_head.reset_identity()

    def _init_weights(self):
        # As torchvision's MobileNetV2: He init for convs, small normal for
        # linear layers; the resizer keeps its zero output conv.
        for name, m in self.named_modules():
            if name.startswith("resizer.out"):
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def preprocess(self, img: torch.Tensor, trace=None) -> torch.Tensor:
        """[B,3,H,W] uint8-range pixels (any dtype) -> [B,3,h,w] network input."""
        if img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f"expected an image batch [B, 3, H, W], got shape {list(img.shape)}")
        x = ops.normalize(img.to(torch.float32), self.mean, self.std)
        x = self.resizer(x, trace) if self.resizer is not None else \
            ops.resize_bilinear(x, self.cfg.input_size)
        _tap(trace, "preprocess", x)
        return x

    def forward(self, img: torch.Tensor, trace: Optional[Dict[str, torch.Tensor]] = None
                ) -> torch.Tensor:
        """Descriptors [B, descriptor_dim], L2-normalised."""
        if self.osm is None:
            raise ConfigError("this model has no descriptor head (config descriptor=false)")
        x = self.preprocess(img, trace)
        feats = self.backbone(x, self.cfg.levels, trace)
        descs = [osm(feats[l], trace, f"osm.{i}") for i, (osm, l)
                 in enumerate(zip(self.osm, self.cfg.levels))]
        if self.fusion is None:
            out = descs[0]
        else:
            w = self.fusion.weight
            fused = sum(w[i] * d for i, d in enumerate(descs))
            _tap(trace, "fusion", fused)
            out = ops.l2_normalize(fused)
        _tap(trace, "descriptor", out)
        return out

    def classify(self, img: torch.Tensor) -> torch.Tensor:
        """ImageNet logits [B, num_classes]."""
        if self.classifier is None:
            raise ConfigError("this model has no classifier (config num_classes=0)")
        x = self.preprocess(img)
        f = self.backbone(x, [len(self.backbone.features) - 1])
        pooled = ops.global_avg_pool(next(iter(f.values())))
        return ops.linear(pooled, self.classifier.weight, self.classifier.bias)


# --- model files ---------------------------------------------------------------

def model_tensors(model: GeoNet) -> Dict[str, torch.Tensor]:
    """The tensors a model file holds: the state dict, minus BN's batch
    counter (training bookkeeping, not part of the function)."""
    return {k: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


# The dtypes a model file may store; both load as float32 (here and in the C
# engine).  float16 halves the file at ~3 decimal digits per weight.
FILE_DTYPES = (torch.float32, torch.float16)


def save_model(model: GeoNet, path: str, dtype: torch.dtype = torch.float32) -> None:
    """Write the model file, its tensors stored as dtype (float32 or float16).

    float16 rounds every value to nearest; a finite value beyond the float16
    range (65504) would become infinite, so such a model is refused instead.
    """
    if dtype not in FILE_DTYPES:
        raise ValueError(f"model files store float32 or float16, not {dtype}")
    tensors = model_tensors(model)
    if dtype != torch.float32:
        for k, v in tensors.items():
            h = v.to(dtype)
            if bool((torch.isinf(h) & torch.isfinite(v)).any()):
                raise ValueError(f"tensor {k!r} has values beyond the {dtype} range "
                                 f"(max |value| {float(v.abs().max()):g})")
            tensors[k] = h
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.cfg.to_json()}
    safetensors.save(path, tensors, meta)


def load_model(path: str) -> GeoNet:
    tensors, meta = safetensors.load(path)
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path}: __metadata__ format is {meta.get('format')!r}, not {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: unsupported format_version {meta.get('format_version')!r} "
                          f"(this code reads {FORMAT_VERSION!r})")
    if "config" not in meta:
        raise ConfigError(f"{path}: __metadata__ has no 'config'")
    try:
        cfg = ModelConfig.from_json(meta["config"])
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    model = GeoNet(cfg)
    expected = model_tensors(model)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ConfigError(f"{path}: tensors do not match the config: missing {missing[:5]}"
                          f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                          f"{'...' if len(extra) > 5 else ''}")
    for k, v in tensors.items():
        if list(v.shape) != list(expected[k].shape):
            raise ConfigError(f"{path}: tensor {k!r} has shape {list(v.shape)}, "
                              f"the config needs {list(expected[k].shape)}")
        if v.dtype not in FILE_DTYPES:
            raise ConfigError(f"{path}: tensor {k!r} is {v.dtype}, expected float32 or float16")
        # The model computes in float32 whatever the file stores (float16 to
        # float32 is exact).
        tensors[k] = v.to(torch.float32)
    model.load_state_dict(tensors, strict=False)  # strict would want num_batches_tracked
    return model.eval()


# --- test helpers ---------------------------------------------------------------

def fold_batch_norm(model: GeoNet) -> GeoNet:
    """The same function without BN tensors (config bn=false).

    Per output channel o, with s = gamma[o] / sqrt(var[o] + eps):
        w'[o] = w[o] * s,   b'[o] = beta[o] - mean[o] * s
    This is the folding the C engine does when it loads a bn=true model.
    """
    cfg = ModelConfig.from_dict({**json.loads(model.cfg.to_json()), "bn": False})
    out = GeoNet(cfg)
    src_modules = dict(model.named_modules())
    state: Dict[str, torch.Tensor] = {}
    for name, m in out.named_modules():
        if not isinstance(m, ConvUnit):
            continue
        unit = src_modules[name]
        w = unit.conv.weight.detach().double()
        if unit.bn is not None:
            bn = unit.bn
            s = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            b = bn.bias.detach().double() - bn.running_mean.double() * s
            w = w * s.view(-1, 1, 1, 1)
        else:  # the resizer's convs never have BN
            b = unit.conv.bias.detach().double()
        state[name + ".conv.weight"] = w.float()
        state[name + ".conv.bias"] = b.float()
    src = model_tensors(model)
    for k in model_tensors(out):
        if k not in state:  # not a ConvUnit conv: same name, same value
            state[k] = src[k]
    out.load_state_dict(state, strict=False)
    return out.eval()


@torch.no_grad()
def randomize_for_test(model: GeoNet, seed: int) -> GeoNet:
    """Make every tensor of a fresh model non-trivial, for parity tests.

    A freshly initialised model has zero biases, identity BN statistics and
    a zero resizer output: a C engine that ignored any of those would still
    match.  So: BN statistics are calibrated on random images (realistic
    activation ranges rather than values that explode or vanish), then
    every bias, BN affine parameter and the resizer output conv get random
    values, and fusion weights are perturbed.
    """
    g = torch.Generator().manual_seed(seed + 1)
    cfg = model.cfg
    for name, m in model.named_modules():
        if name.startswith("resizer.out") and isinstance(m, nn.Conv2d):
            m.weight.normal_(0.0, 0.02, generator=g)
    # Random linear layers with std 0.01 make the OSM's SE and overlap maps
    # almost constant; give them He-like scales so those paths matter.
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name != "classifier":
            m.weight.normal_(0.0, 1.0 / math.sqrt(m.in_features), generator=g)
    if cfg.bn:
        model.train()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
        h, w = cfg.input_size
        for _ in range(2):
            img = _smooth_noise(g, 4, h, w)
            x = model.preprocess(img)
            model.backbone(x, [len(model.backbone.features) - 1])
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
    for name, p in model.named_parameters():
        if name.endswith(".bn.weight"):
            p.mul_(torch.empty_like(p).uniform_(0.7, 1.3, generator=g))
        elif name.endswith(".bias"):
            p.add_(torch.empty_like(p).normal_(0.0, 0.05, generator=g))
        elif name == "fusion.weight":
            p.add_(torch.empty_like(p).uniform_(-0.05, 0.05, generator=g))
    h = model.dense_head
    if h is not None:
        # Not the identity start: proj mixes channels, b1..b3 are random (b3
        # non-zero), so a C engine that ignored any tensor would not match.
        h.proj.weight.add_(torch.randn(h.proj.weight.shape, generator=g) * (0.3 / math.sqrt(h.cin)))
        for conv in (h.b1, h.b2):
            conv.weight.normal_(0.0, math.sqrt(2.0 / conv.weight[0].numel()), generator=g)
        h.b3.weight.normal_(0.0, 0.5 / math.sqrt(h.hidden), generator=g)
        for conv in (h.proj, h.b1, h.b2, h.b3):
            conv.bias.normal_(0.0, 0.05, generator=g)
    return model.eval()


def _smooth_noise(g: torch.Generator, b: int, h: int, w: int) -> torch.Tensor:
    """Random uint8-range images with structure at several scales."""
    img = torch.zeros(b, 3, h, w)
    for cells, amp in ((4, 80.0), (16, 40.0), (64, 20.0)):
        coarse = torch.randn(b, 3, cells, cells, generator=g)
        img += amp * ops.resize_bilinear(coarse, (h, w))
    img += 8.0 * torch.randn(b, 3, h, w, generator=g)
    return torch.clamp(img + 128.0, 0.0, 255.0).round()
