"""Opening one image file the way every image model wants it: uint8, C x H x W.

Torch-free and self-contained (Pillow and numpy only), because its functions run in worker
processes: `probe` reads a file's header (size, orientation, colour) without decoding the
pixels, `decode_chunk` decodes a list of files to one fixed shape.

Whatever Pillow opens is read: PNG, JPEG, BMP, WebP, GIF (first frame), TIFF. Pixel sizes
are checked against MAX_PIXELS from the header, before any pixel is decoded, so a
decompression bomb (a small file that decodes to gigabytes) is refused, not decoded.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 64 * 2**20  # 67 megapixels (8192 x 8192): larger than any camera photo
MIN_SIDE = 8  # smaller images (icons, 1x1 tracking pixels) hold nothing a model can learn
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


class Skip(Exception):
    """This file is not an image dlcli can use; the message says why, in a few words."""


def _open(path: str):
    if os.path.getsize(path) == 0:
        raise Skip("empty file")
    pillows_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # Pillow's own check words it vaguely: ours follows, with the size
    try:
        image = Image.open(path)  # reads the header only
    finally:
        Image.MAX_IMAGE_PIXELS = pillows_limit
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise Skip(f"too large ({width}x{height}, over {MAX_PIXELS // 2**20} megapixels)")
    return image


def why_unusable(error: Exception) -> str:
    """A few words on why a file could not be used as an image."""
    if isinstance(error, Skip):
        return str(error)
    if isinstance(error, UnidentifiedImageError):
        return "not an image"
    if isinstance(error, PermissionError):
        return "unreadable: permission denied"
    if isinstance(error, OSError) and "truncated" in str(error):
        return "truncated"
    return f"broken ({type(error).__name__}: {str(error)[:60]})"


def _is_gray(image) -> bool:
    if image.mode in GRAY_MODES:
        return True
    if image.mode in ("P", "PA"):  # palette images: gray when every palette entry is
        palette = np.asarray(image.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
        return bool((palette == palette[:, :1]).all())
    return False


def probe(path: str) -> tuple[int, int, bool] | str:
    """(width, height, grayscale) as the image will look once EXIF-rotated, read from the
    header only; or why the file is skipped."""
    try:
        with _open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112) in ROTATED:
                width, height = height, width
            if min(width, height) < MIN_SIDE:
                return f"too small ({width}x{height})"
            return width, height, _is_gray(image)
    except Exception as e:  # noqa: BLE001 -- any failure of any codec is a skipped file
        return why_unusable(e)


def probe_chunk(paths: list[str]) -> list:
    return [probe(p) for p in paths]


def _to_mode(image, channels: int):
    """An 8-bit L or RGB image: 16-bit gray scaled down (not clipped), transparency
    composited onto white (a transparent pixel's stored colour is arbitrary)."""
    if image.mode.startswith("I") or image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode == "F" and pixels.max(initial=0) <= 1:
            pixels = pixels * 255  # float images are stored in [0, 1]
        elif image.mode != "F" and (image.mode.startswith("I;16") or pixels.max(initial=0) > 255):
            pixels = pixels / 257  # 16-bit: 65535 -> 255
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return image.convert("L" if channels == 1 else "RGB")


def _fit(image, height: int, width: int, resize: str):
    """The image at height x width: center-crop (fill, crop the overflow), pad (fit whole,
    black borders) or stretch (ignore the aspect ratio). Bilinear, antialiased, as
    torchvision's Resize on PIL images."""
    w, h = image.size
    if (w, h) == (width, height):
        return image  # already the size: the pixels as they are, bit for bit
    bilinear = Image.Resampling.BILINEAR
    if resize == "stretch":
        return image.resize((width, height), bilinear, reducing_gap=3.0)
    if resize == "center-crop":
        scale = max(width / w, height / h)
        crop_w, crop_h = width / scale, height / scale
        left, top = (w - crop_w) / 2, (h - crop_h) / 2
        return image.resize((width, height), bilinear, box=(left, top, left + crop_w, top + crop_h),
                            reducing_gap=3.0)
    scale = min(width / w, height / h)  # pad
    inner = (max(1, round(w * scale)), max(1, round(h * scale)))
    canvas = Image.new(image.mode, (width, height))
    canvas.paste(image.resize(inner, bilinear, reducing_gap=3.0),
                 ((width - inner[0]) // 2, (height - inner[1]) // 2))
    return canvas


def _draft_size(w: int, h: int, height: int, width: int, resize: str) -> tuple[int, int]:
    """The smallest size a JPEG may be decoded at (libjpeg scales by 1/2, 1/4, 1/8 while
    decoding: much faster for big photos) that still covers the output."""
    if resize == "stretch":
        return width, height
    scale = (max if resize == "center-crop" else min)(width / w, height / h)
    return math.ceil(w * scale), math.ceil(h * scale)


def decode(path: str, height: int, width: int, channels: int, resize: str) -> np.ndarray:
    """uint8 (channels, height, width); raises for a file that cannot be used."""
    with _open(path) as image:
        rotated = image.getexif().get(0x0112) in ROTATED
        if image.format == "JPEG":
            w, h = image.size[::-1] if rotated else image.size
            want = _draft_size(w, h, height, width, resize)
            image.draft("L" if channels == 1 else "RGB", want[::-1] if rotated else want)
        image.load()
        image = ImageOps.exif_transpose(image)
        image = _fit(_to_mode(image, channels), height, width, resize)
        pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def decode_chunk(job) -> tuple[list[int], np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Decode job = (indices, paths, height, width, channels, resize). Returns the indices
    decoded, their pixels (k, C, H, W), their per-channel sums of x and x**2 (k, C, 2;
    exact integers, so any subset's mean and std can be computed later) and, for the
    files that failed, (index, why)."""
    indices, paths, height, width, channels, resize = job
    done, rows, failed = [], [], []
    for index, path in zip(indices, paths):
        try:
            rows.append(decode(path, height, width, channels, resize))
            done.append(index)
        except Exception as e:  # noqa: BLE001 -- a broken file is skipped, whatever broke
            failed.append((index, why_unusable(e)))
    pixels = np.stack(rows) if rows else np.zeros((0, channels, height, width), np.uint8)
    flat = pixels.reshape(len(rows), channels, -1)
    wide = flat.astype(np.uint32)  # 255**2 fits; the sums are exact in 64 bits
    sums = np.stack([flat.sum(-1, dtype=np.uint64), (wide * wide).sum(-1, dtype=np.uint64)], -1)
    sums = sums.astype(np.float64)
    return done, pixels, sums, failed
