"""DICOM in the worker: the tensor the model gets is HU → window → seed-v1, computed here
independently; compressed syntaxes decode to the same pixels; an undecodable one fails the
scan naming it; MONOCHROME1 and padding; the preprocessing id names the window."""

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from db.blobs import FileBlobStore
from models.dicom import parse_window, preprocessing_id
from models.loader import ModelInfo
from tests import dicom_files as d
from worker.inference import classify_batch


@dataclass(frozen=True)
class Item:
    scan_id: str
    blob_key: str
    frame: Optional[int] = None


class RecordingEngine:
    """Records the batches the model is fed; answers a fixed probability."""

    name, precision, batch_size = "recording", "fp32", 8

    def __init__(self, window=(1500.0, -600.0)):
        self.info = ModelInfo("m", "1", "0" * 64, True, "h5", (224, 224), dicom_window=window)
        self.fed: list[np.ndarray] = []

    def predict(self, batch):
        self.fed.extend(np.asarray(batch))
        return np.full(len(batch), 0.25)


class CountingBlobStore(FileBlobStore):
    reads = 0

    def get(self, key):
        self.reads += 1
        return super().get(key)


def run(tmp_path: Path, files: list[bytes], engine=None, frames=None, blobs=None):
    blobs = blobs or FileBlobStore(tmp_path / "blobs")
    items = []
    for index, data in enumerate(files):
        blobs.put(f"job/{index:06d}", data)
        items.append(Item(f"s{index}", f"job/{index:06d}", frames[index] if frames else None))
    engine = engine or RecordingEngine()
    return classify_batch(items, blobs, engine), engine


def expected_tensor(dataset, width=1500.0, level=-600.0) -> np.ndarray:
    """Independently: stored × slope + intercept, clip to the window, 8 bits, RGB, resize, /255."""
    hu = dataset.pixel_array.astype(np.float64) * float(dataset.RescaleSlope) + float(
        dataset.RescaleIntercept
    )
    low = level - width / 2
    grey = np.round(np.clip((hu - low) / width, 0, 1) * 255).astype(np.uint8)
    rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    return (cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_LINEAR) / 255.0).astype(np.float32)


def test_the_tensor_fed_to_the_model_is_hu_window_seed_v1(tmp_path):
    outcomes, engine = run(tmp_path, [d.ct_path().read_bytes()])
    assert outcomes[0].error is None and outcomes[0].probability_covid == 0.25
    assert outcomes[0].preprocessing == "seed-v1+dicom-window(1500,-600)"
    np.testing.assert_array_equal(engine.fed[0], expected_tensor(pydicom.dcmread(d.ct_path())))


def test_the_model_window_is_used_and_named(tmp_path):
    engine = RecordingEngine(window=(400.0, 40.0))
    outcomes, engine = run(tmp_path, [d.ct_path().read_bytes()], engine)
    assert outcomes[0].preprocessing == "seed-v1+dicom-window(400,40)"
    np.testing.assert_array_equal(
        engine.fed[0], expected_tensor(pydicom.dcmread(d.ct_path()), 400.0, 40.0)
    )


def test_png_scans_keep_the_models_preprocessing_id(tmp_path):
    from tests.images import png_bytes

    outcomes, _ = run(tmp_path, [png_bytes(64)])
    assert outcomes[0].preprocessing is None and outcomes[0].error is None


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "j2k-lossless"])
def test_compressed_ct_decodes_to_the_same_tensor(tmp_path, syntax):
    dataset = d.ct_dataset()
    dataset.compress(syntax)
    assert dataset.file_meta.TransferSyntaxUID == syntax
    _, engine = run(tmp_path, [d.to_bytes(dataset), d.ct_path().read_bytes()])
    np.testing.assert_array_equal(engine.fed[0], engine.fed[1])


@pytest.mark.parametrize(
    "syntax, uid",
    [
        ("JPEGLosslessProcess14_1", "1.2.840.10008.1.2.4.70"),
        ("JPEGLSLossless", "1.2.840.10008.1.2.4.80"),
    ],
)
def test_jpeg_lossless_and_jpeg_ls_ct_decode_to_the_same_tensor(tmp_path, syntax, uid):
    compressed = d.ct_compressed_by_gdcm(syntax, tmp_path)
    assert pydicom.dcmread(io.BytesIO(compressed)).file_meta.TransferSyntaxUID == uid
    _, engine = run(tmp_path, [compressed, d.ct_path().read_bytes()])
    np.testing.assert_array_equal(engine.fed[0], engine.fed[1])


def test_an_undecodable_syntax_fails_the_scan_naming_it(tmp_path):
    # JPEG Extended with 12-bit samples ships with pydicom; no licence-compatible plugin decodes it
    lossy = Path(pydicom.__file__).parent / "data" / "test_files" / "JPEG-lossy.dcm"
    outcomes, engine = run(tmp_path, [lossy.read_bytes(), d.ct_path().read_bytes()])
    assert "JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51)" in outcomes[0].error
    assert outcomes[1].error is None and len(engine.fed) == 1  # the other scan goes on


def test_monochrome1_is_inverted_and_padding_is_black(tmp_path):
    dataset = d.ct_dataset()
    stored = dataset.pixel_array.copy()
    stored[:8, :] = -2000  # the file's PixelPaddingValue: outside the patient
    dataset.PixelData = stored.tobytes()
    plain = d.to_bytes(dataset)
    dataset.PhotometricInterpretation = "MONOCHROME1"
    inverted = d.to_bytes(dataset)
    _, engine = run(tmp_path, [plain, inverted])
    from covidscan.dicom_pixels import grey_slice

    grey, grey1 = grey_slice(plain, 0, (1500, -600)), grey_slice(inverted, 0, (1500, -600))
    assert (grey[:8] == 0).all() and (grey1[:8] == 0).all()
    np.testing.assert_array_equal(grey1[8:], 255 - grey[8:])
    assert not np.array_equal(engine.fed[0], engine.fed[1])


def test_each_frame_of_a_multi_frame_file_is_its_own_tensor(tmp_path):
    data = d.multiframe_ct(3)
    blobs = CountingBlobStore(tmp_path / "blobs")
    blobs.put("job/000000", data)
    items = [Item(f"s{i}", "job/000000", i) for i in range(3)]
    engine = RecordingEngine()
    classify_batch(items, blobs, engine)
    means = [float(t.mean()) for t in engine.fed]
    assert means[0] < means[1] < means[2]  # frame i is the slice + 10·i HU
    assert blobs.reads == 1  # the file is read once for its three frames


def test_window_parsing():
    assert parse_window("1500,-600") == (1500.0, -600.0)
    assert preprocessing_id((350.5, 40)) == "seed-v1+dicom-window(350.5,40)"
    for bad in ("1500", "a,b", "0,40", "-5,40"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_enhanced_frames_take_their_rescale_from_the_functional_groups(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    dataset = pydicom.dcmread(io.BytesIO(d.multiframe_ct(2)))
    slope, intercept = dataset.RescaleSlope, dataset.RescaleIntercept
    del dataset.RescaleSlope, dataset.RescaleIntercept
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = (
        slope,
        intercept,
        "HU",
    )
    dataset.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = Sequence(
        [transform]
    )
    enhanced = d.to_bytes(dataset)
    plain = d.multiframe_ct(2)
    _, engine = run(tmp_path, [enhanced, plain], frames=[1, 1])
    np.testing.assert_array_equal(engine.fed[0], engine.fed[1])


@pytest.mark.parametrize(
    "body, reason",
    [
        (lambda: d.ct_bytes()[:-5000], "could not decode"),
        (d.structured_report, "holds no pixel data"),
    ],
    ids=["truncated", "no-pixels"],
)
def test_a_broken_dicom_file_fails_alone_with_the_reason(tmp_path, body, reason):
    outcomes, engine = run(tmp_path, [body(), d.ct_path().read_bytes()])
    assert reason in outcomes[0].error and outcomes[1].error is None
