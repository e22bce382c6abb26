"""The ResNet50 CT classifier: preprocessing, loading and batched inference.

Depends on NumPy, OpenCV and TensorFlow only (no Flask, Celery or SQL). Import
the submodules you need; importing this package loads nothing heavy.
"""

import sys

# OpenVINO's model tools and NNCF send usage events to Google Analytics unless the user
# has opted out, each event from a child process forked off the caller (a worker holding
# its models and threads). A service that holds patient data sends nothing anywhere it
# was not told to. Both libraries fall back to a no-op when the telemetry package cannot
# be imported, which this entry makes so.
# (typeshed types sys.modules as modules only; None is the import system's "not importable".)
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
