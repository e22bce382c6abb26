"""The blob store in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, Ceph RGW, ...)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any, Optional

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from db.blobs import BlobNotFound, BlobStore, S3Location

MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys
MODELS_FOLDER = "models"
"""Registered models live under ``<prefix>models/`` (:mod:`db.s3_model_store`); job ids are
hex UUIDs, so no job's blobs share it, and the orphan sweep passes it over."""


def s3_client(location: S3Location, endpoint_url: Optional[str], quick: bool = False):
    """A client; ``quick``: one attempt with 2 s timeouts (a health check must not hang)."""
    if quick:
        config = Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": 1},
            connect_timeout=2,
            read_timeout=2,
        )
    else:
        config = Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            max_pool_connections=64,
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=5,
            read_timeout=60,
        )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=location.region,
        config=config,
        aws_access_key_id=location.access_key_id,
        aws_secret_access_key=location.secret_access_key,
        aws_session_token=location.session_token,
    )


class S3BlobStore(BlobStore):
    """Objects ``<prefix><job_id>/<name>`` in one bucket; the bucket must exist
    (``covidscan migrate`` creates it when it can)."""

    fetch_concurrency = 4  # a GET waits a few milliseconds on the network

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self.bucket = location.bucket
        self.prefix = location.prefix
        self.s3 = s3_client(location, location.endpoint_url)
        public = location.public_endpoint_url
        self._signer = (
            self.s3
            if not public or public == location.endpoint_url
            else s3_client(location, public)
        )
        self._quick: Any = None  # the health check's client (boto3's), made when first asked

    def _object(self, key: str) -> str:
        parts = PurePosixPath(key).parts
        if not parts or key.startswith("/") or ".." in parts or "." in key.split("/"):
            raise ValueError(f"blob key {key!r} escapes {self.location.url}")
        return self.prefix + key

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self._object(key), Body=data)

    def get(self, key: str, length: Optional[int] = None) -> bytes:
        extra = {} if length is None else {"Range": f"bytes=0-{max(length, 1) - 1}"}
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=self._object(key), **extra)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MISSING_CODES | {"InvalidRange"}:
                if exc.response["Error"]["Code"] == "InvalidRange":  # an empty object
                    return b""
                raise BlobNotFound(
                    f"uploaded bytes are missing from the blob store ({key})"
                ) from None
            raise
        with response["Body"] as body:
            return body.read()

    def copy(self, source: str, target: str) -> None:
        """A copy made by the store itself: the bytes never pass through this process."""
        try:
            self.s3.copy_object(
                Bucket=self.bucket,
                Key=self._object(target),
                CopySource={"Bucket": self.bucket, "Key": self._object(source)},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MISSING_CODES | {"NoSuchKey"}:
                raise BlobNotFound(
                    f"uploaded bytes are missing from the blob store ({source})"
                ) from None
            raise

    def size(self, key: str) -> int:
        try:
            return self.s3.head_object(Bucket=self.bucket, Key=self._object(key))["ContentLength"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MISSING_CODES:
                raise BlobNotFound(
                    f"uploaded bytes are missing from the blob store ({key})"
                ) from None
            raise

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self._object(key))

    def objects(self, prefix: str) -> Iterator[dict]:
        """Every object whose name starts with ``prefix`` (the whole name, store prefix
        included), as listed."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            yield from page.get("Contents", ())

    def keys(self, job_id: str) -> list[str]:
        start = len(self.prefix)
        return sorted(o["Key"][start:] for o in self.objects(self._object(job_id) + "/"))

    def delete_job(self, job_id: str) -> None:
        if job_id == MODELS_FOLDER:
            raise ValueError(f"{job_id!r} holds the registered models, not a job's blobs")
        self.delete_keys(
            [o["Key"] for o in self.objects(self._object(job_id) + "/")], f"job {job_id}"
        )

    def delete_keys(self, keys: list[str], owner: str) -> None:
        """Delete whole object names (prefix included) in batches; ``owner`` names them
        in the error."""
        for i in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[i : i + DELETE_BATCH]]
            response = self.s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            errors = response.get("Errors") or []
            if errors:
                raise OSError(
                    f"the blob store kept {len(errors)} objects of {owner}: "
                    f"{errors[0].get('Code')} {errors[0].get('Message')}"
                )

    def job_ids_older_than(self, seconds: float) -> list[str]:
        """Job ids whose newest object is more than ``seconds`` old (one full listing)."""
        newest: dict[str, datetime] = {}
        for obj in self.objects(self.prefix):
            job_id, slash, _ = obj["Key"][len(self.prefix) :].partition("/")
            if slash and job_id and not job_id.startswith(".") and job_id != MODELS_FOLDER:
                seen = newest.get(job_id)
                if seen is None or obj["LastModified"] > seen:
                    newest[job_id] = obj["LastModified"]
        cutoff = datetime.now(UTC) - timedelta(seconds=seconds)
        return sorted(job_id for job_id, when in newest.items() if when < cutoff)

    def upload_url(self, key: str, size: int, expires: int) -> Optional[str]:
        return self._signer.generate_presigned_url(
            "put_object",
            ExpiresIn=expires,
            Params={"Bucket": self.bucket, "Key": self._object(key), "ContentLength": size},
        )

    def problem(self) -> Optional[str]:
        """None when the bucket answers; else why not (its URL, never the credentials)."""
        if self._quick is None:
            self._quick = s3_client(self.location, self.location.endpoint_url, quick=True)
        try:
            self._quick.head_bucket(Bucket=self.bucket)
            return None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            return f"{self.location.url}: {code}"
        except BotoCoreError as exc:
            return f"{self.location.url} unreachable: {exc.__class__.__name__}"

    def ensure_bucket(self) -> bool:
        """Create the bucket unless it exists; True if it was created."""
        try:
            self.s3.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in MISSING_CODES | {"NoSuchBucket"}:
                raise
        try:
            where = (
                {}
                if self.location.region == "us-east-1"
                else {"CreateBucketConfiguration": {"LocationConstraint": self.location.region}}
            )
            self.s3.create_bucket(Bucket=self.bucket, **where)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
            return False
        return True
