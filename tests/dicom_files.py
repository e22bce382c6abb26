"""DICOM test data built from the CT slice that ships with pydicom (nothing is downloaded).

``CT_small.dcm`` is a 128×128 CT slice (16-bit, slope 1, intercept -1024). Series are the
same pixels written again with new UIDs and distinct positions along the patient axis;
the bytes are returned in a shuffled order so a test can check the ordering.
"""

from __future__ import annotations

import copy
import io
import random
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "MRN-0042-SECRET"
ACCESSION = "ACC-777-SECRET"
BIRTH_DATE = "19500101"


def ct_path() -> Path:
    """The CT slice that ships inside pydicom's package (``get_testdata_file`` would try to
    download a missing file; this one is always local)."""
    return Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


def ct_dataset() -> Dataset:
    dataset = pydicom.dcmread(ct_path())
    dataset.PatientName = PATIENT_NAME
    dataset.PatientID = PATIENT_ID
    dataset.AccessionNumber = ACCESSION
    dataset.PatientBirthDate = BIRTH_DATE
    return dataset


def to_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ct_bytes(**changes) -> bytes:
    """CT_small with some attributes changed (e.g. ``Modality="MR"``)."""
    dataset = ct_dataset()
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    return to_bytes(dataset)


def ct_series(
    count: int,
    seed: int = 0,
    spacing: float = 2.5,
    study_uid: Optional[str] = None,
    pixels: Optional[list[np.ndarray]] = None,
) -> tuple[list[bytes], list[str]]:
    """``count`` slices of one new series, shuffled.

    Returns:
        The files in a shuffled order, and their SOP instance UIDs in patient-axis order
        (feet to head: increasing z). Instance numbers run the other way, so a sort on them
        alone would be wrong; ``pixels`` (stored values) may differ per slice.
    """
    base = ct_dataset()
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    files, ordered = [], []
    for index in range(count):
        dataset = copy.deepcopy(base)
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.InstanceNumber = count - index
        x, y, _ = (float(v) for v in base.ImagePositionPatient)
        dataset.ImagePositionPatient = [x, y, -300.0 + index * spacing]
        if pixels is not None:
            dataset.PixelData = pixels[index].astype(base.pixel_array.dtype).tobytes()
        files.append(to_bytes(dataset))
        ordered.append(str(dataset.SOPInstanceUID))
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return [files[i] for i in order], ordered


def multiframe_ct(frames: int = 3, spacing: float = 5.0) -> bytes:
    """One file holding ``frames`` CT frames, each with its own position (per-frame groups)."""
    dataset = ct_dataset()
    stored = dataset.pixel_array
    dataset.NumberOfFrames = frames
    dataset.PixelData = b"".join(
        (stored + 10 * i).astype(stored.dtype).tobytes() for i in range(frames)
    )
    groups = []
    for index in reversed(range(frames)):  # stored head to feet
        group = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = [0.0, 0.0, index * spacing]
        group.PlanePositionSequence = Sequence([plane])
        groups.append(group)
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([orientation])
    dataset.SharedFunctionalGroupsSequence = Sequence([shared])
    dataset.PerFrameFunctionalGroupsSequence = Sequence(groups)
    return to_bytes(dataset)


def structured_report() -> bytes:
    """A minimal SR document: a DICOM object without pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "SR"
    dataset.PatientName = PATIENT_NAME
    return to_bytes(dataset)


def zip_of(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def ct_compressed_by_gdcm(syntax: str, folder: Path) -> bytes:
    """CT_small re-encoded by GDCM (pydicom cannot encode JPEG Lossless or JPEG-LS without
    a GPL plugin); ``syntax`` names a ``gdcm.TransferSyntax`` constant."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(ct_path()))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change()
    out = folder / f"ct-{syntax}.dcm"
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(out))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return out.read_bytes()
