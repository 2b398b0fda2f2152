"""The one image decoder: conversions and refusals."""

import io

import numpy as np
import pytest
from PIL import Image

from leukolab.data.etl.masks import derive_mask
from leukolab.data.etl.params import EtlParams
from leukolab.images import ANY_SIZE, ImageRejected, ImageRules, decode_image, encode_png, resize_square


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1"])
def test_every_mode_becomes_rgb(mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    image = Image.new(mode, (40, 30))
    assert decode_image(encoded(image, fmt), ANY_SIZE).mode == "RGB"


def test_sixteen_bit_greyscale_is_rescaled_not_clipped():
    array = np.full((20, 20), 65535 // 2, dtype=np.uint16)
    decoded = np.asarray(decode_image(encoded(Image.fromarray(array)), ANY_SIZE))
    assert decoded.shape == (20, 20, 3)
    assert 120 <= decoded.mean() <= 135


def test_alpha_is_composited_on_white():
    image = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert np.asarray(decode_image(encoded(image), ANY_SIZE))[0, 0].tolist() == [255, 255, 255]


def test_animated_image_gives_first_frame():
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    first = np.asarray(decode_image(buffer.getvalue(), ANY_SIZE))[0, 0]
    assert first[0] > 200 and first[2] < 50


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"this is a text file, not a picture", "not_an_image"),
        (encoded(Image.new("RGB", (200, 200), (9, 99, 199)), "JPEG")[:300], "truncated"),
    ],
)
def test_refusals_carry_a_reason(data, reason):
    with pytest.raises(ImageRejected) as refused:
        decode_image(data)
    assert refused.value.reason == reason


def test_pixel_limit_guards_against_bombs():
    with pytest.raises(ImageRejected) as refused:
        decode_image(encoded(Image.new("L", (300, 300))), ImageRules(max_pixels=10_000))
    assert refused.value.reason == "too_many_pixels"


@pytest.mark.parametrize(("size", "reason"), [((8, 8), "too_small"), ((1, 1), "too_small"), ((10000, 2), "too_small"),
                                             ((400, 40), "too_elongated"), ((320, 40), None), ((40, 320), None)])
def test_images_outside_the_rules_are_refused_with_a_reason(size, reason):
    data = encoded(Image.new("RGB", size))
    if reason is None:
        assert decode_image(data).size == size
        return
    with pytest.raises(ImageRejected) as refused:
        decode_image(data, ImageRules(min_side=32, max_aspect_ratio=8))
    assert refused.value.reason == reason


def test_mask_from_segmented_image_and_resize_keep_shapes():
    segmented = np.zeros((20, 20, 3), np.uint8)
    segmented[5:10, 5:10] = (120, 40, 160)
    mask, _, _ = derive_mask(Image.fromarray(segmented), 20, EtlParams())
    assert mask.sum() == 25 and set(np.unique(mask)) == {0, 1}
    assert resize_square(Image.fromarray(segmented), 8).size == (8, 8)
    assert Image.open(io.BytesIO(encode_png(mask * 255))).size == (20, 20)
