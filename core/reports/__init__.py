"""Results as DICOM objects: the series' Structured Report (:mod:`core.reports.sr`), its
Grad-CAM overlay as a Secondary Capture (:mod:`core.reports.secondary_capture`), and both
made for one series from SQL and the blob store (:mod:`core.reports.series`), for the HTTP
API and for exports to a PACS alike."""
