"""Image files -> uint8 RGB pixels.

Uncompressed 24/32-bit BMP is decoded here (a few lines, and it lets the
tests run with only torch installed).  PNG and JPEG go to torchvision.io
when it is installed, else to Pillow (Debian: python3-pil); anything else
that Pillow can open works too.
"""

from __future__ import annotations

import struct

import torch


class ImageError(ValueError):
    pass


def _decode_bmp(data: bytes, path: str):
    """BITMAPINFOHEADER (or V4/V5) BMP, 24 or 32 bits, BI_RGB or plain
    BI_BITFIELDS; None for variants we leave to Pillow (palette, RLE)."""
    if len(data) < 54:
        raise ImageError(f"{path}: truncated BMP ({len(data)} bytes)")
    pix_off, = struct.unpack_from("<I", data, 10)
    dib, width, height, planes, bpp, comp = struct.unpack_from("<IiiHHI", data, 14)
    if dib < 40 or bpp not in (24, 32) or comp not in (0, 3) or width <= 0 or height == 0:
        return None
    if comp == 3:  # BI_BITFIELDS: only the usual BGRA layout
        masks = struct.unpack_from("<III", data, 54 if dib == 40 else 14 + 40)
        if masks != (0x00FF0000, 0x0000FF00, 0x000000FF):
            return None
    h = abs(height)
    stride = (width * bpp // 8 + 3) // 4 * 4  # rows are padded to 4 bytes
    if pix_off + stride * h > len(data):
        raise ImageError(f"{path}: BMP pixel data runs past the end of the file")
    rows = torch.frombuffer(bytearray(data[pix_off:pix_off + stride * h]), dtype=torch.uint8)
    px = rows.view(h, stride)[:, :width * bpp // 8].reshape(h, width, bpp // 8)
    rgb = px[:, :, [2, 1, 0]]  # stored as B, G, R(, A)
    if height > 0:  # positive height: bottom-up rows
        rgb = torch.flip(rgb, dims=[0])
    return rgb.contiguous()


def load_image(path: str) -> torch.Tensor:
    """Read an image file; returns a uint8 tensor [H, W, 3] (RGB)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"BM":
        img = _decode_bmp(data, path)
        if img is not None:
            return img
    elif data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
        try:
            import torchvision.io as tvio
        except ImportError:
            tvio = None
        if tvio is not None:
            t = tvio.decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                  mode=tvio.ImageReadMode.RGB)
            return t.permute(1, 2, 0).contiguous()
    try:
        from PIL import Image
    except ImportError:
        raise ImageError(f"{path}: decoding this format needs torchvision or Pillow "
                         "(Debian: python3-torchvision or python3-pil)") from None
    import io
    import numpy as np
    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # Pillow raises many kinds
        raise ImageError(f"{path}: cannot decode image: {e}") from None
    return torch.from_numpy(arr.copy())


def to_batch(img_hwc: torch.Tensor) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [1, 3, H, W] in 0..255, the model's input."""
    return img_hwc.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
