"""The one contract between the API and the workers: the task name and its arguments.

The API enqueues by name (it never imports the worker or TensorFlow); the worker
registers its task under the same name. ``tests/test_contract.py`` pins both.
"""

INFER_TASK = "covidscan.infer_chunk"
"""Task that classifies a chunk of scans. Arguments: ``(scan_ids: list[str])``."""

INFER_QUEUE = "covidscan"
"""Queue the inference tasks travel on."""
