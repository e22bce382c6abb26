"""``python -m bench.hostile_memory``: the API's peak memory while it refuses DICOM bombs.

Each case runs in a child process of its own: the Flask app (SQLite, an embedded Redis,
a folder blob store, the default limits), one normal DICOM upload to warm it up, then the
hostile upload through the test client. The child measures its resident size once warm
(idle) and its peak during the hostile request (Linux: the peak is reset through
``/proc/self/clear_refs`` before the request, then read from ``VmHWM``), and prints both.

The cases: a Deflated CT slice of about 262 KB whose data set inflates to 256 MiB, and a
CT file declaring 1,000,000 frames. The budget: 64 MiB over idle.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

MIB = 1024 * 1024
BUDGET_MIB = 64
CASES = ("deflate-bomb-256mib", "frames-1000000")


def _ct_dataset():
    """The CT slice that ships inside pydicom (nothing is downloaded)."""
    import pydicom

    return pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm")


def _part10(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def deflate_bomb(inflated: int) -> bytes:
    """A Deflated CT slice whose trailing padding is ``inflated`` zero bytes (built in steps)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    dataset = _ct_dataset()
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta, body = DicomBytesIO(), DicomBytesIO()
    for buffer in (meta, body):
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(meta, dataset.file_meta, enforce_standard=True)
    write_dataset(body, dataset)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [
        b"\0" * 128 + b"DICM" + meta.getvalue(),
        packer.compress(body.getvalue()),
        packer.compress(struct.pack("<HH2s2sL", 0xFFFC, 0xFFFC, b"OB", b"\0\0", inflated)),
    ]
    zeros = bytes(MIB)
    for _ in range(inflated // MIB):
        out.append(packer.compress(zeros))
    out.append(packer.compress(bytes(inflated % MIB)) + packer.flush())
    return b"".join(out)


def many_frames(frames: int) -> bytes:
    dataset = _ct_dataset()
    dataset.NumberOfFrames = frames
    return _part10(dataset)


def _rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def child(case: str, config: dict[str, str], key: str) -> dict[str, float]:
    """Run one case in this process; its numbers."""
    from api import create_app

    data = deflate_bomb(256 * MIB) if case.startswith("deflate") else many_frames(1_000_000)
    client = create_app(config).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"

    def send(name: str, body: bytes):
        return client.post(
            "/v1/jobs",
            data={"files": [(io.BytesIO(body), name)]},
            content_type="multipart/form-data",
        )

    warm = send("warm.dcm", _part10(_ct_dataset()))
    assert warm.status_code == 202, warm.get_json()
    idle = _rss_mib("VmRSS")
    _reset_peak()
    started = time.perf_counter()
    response = send("hostile.dcm", data)
    seconds = time.perf_counter() - started
    peak = _rss_mib("VmHWM")
    return {
        "case": case,
        "file_bytes": len(data),
        "status": response.status_code,
        "detail": response.get_json().get("detail", "(accepted)"),
        "seconds": round(seconds, 3),
        "idle_mib": round(idle, 1),
        "peak_mib": round(peak, 1),
        "over_idle_mib": round(peak - idle, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        setup = json.loads(sys.stdin.read())
        print(json.dumps(child(args.child, setup["config"], setup["key"])))
        return 0
    from db import migrate
    from db.keys import create_key
    from db.session import make_engine, make_session_factory
    from devtools.embedded_redis import EmbeddedRedis

    failed = False
    with tempfile.TemporaryDirectory(prefix="hostile-memory-") as folder:
        root = Path(folder)
        with EmbeddedRedis(root / "redis", persist=False) as redis:
            database_url = f"sqlite:///{root / 'bench.db'}"
            migrate.upgrade(database_url)
            engine = make_engine(database_url)
            with make_session_factory(engine).begin() as session:
                key = create_key(session, "bench", "submit,read").token
            engine.dispose()
            config = {
                "DATABASE_URL": database_url,
                "REDIS_URL": redis.url,
                "BLOB_DIR": str(root / "blobs"),
            }
            for case in CASES:
                done = subprocess.run(
                    [sys.executable, "-m", "bench.hostile_memory", "--child", case],
                    input=json.dumps({"config": config, "key": key}),
                    capture_output=True,
                    text=True,
                    env=os.environ.copy(),
                    check=False,
                )
                if done.returncode != 0:
                    print(done.stderr, file=sys.stderr)
                    return 1
                numbers = json.loads(done.stdout.strip().splitlines()[-1])
                within = numbers["over_idle_mib"] <= BUDGET_MIB
                failed |= not within
                print(
                    f"{case}: {numbers['file_bytes']} bytes -> {numbers['status']} in "
                    f"{numbers['seconds']} s; RSS idle {numbers['idle_mib']} MiB, peak "
                    f"{numbers['peak_mib']} MiB, +{numbers['over_idle_mib']} MiB "
                    f"({'within' if within else 'OVER'} the {BUDGET_MIB} MiB budget)"
                )
                print(f"  {numbers['detail']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
