"""Where an S3 blob store keeps its objects: ``s3://BUCKET/PREFIX`` and how to reach it.

A value of the kernel: settings parse it from ``BLOB_STORE``, the stores in ``db`` use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class S3Location:
    """Where an S3 blob store keeps its objects and how to reach it.

    ``public_endpoint_url``: the endpoint presigned upload URLs name (clients outside the
    cluster may reach the store under another name than the API does).
    """

    bucket: str
    prefix: str = ""
    endpoint_url: Optional[str] = None
    public_endpoint_url: Optional[str] = None
    region: str = "us-east-1"
    access_key_id: Optional[str] = None
    secret_access_key: Optional[str] = field(default=None, repr=False)
    session_token: Optional[str] = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @classmethod
    def from_url(cls, url: str, **reach: Any) -> S3Location:
        """Parse ``s3://BUCKET`` or ``s3://BUCKET/PREFIX``; ``reach`` sets the other fields.

        Raises:
            ValueError: another scheme, a bucket name S3 would refuse, or ``..`` in the prefix.
        """
        parts = urlsplit(url)
        if (
            parts.scheme != "s3"
            or not _BUCKET.fullmatch(parts.netloc)
            or parts.query
            or parts.fragment
        ):
            raise ValueError(
                "must be s3://BUCKET or s3://BUCKET/PREFIX (a bucket name of 3-63 "
                "lower-case letters, digits, dots and dashes), got "
                f"{url!r}"
            )
        prefix = parts.path.strip("/")
        if ".." in prefix.split("/"):
            raise ValueError(f"must not have '..' in its prefix, got {url!r}")
        return cls(bucket=parts.netloc, prefix=prefix + "/" if prefix else "", **reach)
