"""The one contract between the API and the workers: the task name and its arguments.

The API enqueues by name (it never imports the worker or TensorFlow); the worker
registers its task under the same name. ``tests/test_contract.py`` pins both.
"""

INFER_TASK = "covidscan.infer_chunk"
"""Task that classifies a chunk of scans. Arguments: ``(scan_ids: list[str])``, and optionally
``precision`` (see PRECISION_OPTION)."""

INFER_QUEUE = "covidscan"
"""Queue the inference tasks travel on."""

PRECISION_OPTION = "precision"
"""Optional keyword argument of INFER_TASK: ``fp32``, ``bf16``, ``fp16``, ``int8`` or ``auto``
requested by the job."""

BATCHING_STATS_COMMAND = "covidscan_batching"
"""Remote-control command a worker answers with its batching counters."""
