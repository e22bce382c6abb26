"""The one contract between the API and the workers: the task name and its arguments.

The API enqueues by name (it never imports the worker or TensorFlow); the worker
registers its task under the same name. ``tests/test_contract.py`` pins both.
"""

WAKE_TASK = "covidscan.wake"
"""A wake-up, without arguments: the worker that takes it classifies waiting scans from SQL,
a batch at a time and highest priority first, until none is left. SQL says what must run;
a lost wake-up delays work (until a sweep sends another), a duplicate one changes nothing."""

INFER_QUEUE = "covidscan"
"""Queue the inference tasks travel on."""

BATCHING_STATS_COMMAND = "covidscan_batching"
"""Remote-control command a worker answers with its batching counters."""

DELIVER_TASK = "covidscan.deliver_webhook"
"""One attempt to deliver a job's webhook event, with the event id as its one argument. SQL
says whether the event is due; a duplicate or late message finds it taken and does nothing."""
