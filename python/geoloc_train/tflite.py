"""Import of the 8-bit TFLite MobileNetV2 into a float geoloc model.

The .tflite file is a FlatBuffer with the TFLite schema (schema.fbs,
file identifier "TFL3").  Rather than generated schema code (not available
offline) or a dependency, this module reads the few tables it needs by hand;
FlatBuffers' wire format is small:

  * the file starts with a u32 offset to the root table;
  * a table starts with an i32 `soffset`; its vtable is at table - soffset
    and holds u16 vtable size, u16 table size, then one u16 per field: the
    field's offset inside the table, 0 when the field is absent (default);
  * a reference field (table, vector, string) holds a u32 offset relative
    to the field's own position; vectors and strings start with a u32
    length; a vector of tables holds one such u32 offset per element;
  * a union is two fields: a u8 type tag, then the reference to the table.

Every read is bounds-checked, so a truncated or corrupt file raises
TFLiteError instead of decoding garbage.

Schema field ids used below (from TFLite's schema.fbs):
  Model:            1 operator_codes, 2 subgraphs, 4 buffers
  OperatorCode:     0 deprecated_builtin_code (i8), 3 builtin_code (i32)
  SubGraph:         0 tensors, 1 inputs, 2 outputs, 3 operators
  Tensor:           0 shape, 1 type, 2 buffer, 3 name, 4 quantization
  QuantizationParameters: 2 scale [f32], 3 zero_point [i64], 6 quantized_dimension
  Operator:         0 opcode_index, 1 inputs, 2 outputs,
                    3 builtin_options_type (u8), 4 builtin_options
  Buffer:           0 data [u8]
  Conv2DOptions:    0 padding, 1 stride_w, 2 stride_h, 3 fused_activation,
                    4 dilation_w, 5 dilation_h
  DepthwiseConv2DOptions: 0 padding, 1 stride_w, 2 stride_h,
                    3 depth_multiplier, 4 fused_activation, 5 dilation_w, 6 dilation_h
  Pool2DOptions:    0 padding, 1 stride_w, 2 stride_h, 3 filter_w, 4 filter_h,
                    5 fused_activation
  AddOptions:       0 fused_activation
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Dict, List, Optional

import torch

from .config import ModelConfig
from .model import GeoNet, InvertedResidual

# BuiltinOperator enum values we recognise.
OP_NAMES = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D",
    4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE", 9: "FULLY_CONNECTED",
    14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL", 19: "RELU", 21: "RELU6",
    22: "RESHAPE", 25: "SOFTMAX", 40: "MEAN", 114: "QUANTIZE",
}
# TensorType enum.
TENSOR_TYPES = {0: "FLOAT32", 1: "FLOAT16", 2: "INT32", 3: "UINT8", 4: "INT64",
                5: "STRING", 6: "BOOL", 7: "INT16", 8: "COMPLEX64", 9: "INT8"}
# ActivationFunctionType enum.
ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
# Padding enum.
PADDINGS = {0: "SAME", 1: "VALID"}
# BuiltinOptions union tags of the option tables we decode.
OPT_CONV2D, OPT_DEPTHWISE, OPT_POOL2D, OPT_ADD = 1, 2, 5, 11


class TFLiteError(ValueError):
    """The .tflite file is corrupt or not the model we know how to import."""


class _Buf:
    """Bounds-checked little-endian reads from the flatbuffer."""

    def __init__(self, data: bytes):
        self.data = data

    def _check(self, pos: int, n: int, what: str) -> None:
        if pos < 0 or pos + n > len(self.data):
            raise TFLiteError(f"{what}: read of {n} bytes at offset {pos} is outside the "
                              f"{len(self.data)}-byte file")

    def u16(self, pos, what="u16"):
        self._check(pos, 2, what)
        return struct.unpack_from("<H", self.data, pos)[0]

    def i32(self, pos, what="i32"):
        self._check(pos, 4, what)
        return struct.unpack_from("<i", self.data, pos)[0]

    def u32(self, pos, what="u32"):
        self._check(pos, 4, what)
        return struct.unpack_from("<I", self.data, pos)[0]


class Table:
    """One flatbuffer table: typed access to fields by their schema id."""

    def __init__(self, buf: _Buf, pos: int, what: str):
        self.buf, self.pos, self.what = buf, pos, what
        self.vtable = pos - buf.i32(pos, f"{what} soffset")
        self.vsize = buf.u16(self.vtable, f"{what} vtable size")
        if self.vsize < 4 or self.vsize % 2:
            raise TFLiteError(f"{what}: bad vtable size {self.vsize}")

    def _field(self, fid: int) -> int:
        """Absolute position of field `fid`, or 0 when the field is absent."""
        voff = 4 + 2 * fid
        if voff >= self.vsize:
            return 0
        off = self.buf.u16(self.vtable + voff, f"{self.what} vtable")
        return self.pos + off if off else 0

    def scalar(self, fid: int, fmt: str, default):
        p = self._field(fid)
        if not p:
            return default
        size = struct.calcsize("<" + fmt)
        self.buf._check(p, size, f"{self.what} field {fid}")
        return struct.unpack_from("<" + fmt, self.buf.data, p)[0]

    def _ref(self, fid: int) -> int:
        p = self._field(fid)
        if not p:
            return 0
        return p + self.buf.u32(p, f"{self.what} field {fid} offset")

    def table(self, fid: int, what: str) -> Optional["Table"]:
        p = self._ref(fid)
        return Table(self.buf, p, what) if p else None

    def _vector(self, fid: int, elem_size: int):
        p = self._ref(fid)
        if not p:
            return 0, 0
        n = self.buf.u32(p, f"{self.what} field {fid} length")
        self.buf._check(p + 4, n * elem_size, f"{self.what} field {fid} vector")
        return p + 4, n

    def vector(self, fid: int, fmt: str) -> list:
        size = struct.calcsize("<" + fmt)
        start, n = self._vector(fid, size)
        return list(struct.unpack_from(f"<{n}{fmt}", self.buf.data, start)) if n else []

    def bytes(self, fid: int) -> bytes:
        start, n = self._vector(fid, 1)
        return self.buf.data[start:start + n]

    def string(self, fid: int) -> str:
        return self.bytes(fid).decode("utf-8", errors="replace")

    def tables(self, fid: int, what: str) -> List["Table"]:
        start, n = self._vector(fid, 4)
        out = []
        for i in range(n):
            p = start + 4 * i
            out.append(Table(self.buf, p + self.buf.u32(p), f"{what}[{i}]"))
        return out


@dataclasses.dataclass
class Quant:
    scale: List[float]
    zero_point: List[int]
    dim: int  # quantized_dimension: the axis the per-channel lists run along


@dataclasses.dataclass
class Tensor:
    index: int
    name: str
    shape: List[int]
    type: str
    data: bytes          # empty for activations
    quant: Optional[Quant]


@dataclasses.dataclass
class Op:
    index: int
    name: str            # BuiltinOperator name, e.g. "CONV_2D"
    inputs: List[int]
    outputs: List[int]
    options: Dict[str, object]


@dataclasses.dataclass
class Graph:
    tensors: List[Tensor]
    ops: List[Op]
    inputs: List[int]
    outputs: List[int]


def parse(data: bytes) -> Graph:
    """Decode the first subgraph of a .tflite file."""
    if len(data) < 8:
        raise TFLiteError(f"file is {len(data)} bytes: too short for a flatbuffer")
    if data[4:8] != b"TFL3":
        raise TFLiteError(f"file identifier is {bytes(data[4:8])!r}, not b'TFL3': not a TFLite model")
    buf = _Buf(data)
    model = Table(buf, buf.u32(0, "root offset"), "Model")

    opcodes = []
    for oc in model.tables(1, "OperatorCode"):
        # Schema v3a moved the code to an i32 field and kept the old i8 one;
        # the real code is the larger of the two.
        code = max(oc.scalar(0, "b", 0), oc.scalar(3, "i", 0))
        opcodes.append(code)
    buffers = [b.bytes(0) for b in model.tables(4, "Buffer")]
    subgraphs = model.tables(2, "SubGraph")
    if not subgraphs:
        raise TFLiteError("model has no subgraph")
    sg = subgraphs[0]

    tensors = []
    for i, t in enumerate(sg.tables(0, "Tensor")):
        ttype = t.scalar(1, "b", 0)
        if ttype not in TENSOR_TYPES:
            raise TFLiteError(f"tensor {i}: unknown tensor type {ttype}")
        bidx = t.scalar(2, "I", 0)
        if bidx >= len(buffers):
            raise TFLiteError(f"tensor {i}: buffer index {bidx} out of range ({len(buffers)} buffers)")
        q = t.table(4, f"tensor {i} quantization")
        quant = None
        if q is not None:
            scale = q.vector(2, "f")
            zp = q.vector(3, "q")
            if scale:
                if len(zp) != len(scale):
                    raise TFLiteError(f"tensor {i}: {len(scale)} scales but {len(zp)} zero points")
                quant = Quant(scale, zp, q.scalar(6, "i", 0))
        tensors.append(Tensor(i, t.string(3), t.vector(0, "i"), TENSOR_TYPES[ttype],
                              buffers[bidx], quant))

    ops = []
    for i, o in enumerate(sg.tables(3, "Operator")):
        oidx = o.scalar(0, "I", 0)
        if oidx >= len(opcodes):
            raise TFLiteError(f"operator {i}: opcode index {oidx} out of range")
        code = opcodes[oidx]
        name = OP_NAMES.get(code, f"BUILTIN_{code}")
        ins, outs = o.vector(1, "i"), o.vector(2, "i")
        for t in ins + outs:
            if t >= len(tensors):  # -1 marks an omitted optional input
                raise TFLiteError(f"operator {i} ({name}): tensor index {t} out of range")
        ops.append(Op(i, name, ins, outs, _options(o, name, i)))
    return Graph(tensors, ops, sg.vector(1, "i"), sg.vector(2, "i"))


def _options(o: Table, name: str, i: int) -> Dict[str, object]:
    tag = o.scalar(3, "B", 0)
    t = o.table(4, f"operator {i} options")
    expect = {"CONV_2D": OPT_CONV2D, "DEPTHWISE_CONV_2D": OPT_DEPTHWISE,
              "AVERAGE_POOL_2D": OPT_POOL2D, "MAX_POOL_2D": OPT_POOL2D, "ADD": OPT_ADD}.get(name)
    if expect is None:
        return {}
    if t is None or tag != expect:
        raise TFLiteError(f"operator {i} ({name}): options tag {tag}, expected {expect}")
    if name == "CONV_2D":
        return {"padding": PADDINGS.get(t.scalar(0, "b", 0), "?"),
                "stride": (t.scalar(2, "i", 0), t.scalar(1, "i", 0)),
                "activation": ACTIVATIONS.get(t.scalar(3, "b", 0), "?"),
                "dilation": (t.scalar(5, "i", 1), t.scalar(4, "i", 1))}
    if name == "DEPTHWISE_CONV_2D":
        return {"padding": PADDINGS.get(t.scalar(0, "b", 0), "?"),
                "stride": (t.scalar(2, "i", 0), t.scalar(1, "i", 0)),
                "depth_multiplier": t.scalar(3, "i", 0),
                "activation": ACTIVATIONS.get(t.scalar(4, "b", 0), "?"),
                "dilation": (t.scalar(6, "i", 1), t.scalar(5, "i", 1))}
    if name in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        return {"padding": PADDINGS.get(t.scalar(0, "b", 0), "?"),
                "stride": (t.scalar(2, "i", 0), t.scalar(1, "i", 0)),
                "filter": (t.scalar(4, "i", 0), t.scalar(3, "i", 0)),
                "activation": ACTIVATIONS.get(t.scalar(5, "b", 0), "?")}
    return {"activation": ACTIVATIONS.get(t.scalar(0, "b", 0), "?")}  # ADD


def dequantize(t: Tensor) -> torch.Tensor:
    """Constant tensor -> float32 torch tensor in the file's (TFLite) layout.

    real = scale * (q - zero_point), with one (scale, zero_point) for the
    whole tensor or one per slice along quant.dim (per-channel).
    """
    fmt = {"UINT8": torch.uint8, "INT8": torch.int8, "INT32": torch.int32,
           "FLOAT32": torch.float32}.get(t.type)
    if fmt is None:
        raise TFLiteError(f"tensor {t.index} {t.name!r}: cannot dequantize type {t.type}")
    n = 1
    for d in t.shape:
        n *= d
    size = torch.empty(0, dtype=fmt).element_size()
    if len(t.data) != n * size:
        raise TFLiteError(f"tensor {t.index} {t.name!r}: buffer is {len(t.data)} bytes, "
                          f"shape {t.shape} of {t.type} needs {n * size}")
    q = torch.frombuffer(bytearray(t.data), dtype=fmt).reshape(t.shape)
    if t.type == "FLOAT32":
        return q.clone()
    if t.quant is None:
        raise TFLiteError(f"tensor {t.index} {t.name!r}: {t.type} tensor without quantization")
    # float64 for the arithmetic so that the only rounding is the final one.
    scale = torch.tensor(t.quant.scale, dtype=torch.float64)
    zp = torch.tensor(t.quant.zero_point, dtype=torch.float64)
    if len(t.quant.scale) > 1:
        dim = t.quant.dim
        if not (0 <= dim < len(t.shape)) or t.shape[dim] != len(t.quant.scale):
            raise TFLiteError(f"tensor {t.index} {t.name!r}: {len(t.quant.scale)} per-channel "
                              f"scales do not match axis {dim} of shape {t.shape}")
        view = [1] * len(t.shape)
        view[dim] = -1
        scale, zp = scale.reshape(view), zp.reshape(view)
    return (scale * (q.to(torch.float64) - zp)).to(torch.float32)


# --- TFLite MobileNetV2 -> GeoNet ------------------------------------------------

def _conv_targets(model) -> list:
    """Our conv units in execution order, with what the TFLite op must be.

    Returns (name, ConvUnit, depthwise, block) tuples; `block` is the
    InvertedResidual the unit belongs to (None for the stem and the head).
    """
    out = []
    for i, f in enumerate(model.backbone.features):
        if isinstance(f, InvertedResidual):
            if f.expand is not None:
                out.append((f"backbone.features.{i}.expand", f.expand, False, f))
            out.append((f"backbone.features.{i}.dw", f.dw, True, f))
            out.append((f"backbone.features.{i}.project", f.project, False, f))
        else:
            out.append((f"backbone.features.{i}", f, False, None))
    return out


def _check_bias_scale(g: Graph, op: Op, name: str) -> None:
    """TFLite requires bias_scale = input_scale * weight_scale (per channel);
    a file that disagrees was not produced by the converter we know."""
    x, w, b = (g.tensors[i] for i in op.inputs[:3])
    if not (x.quant and w.quant and b.quant):
        return
    ws = w.quant.scale
    bs = b.quant.scale
    for c in range(len(bs)):
        want = x.quant.scale[0] * ws[c if len(ws) > 1 else 0]
        if abs(bs[c] - want) > 1e-3 * abs(want):
            raise TFLiteError(f"operator {op.index} ({name}): bias scale {bs[c]} != input scale "
                              f"x weight scale = {want}")


def import_mobilenet_v2(data: bytes) -> GeoNet:
    """Dequantize the TFLite MobileNetV2 classifier into a float GeoNet."""
    g = parse(data)
    if len(g.inputs) != 1:
        raise TFLiteError(f"model has {len(g.inputs)} inputs, expected 1 image")
    inp = g.tensors[g.inputs[0]]
    if len(inp.shape) != 4 or inp.shape[0] != 1 or inp.shape[3] != 3:
        raise TFLiteError(f"input shape {inp.shape} is not [1, H, W, 3]")
    if inp.type != "UINT8" or inp.quant is None or len(inp.quant.scale) != 1:
        raise TFLiteError(f"input is {inp.type}; expected per-tensor quantized UINT8 "
                          "(mean/std are derived from its scale and zero point)")
    # real = scale * (q - zp) and our normalize is (pixel - mean) / std with
    # pixel = q, so mean = zp and std = 1 / scale (128 and 128 here).
    mean = float(inp.quant.zero_point[0])
    std = 1.0 / inp.quant.scale[0]

    convs = [op for op in g.ops if op.name == "CONV_2D"]
    if not convs or len(convs[-1].inputs) < 2:
        raise TFLiteError("no CONV_2D operator: not a MobileNetV2 classifier")
    num_classes = g.tensors[convs[-1].inputs[1]].shape[0]  # the last conv is the classifier
    cfg = ModelConfig(bn=False, padding="tf_same", activation="relu6",
                      input_size=[inp.shape[1], inp.shape[2]],
                      mean=[mean] * 3, std=[std] * 3, num_classes=num_classes,
                      descriptor=False).validate()
    model = GeoNet(cfg)
    targets = _conv_targets(model)
    state = {}
    ti = 0                 # next conv target
    pooled = False         # seen the global average pool
    classified = False
    block_input = None     # TFLite tensor id entering the current block
    pending_add = None     # the residual block whose ADD must come next

    for op in g.ops:
        if pending_add is not None and op.name != "ADD":
            raise TFLiteError(f"operator {op.index} ({op.name}): expected the residual ADD "
                              f"of {pending_add[0]}")
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D") and pooled:
            # 1x1 conv on the pooled vector: the classifier.
            if classified or op.name != "CONV_2D":
                raise TFLiteError(f"operator {op.index} ({op.name}): unexpected after the classifier")
            w = dequantize(g.tensors[op.inputs[1]])
            if w.shape[1:3] != (1, 1) or w.shape[0] != num_classes:
                raise TFLiteError(f"operator {op.index}: classifier filter shape {list(w.shape)}")
            _check_bias_scale(g, op, "classifier")
            state["classifier.weight"] = w.reshape(num_classes, -1)
            state["classifier.bias"] = dequantize(g.tensors[op.inputs[2]])
            classified = True
        elif op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            if ti >= len(targets):
                raise TFLiteError(f"operator {op.index} ({op.name}): more convolutions than "
                                  f"MobileNetV2 has ({len(targets)})")
            name, unit, depthwise, block = targets[ti]
            ti += 1
            if depthwise != (op.name == "DEPTHWISE_CONV_2D"):
                raise TFLiteError(f"operator {op.index} is {op.name}, but {name} is "
                                  f"{'depthwise' if depthwise else 'a regular conv'}")
            if len(op.inputs) < 3 or op.inputs[2] < 0:
                raise TFLiteError(f"operator {op.index} ({name}): no bias input")
            opt = op.options
            w = dequantize(g.tensors[op.inputs[1]])
            # TFLite filters: CONV_2D [O, kh, kw, I]; DEPTHWISE [1, kh, kw, O].
            w = w.permute(3, 0, 1, 2) if depthwise else w.permute(0, 3, 1, 2)
            if depthwise and opt["depth_multiplier"] != 1:
                raise TFLiteError(f"operator {op.index} ({name}): depth multiplier "
                                  f"{opt['depth_multiplier']} is not 1")
            if list(w.shape) != list(unit.conv.weight.shape):
                raise TFLiteError(f"operator {op.index} ({name}): filter shape {list(w.shape)}, "
                                  f"MobileNetV2 needs {list(unit.conv.weight.shape)}")
            if opt["stride"] != (unit.stride, unit.stride) or opt["dilation"] != (1, 1):
                raise TFLiteError(f"operator {op.index} ({name}): stride {opt['stride']} "
                                  f"dilation {opt['dilation']}, expected stride {unit.stride}")
            if opt["padding"] != "SAME" and w.shape[-1] != 1:
                raise TFLiteError(f"operator {op.index} ({name}): padding {opt['padding']}, "
                                  "expected SAME")
            want_act = {"relu6": "RELU6", "none": "NONE"}[unit.act]
            if opt["activation"] != want_act:
                raise TFLiteError(f"operator {op.index} ({name}): fused activation "
                                  f"{opt['activation']}, expected {want_act}")
            _check_bias_scale(g, op, name)
            state[name + ".conv.weight"] = w.contiguous()
            state[name + ".conv.bias"] = dequantize(g.tensors[op.inputs[2]])
            if block is not None and (name.endswith(".expand") or
                                      (name.endswith(".dw") and block.expand is None)):
                block_input = op.inputs[0]
            if block is not None and name.endswith(".project") and block.residual:
                pending_add = (name, block_input, op.outputs[0])
        elif op.name == "ADD":
            if pending_add is None:
                raise TFLiteError(f"operator {op.index} (ADD) does not close a residual block")
            if sorted(op.inputs) != sorted(pending_add[1:]):
                raise TFLiteError(f"operator {op.index} (ADD): inputs {op.inputs} are not the "
                                  f"input and output of the block ending in {pending_add[0]}")
            if op.options.get("activation") != "NONE":
                raise TFLiteError(f"operator {op.index} (ADD): fused activation "
                                  f"{op.options.get('activation')}")
            pending_add = None
        elif op.name == "AVERAGE_POOL_2D":
            x = g.tensors[op.inputs[0]]
            if ti != len(targets) or op.options["filter"] != tuple(x.shape[1:3]) \
                    or op.options["padding"] != "VALID":
                raise TFLiteError(f"operator {op.index} (AVERAGE_POOL_2D): expected a global "
                                  f"average pool after the last backbone conv")
            pooled = True
        elif op.name in ("RESHAPE", "SOFTMAX", "QUANTIZE", "DEQUANTIZE"):
            pass  # shape/probability bookkeeping around the logits
        else:
            raise TFLiteError(f"operator {op.index}: {op.name} has no place in MobileNetV2")

    if ti != len(targets):
        raise TFLiteError(f"file has {ti} backbone convolutions, MobileNetV2 needs {len(targets)}")
    if not classified:
        raise TFLiteError("no classifier convolution after the average pool")
    missing = set(k for k in model.state_dict() if not k.endswith("num_batches_tracked")) - set(state)
    if missing:
        raise TFLiteError(f"tensors not filled by the import: {sorted(missing)[:5]}")
    model.load_state_dict(state, strict=False)
    return model.eval()


def import_file(path: str) -> GeoNet:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return import_mobilenet_v2(data)
    except TFLiteError as e:
        raise TFLiteError(f"{path}: {e}") from None
