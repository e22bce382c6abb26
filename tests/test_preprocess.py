import cv2
import numpy as np
import pytest

from models.preprocess import ImageDecodeError, decode_rgb, load_seed_v1
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
    reference = cv2.resize(cv2.cvtColor(cv2.imread(str(tmp_path / "s.png")), cv2.COLOR_BGR2RGB),
                           (224, 224)) / 255.0
    out = load_seed_v1(data)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    assert np.array_equal(out, reference.astype(np.float32))


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (corrupt_png(), "truncated or corrupt"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "could not decode"),
])
def test_undecodable_bytes_raise_a_message_that_says_why(data, words):
    with pytest.raises(ImageDecodeError, match=words):
        decode_rgb(data)
