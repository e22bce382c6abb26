"""The DICOM network adapter: the C-STORE listener (and, later, the SCU side)."""
