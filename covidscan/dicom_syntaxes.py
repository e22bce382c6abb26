"""The DICOM transfer syntaxes the pipeline decodes: what the C-STORE listener accepts.

Uncompressed and deflated ones are read by pydicom; JPEG, JPEG-LS, JPEG 2000 and RLE by
the decoder plugins in requirements (pylibjpeg-openjpeg, pylibjpeg-rle and GDCM).
"""

from __future__ import annotations

from pydicom import uid

DECODED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
)
"""Offered at association in this order of preference (uncompressed first)."""
