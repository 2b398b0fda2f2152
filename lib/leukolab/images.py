"""The one image decoder: bytes in, RGB out, with a reason for every refusal.

Shared by the ETL, the training datasets, the MLflow pyfunc model and the API,
so an image that trains is an image that serves: the :class:`ImageRules` the ETL
applied travel in the published model's metadata, and the model and the API
refuse what the ETL would have quarantined, with the same reason.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000
"""Refuse images with more pixels than this (decompression bombs): 8000 x 8000."""


@dataclass(frozen=True)
class ImageRules:
    """What makes a decoded image usable as a smear field: its shorter side, its elongation, its pixel count.

    Smear fields are close to square (224 x 224, 450 x 450, 2592 x 1944 in the public ALL datasets); a sliver or
    a thumbnail resized to the network's square input is not a smear.
    """

    min_side: int = 32
    max_aspect_ratio: float = 8.0
    max_pixels: int = DEFAULT_MAX_PIXELS

    def check(self, width: int, height: int) -> None:
        """Raise :class:`ImageRejected` (``too_small``, ``too_elongated``) when a ``width`` x ``height`` image breaks a rule."""
        if min(width, height) < self.min_side:
            raise ImageRejected("too_small", f"the image is {width}x{height}; both sides must be at least {self.min_side} px")
        if max(width, height) > self.max_aspect_ratio * min(width, height):
            raise ImageRejected("too_elongated", f"the image is {width}x{height}; its long side may be at most "
                                                 f"{self.max_aspect_ratio:g} times its short side")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_mapping(cls, values: dict) -> ImageRules:
        """The rules named in ``values`` (a manifest's ETL parameters, a model's metadata); the others at default."""
        return cls(**{name: values[name] for name in cls.__dataclass_fields__ if name in values})


ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "GIF", "WEBP")
"""Formats decoded; others (EPS, which Pillow hands to Ghostscript, among them) are refused as not images."""


class ImageRejected(ValueError):
    """An input that cannot be used as an image; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


ANY_SIZE = ImageRules(min_side=1, max_aspect_ratio=float("inf"))
"""For showing an image that a model has already accepted under its own rules."""


def decode_image(data: bytes, rules: ImageRules = ImageRules()) -> Image.Image:
    """Decode image bytes to an 8-bit RGB image that keeps ``rules``.

    Greyscale, palette, CMYK, 16-bit and alpha images are converted (alpha is
    composited on white); animated images give their first frame; EXIF
    orientation is applied. Raises :class:`ImageRejected` with reason
    ``empty``, ``not_an_image``, ``too_many_pixels``, ``truncated``, ``too_small`` or ``too_elongated``.
    """
    if not data:
        raise ImageRejected("empty", "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", "the bytes are not an image format Pillow can read") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageRejected("too_many_pixels", "the image has too many pixels (decompression bomb guard)") from None
    except OSError as error:  # a header cut short or corrupt
        raise ImageRejected("truncated", f"the image is truncated or corrupt: {error}") from None
    width, height = image.size
    if width * height > rules.max_pixels:
        raise ImageRejected("too_many_pixels", f"the image has {width}x{height} pixels; the limit is {rules.max_pixels:,}")
    try:
        image.seek(0)
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageRejected("truncated", f"the image is truncated or corrupt: {error}") from None
    rules.check(width, height)
    return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (16-bit greyscale is rescaled, alpha composited on white)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def resize_square(image: Image.Image, size: int, *, resample=Image.Resampling.BILINEAR) -> Image.Image:
    """Resize to ``size`` x ``size`` (smear fields are close to square; no crop loses cells)."""
    return image if image.size == (size, size) else image.resize((size, size), resample)


def encode_png(image: Image.Image | np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes; level 1 is ~3x faster than the default and barely larger for photos."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def image_array(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG bytes written by the ETL to an HxWx3 (or HxW) uint8 array."""
    return np.asarray(Image.open(io.BytesIO(data)))
