import io

import cv2
import numpy as np
import pytest
from PIL import Image

from models.preprocess import ImageDecodeError, decode_rgb, is_grey8_png, load_seed_v1
from tests.images import corrupt_png, ct_slice, encode


def test_grayscale_becomes_three_equal_channels():
    rgb = decode_rgb(encode(ct_slice(40, mode="L")))
    assert rgb.shape == (40, 40, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_channels_come_out_in_rgb_order():
    image = ct_slice(24, mode="RGB")
    assert np.array_equal(decode_rgb(encode(image)), np.asarray(image))


def test_seed_v1_matches_cv2_resize_and_divides_by_255(tmp_path):
    data = encode(ct_slice(300, seed=3, mode="RGB"))
    (tmp_path / "s.png").write_bytes(data)
    reference = (
        cv2.resize(cv2.cvtColor(cv2.imread(str(tmp_path / "s.png")), cv2.COLOR_BGR2RGB), (224, 224))
        / 255.0
    )
    out = load_seed_v1(data)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    assert np.array_equal(out, reference.astype(np.float32))


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "empty"),
        (corrupt_png(), "truncated or corrupt"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "could not decode"),
    ],
)
def test_undecodable_bytes_raise_a_message_that_says_why(data, words):
    with pytest.raises(ImageDecodeError, match=words):
        decode_rgb(data)


def original_app(data, tmp_path):
    """What the original app computed: cv2.imread (3 channels), RGB, resize, / 255."""
    (tmp_path / "s.png").write_bytes(data)
    rgb = cv2.cvtColor(cv2.imread(str(tmp_path / "s.png")), cv2.COLOR_BGR2RGB)
    return (cv2.resize(rgb, (224, 224)) / 255.0).astype(np.float32)


def grey_png(image, **options):
    out = io.BytesIO()
    image.save(out, format="PNG", **options)
    return out.getvalue()


@pytest.mark.parametrize(
    "size, options",
    [
        ((512, 512), {}),
        ((511, 300), {}),
        ((37, 61), {}),
        ((224, 224), {}),
        ((300, 300), {"transparency": 0}),  # a tRNS chunk: still colour type 0
        ((300, 300), {"optimize": True, "compress_level": 1}),
    ],
)
def test_a_grey_png_read_as_one_channel_gives_the_original_apps_tensor(size, options, tmp_path):
    rng = np.random.default_rng(sum(size))
    pixels = rng.integers(0, 256, size=size[::-1], dtype=np.uint8)
    pixels[: size[1] // 2] //= 3  # some structure, and every grey level
    data = grey_png(Image.fromarray(pixels, mode="L"), **options)
    assert is_grey8_png(data)
    assert np.array_equal(load_seed_v1(data), original_app(data, tmp_path))


def test_other_pngs_are_read_in_three_channels_as_the_original_did(tmp_path):
    sixteen = np.linspace(0, 65535, 200 * 120).reshape(120, 200).astype(np.uint16)
    for data in (
        encode(ct_slice(300, seed=5, mode="RGB")),
        encode(ct_slice(64).convert("LA")),
        grey_png(Image.fromarray(sixteen)),
        encode(ct_slice(64).convert("P")),
    ):
        assert not is_grey8_png(data)
        assert np.array_equal(load_seed_v1(data), original_app(data, tmp_path))


def test_a_truncated_grey_png_fails_with_the_reason():
    data = grey_png(Image.fromarray(np.full((64, 64), 9, np.uint8), mode="L"))
    with pytest.raises(ImageDecodeError, match="truncated or corrupt|could not decode"):
        load_seed_v1(data[: len(data) // 2])
