"""Image grids and PNG output, without an imaging library: a PNG is a few zlib'd rows."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import torch


def make_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2, pad_value: float = 0.5):
    """(N, C, H, W) in [0, 1] -> (C, rows*(H+pad)+pad, nrow*(W+pad)+pad), rows filled left to right."""
    n, c, h, w = images.shape
    nrow = max(1, min(nrow, n))
    rows = (n + nrow - 1) // nrow
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid


def png_bytes(image: torch.Tensor) -> bytes:
    """(C, H, W) float in [0, 1], C = 1 (grey) or 3 (RGB) -> PNG file bytes."""
    c, h, w = image.shape
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    raw = pixels.numpy().tobytes()
    stride = w * c
    scanlines = b"".join(b"\x00" + raw[y * stride:(y + 1) * stride] for y in range(h))
    color_type = 0 if c == 1 else 2

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    out = io.BytesIO()
    out.write(b"\x89PNG\r\n\x1a\n")
    out.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)))
    out.write(chunk(b"IDAT", zlib.compress(scanlines, 9)))
    out.write(chunk(b"IEND", b""))
    return out.getvalue()


def upscale(image: torch.Tensor, factor: int) -> torch.Tensor:
    return image.repeat_interleave(factor, 1).repeat_interleave(factor, 2) if factor > 1 else image


def grid_png(images: torch.Tensor, nrow: int = 8, scale: int = 2) -> bytes:
    return png_bytes(upscale(make_grid(images.detach().float().cpu(), nrow), scale))


def save_grid(images: torch.Tensor, path, nrow: int = 8, scale: int = 2) -> Path:
    from dlcli.checkpoint import atomic_write

    data = grid_png(images, nrow, scale)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))
    return Path(path)
