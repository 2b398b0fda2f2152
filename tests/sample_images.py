"""Image bytes for tests: an image encoded in a format, a 16-bit TIFF, a smear-coloured JPEG, noise, a PNG header
that claims a decompression bomb's size, an animated GIF, every image mode the API converts, a solid PNG."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def tiff16(size: int = 96) -> bytes:
    return encode(Image.fromarray(np.linspace(0, 65535, size * size).astype(np.uint16).reshape(size, size)), "TIFF")


SMEAR = encode(Image.new("RGB", (80, 60), (200, 110, 160)), "JPEG")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` pixels in a few dozen bytes (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


NOISE_JPEG = encode(Image.effect_noise((400, 300), 60).convert("RGB"), "JPEG")


def animated_gif() -> bytes:
    frames = [Image.new("P", (40, 32), i) for i in (10, 200)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


IMAGE_MODES = {
    "greyscale": lambda: encode(Image.new("L", (50, 40), 120), "PNG"),
    "rgba": lambda: encode(Image.new("RGBA", (50, 40), (200, 10, 10, 100)), "PNG"),
    "palette": lambda: encode(Image.new("RGB", (50, 40), (20, 200, 90)).convert("P"), "PNG"),
    "cmyk jpeg": lambda: encode(Image.new("CMYK", (50, 40), (10, 200, 30, 0)), "JPEG"),
    "16-bit png": lambda: encode(Image.fromarray(np.full((40, 50), 40_000, dtype=np.uint16)), "PNG"),
    "animated gif": animated_gif,
    "tiff": lambda: encode(Image.new("RGB", (50, 40), (90, 90, 200)), "TIFF"),
}


def solid_png(rgb: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    return encode(Image.new("RGB", size, rgb), "PNG")
