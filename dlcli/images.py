"""Image grids and PNG output: a PNG is a few zlib'd rows; words around a grid (which
row is which digit, which latent unit an axis sweeps) are drawn with Pillow."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dlcli.errors import DlcliError

# Pillow (and so most viewers and notebooks) refuses a larger picture as a decompression bomb
MAX_PNG_PIXELS = 89_478_485


@dataclass
class Captions:
    """Words around a grid: one label per row (left margin), a line above, a line below."""
    rows: list[str] = field(default_factory=list)
    above: str = ""
    below: str = ""


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
    if h * w > MAX_PNG_PIXELS:
        raise DlcliError(f"that picture would be {w:,} x {h:,} pixels, more than image viewers "
                         f"open ({MAX_PNG_PIXELS:,}); ask for fewer images (-n), or write them "
                         "all with --format npy")
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


def grid_image(images: torch.Tensor, nrow: int = 8, scale: int = 2,
               captions: Captions | None = None) -> torch.Tensor:
    """The picture of a sample file as a (C, H, W) tensor in [0, 1]: the images in a grid,
    enlarged `scale` times, with their captions."""
    grid = upscale(make_grid(images.detach().float().cpu(), nrow), scale)
    return caption(grid, captions, pad=2 * scale, row_height=images.shape[-2] * scale) if captions else grid


def grid_png(images: torch.Tensor, nrow: int = 8, scale: int = 2,
             captions: Captions | None = None) -> bytes:
    return png_bytes(grid_image(images, nrow, scale, captions))


def caption(grid: torch.Tensor, captions: Captions, pad: int, row_height: int) -> torch.Tensor:
    """The grid (C, H, W) on a white canvas with its captions in black: row labels in a
    left margin, each centred on its row; `above` and `below` in bands of their own."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(12, row_height // 3))
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    width = lambda text: measure.textbbox((0, 0), text, font=font)[2]  # noqa: E731
    line = font.size + 8
    left = max((width(t) for t in captions.rows), default=-8) + 8 + 4
    top, bottom = (line if captions.above else 0), (line if captions.below else 0)
    c, h, w = grid.shape
    mode = "L" if c == 1 else "RGB"
    wide = max(w, width(captions.above) + 4, width(captions.below) + 4)  # a caption is not cut
    canvas = Image.new(mode, (left + wide, top + h + bottom), "white")
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()
    canvas.paste(Image.fromarray(pixels, mode), (left, top))
    draw = ImageDraw.Draw(canvas)
    for r, text in enumerate(captions.rows):
        middle = top + pad + r * (row_height + pad) + row_height // 2
        draw.text((left - 6, middle), text, fill="black", font=font, anchor="rm")
    if captions.above:
        draw.text((left, top // 2), captions.above, fill="black", font=font, anchor="lm")
    if captions.below:
        draw.text((left, top + h + bottom // 2), captions.below, fill="black", font=font, anchor="lm")
    return torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(
        canvas.height, canvas.width, c).permute(2, 0, 1).float().div(255)


def save_grid(images: torch.Tensor, path, nrow: int = 8, scale: int = 2,
              captions: Captions | None = None) -> Path:
    from dlcli.fileio import atomic_write

    data = grid_png(images, nrow, scale, captions)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))
    return Path(path)


def encode(images: torch.Tensor, fmt: str, nrow: int = 8, captions: Captions | None = None) -> bytes:
    """The bytes of a sample file: a captioned PNG grid, or (npy) the images themselves as
    a float32 array of shape (N, C, H, W) in [0, 1]."""
    images = images.detach().float().cpu().clamp(0, 1)
    if fmt == "png":
        return grid_png(images, nrow, captions=captions)
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, images.numpy().astype("float32"))
    return buf.getvalue()
