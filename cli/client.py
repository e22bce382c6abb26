"""A small HTTP client for the covidscan API (used by the CLI)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import requests

if TYPE_CHECKING:
    from api.schemas import SubmissionOptions

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".zip", ".dcm", ".dicom"}
DIRECT_SUFFIXES = {".png", ".jpg", ".jpeg"}  # what a presigned upload may carry
UPLOAD_THREADS = 8
PART_FILES = 64
"""Files per request of a multipart upload: a larger upload goes as an open job, part by
part, so that its first slices are classified while the rest is sent."""
PART_BYTES = 32 * 1024 * 1024
DISCARD_ATTEMPTS = 3  # deleting the open job of an upload refused part-way


def _sendable(path: Path) -> bool:
    """PNG, JPEG, ZIP or DICOM by name; a file without an extension too, as PACS exports name
    DICOM files (IM000001). The server tells them apart by content."""
    return not path.name.startswith(".") and (
        path.suffix.lower() in IMAGE_SUFFIXES or not path.suffix
    )


class ApiError(RuntimeError):
    """The server answered with an error; the message is its problem detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


def collect_files(paths: Sequence[Path]) -> list[Path]:
    """Expand folders (recursively, PNG/JPEG/ZIP/DICOM by name, sorted); keep files as given."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and _sendable(p)))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return files


class Client:
    def __init__(
        self,
        base_url: str,
        timeout: float = 300.0,
        api_key: Optional[str] = None,
        part_files: int = PART_FILES,
        part_bytes: int = PART_BYTES,
    ) -> None:
        """``api_key`` (``csk_…``) is sent as ``Authorization: Bearer`` with every request.
        ``part_files``, ``part_bytes``: the most files and bytes one request of a multipart
        upload carries (a single larger file goes alone)."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.part_files = part_files
        self.part_bytes = part_bytes
        self.http = requests.Session()
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"

    def _check(self, response: requests.Response) -> requests.Response:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            if response.status_code == 401:
                detail += " (set COVIDSCAN_API_KEY, or API_KEY_FILE to the file make run saved)"
            raise ApiError(response.status_code, detail)
        return response

    def submit(
        self,
        files: Sequence[Path],
        options: Optional[SubmissionOptions] = None,
        root: Optional[Path] = None,
        allow_modality: Optional[str] = None,
    ) -> dict[str, Any]:
        """Upload files as one job; names are relative to ``root`` when given.

        ``options``: the job's name, model, precision, priority, callback URL and
        explanation, as the API takes them (:class:`api.schemas.SubmissionOptions`; None:
        the defaults); ``allow_modality``: DICOM modalities to classify besides CT (``MR,PT``).
        PNG and JPEG slices go straight to the object store when the server offers
        presigned uploads. Otherwise they go as multipart requests: one, or, for more than
        one part's worth, an open job that takes them part by part and is then sealed.
        If a part is refused, the job is deleted and the error raised: the upload is taken
        whole or not at all, as a single request's is.
        """
        labels = [
            path.relative_to(root).as_posix() if root and path.is_relative_to(root) else path.name
            for path in files
        ]
        data = options.form_fields() if options is not None else {}
        if not allow_modality and all(path.suffix.lower() in DIRECT_SUFFIXES for path in files):
            job = self._submit_direct(files, labels, data)
            if job is not None:
                return job
        if allow_modality:
            data["allow_modality"] = allow_modality
        parts = self._parts(files, labels)
        if len(parts) == 1:
            return self._post_files("/v1/jobs", parts[0], data)
        job = self._post_files("/v1/jobs", parts[0], {**data, "open": "true"})
        skipped = list(job.get("skipped", []))
        try:
            for part in parts[1:]:
                added = self._post_files(
                    f"/v1/jobs/{job['id']}/scans",
                    part,
                    {"allow_modality": allow_modality} if allow_modality else {},
                )
                skipped += added.get("skipped", [])
        except BaseException as exc:
            fate = self._discard(job["id"])
            if isinstance(exc, ApiError):
                raise ApiError(exc.status, f"{exc.detail} ({fate})") from None
            exc.add_note(fate)
            raise
        sealed = self._check(
            self.http.post(f"{self.base_url}/v1/jobs/{job['id']}/seal", timeout=self.timeout)
        ).json()
        return {**sealed, "skipped": skipped}

    def _discard(self, job_id: str) -> str:
        """Delete the open job of an upload that failed part-way; says what became of it.

        A busy or unreachable server is asked again twice. If the job still stands, the
        parts sent so far are in it (the sweep seals it after OPEN_JOB_TIMEOUT): the
        answer says so and how to delete it, rather than claim nothing was kept.
        """
        reason: Optional[str] = None
        for attempt in range(DISCARD_ATTEMPTS):
            if attempt:
                time.sleep(0.5 * attempt)
            try:
                self.delete(job_id)
                reason = None
                break
            except ApiError as exc:
                reason = None if exc.status == 404 else str(exc)  # 404: already gone
                if exc.status < 500:
                    break
            except requests.RequestException as exc:
                reason = f"{type(exc).__name__}: {exc}"
        if reason is None:
            return f"job {job_id} was deleted: nothing of this upload was kept"
        return (
            f"job {job_id} could not be deleted ({reason}); the parts sent before the "
            f"failure are kept in it: delete it with `covidscan delete {job_id}`"
        )

    def _parts(self, files: Sequence[Path], labels: Sequence[str]) -> list[list[tuple[Path, str]]]:
        """The files in request-sized parts, in order: at most ``part_files`` files and,
        unless one file is larger, ``part_bytes`` bytes each."""
        parts: list[list[tuple[Path, str]]] = [[]]
        size = 0
        for path, label in zip(files, labels):
            length = path.stat().st_size
            if parts[-1] and (len(parts[-1]) >= self.part_files or size + length > self.part_bytes):
                parts.append([])
                size = 0
            parts[-1].append((path, label))
            size += length
        return parts

    def _post_files(
        self, route: str, part: Sequence[tuple[Path, str]], data: dict[str, str]
    ) -> dict[str, Any]:
        handles = []
        try:
            fields = []
            for path, label in part:
                handle = open(path, "rb")
                handles.append(handle)
                fields.append(("files", (label, handle, "application/octet-stream")))
            response = self.http.post(
                f"{self.base_url}{route}", files=fields, data=data, timeout=self.timeout
            )
        finally:
            for handle in handles:
                handle.close()
        return self._check(response).json()

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """The job's webhook events and every attempt to deliver each."""
        return self._check(
            self.http.get(f"{self.base_url}/v1/jobs/{job_id}/deliveries", timeout=self.timeout)
        ).json()["events"]

    def _submit_direct(
        self, files: Sequence[Path], labels: Sequence[str], fields: dict[str, str]
    ) -> Optional[dict[str, Any]]:
        """The two-step upload: ask for presigned URLs, PUT each slice, start the job.

        None when the server takes multipart uploads only (415), or when this machine cannot
        reach the object store at the URLs the server hands out (S3_PUBLIC_ENDPOINT_URL
        unset); the upload left behind is deleted by the server's sweep."""
        body = {
            "files": [
                {"filename": label, "size": path.stat().st_size}
                for path, label in zip(files, labels)
            ],
            **fields,
        }
        response = self.http.post(f"{self.base_url}/v1/jobs", json=body, timeout=self.timeout)
        if response.status_code == 415:
            return None
        created = self._check(response).json()
        store = requests.Session()  # never sends the API key to the object store

        def put(item: tuple[dict[str, Any], Path]) -> None:
            part, path = item
            with open(path, "rb") as handle:
                answer = store.request(
                    part["method"],
                    part["url"],
                    data=handle,
                    headers=part["headers"],
                    timeout=self.timeout,
                )
            if answer.status_code >= 300:
                raise ApiError(
                    answer.status_code,
                    f"the object store refused {part['filename']}: {answer.text[:300]}",
                )

        try:
            with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
                list(pool.map(put, zip(created["parts"], files)))
        except requests.ConnectionError:
            return None
        return self._check(
            self.http.post(f"{self.base_url}{created['start_url']}", timeout=self.timeout)
        ).json()

    def jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The caller's most recent jobs, newest first."""
        return self._check(
            self.http.get(f"{self.base_url}/v1/jobs", params={"limit": limit}, timeout=self.timeout)
        ).json()["jobs"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._check(
            self.http.get(f"{self.base_url}/v1/jobs/{job_id}", timeout=self.timeout)
        ).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._check(
            self.http.post(f"{self.base_url}/v1/jobs/{job_id}/cancel", timeout=self.timeout)
        ).json()

    def delete(self, job_id: str) -> None:
        self._check(self.http.delete(f"{self.base_url}/v1/jobs/{job_id}", timeout=self.timeout))

    def results(self, job_id: str, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        cursor: Optional[str] = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cursor is not None:
                params["cursor"] = cursor
            body = self._check(
                self.http.get(
                    f"{self.base_url}/v1/jobs/{job_id}/results", params=params, timeout=self.timeout
                )
            ).json()
            yield from body["results"]
            cursor = body.get("next_cursor")
            if cursor is None:
                return

    def results_csv(self, job_id: str) -> str:
        return self._check(
            self.http.get(
                f"{self.base_url}/v1/jobs/{job_id}/results",
                params={"format": "csv"},
                timeout=self.timeout,
            )
        ).text

    def retrieve(
        self,
        source: str,
        accession_numbers: Sequence[str] = (),
        study_uids: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Ask for a retrieval from ``source`` (``POST /v1/retrievals``); its first state."""
        body: dict[str, Any] = {"source": source}
        if accession_numbers:
            body["accession_numbers"] = list(accession_numbers)
        else:
            body["study_uids"] = list(study_uids)
        return self._check(
            self.http.post(f"{self.base_url}/v1/retrievals", json=body, timeout=self.timeout)
        ).json()

    def retrieval(self, retrieval_id: str) -> dict[str, Any]:
        return self._check(
            self.http.get(f"{self.base_url}/v1/retrievals/{retrieval_id}", timeout=self.timeout)
        ).json()
