"""A small Python client of the Hyperforge HTTP API (service-api.md), built on httpx.

Used by ``hyperforge demo`` and ``hyperforge jobs ...``, and by the worker tests to drive the
service as a platform would. Errors come back as ``ApiError`` carrying the problem+json ``code``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

from core.errors import HyperforgeError

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
TERMINAL_EVENTS = frozenset({"job.succeeded", "job.failed", "job.cancelled"})


class ApiError(HyperforgeError):
    """The API answered with an error (problem+json); ``status`` and ``code`` come from it."""

    code = "api_error"

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}", code=code)
        self.status = status
        self.body = body


def _raise_for(response: httpx.Response) -> None:
    """Turn a 4xx/5xx answer into ``ApiError`` with the problem's ``code`` and ``detail``."""
    if response.is_success or response.is_redirect:
        return
    response.read()
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("code") or "http_error")
        detail = str(body.get("detail") or body.get("title") or response.reason_phrase)
    else:
        code, detail = "http_error", response.text[:500] or response.reason_phrase
    raise ApiError(response.status_code, code, detail, body)


class Client:
    """A client of one Hyperforge API with one tenant's API key."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            # Artifact downloads from S3 answer 302 to a presigned URL; httpx drops the
            # Authorization header when the redirect leaves this origin.
            follow_redirects=True,
        )

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        _raise_for(response)
        return response.json()

    # -- models and datasets -------------------------------------------------------------------
    def list_models(self) -> list[dict[str, Any]]:
        """The base models workers can train on."""
        body = self._json("GET", "/v1/models")
        return list(body["data"] if isinstance(body, dict) else body)

    def upload_dataset(
        self,
        files: Iterable[Path],
        *,
        name: str | None = None,
        caption_source: str | None = None,
        end_user_id: str | None = None,
    ) -> dict[str, Any]:
        """Upload images and ``.txt`` captions (or one ``.zip`` archive) as a dataset."""
        paths = [Path(p) for p in files]
        data: dict[str, str] = {}
        if name is not None:
            data["name"] = name
        if caption_source is not None:
            data["caption_source"] = caption_source
        if end_user_id is not None:
            data["end_user_id"] = end_user_id
        handles = [p.open("rb") for p in paths]
        try:
            if len(paths) == 1 and paths[0].suffix.lower() == ".zip":
                parts = [("archive", (paths[0].name, handles[0], "application/zip"))]
            else:
                parts = [
                    ("files", (p.name, h, "application/octet-stream"))
                    for p, h in zip(paths, handles, strict=False)
                ]
            result: dict[str, Any] = self._json("POST", "/v1/datasets", data=data, files=parts)
            return result
        finally:
            for h in handles:
                h.close()

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        """One dataset."""
        result: dict[str, Any] = self._json("GET", f"/v1/datasets/{dataset_id}")
        return result

    # -- jobs ------------------------------------------------------------------------------------
    def submit_job(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a training spec; the same ``idempotency_key`` replays the first answer."""
        key = idempotency_key or f"hf-client-{uuid.uuid4()}"
        result: dict[str, Any] = self._json("POST", "/v1/jobs", json=spec, headers={"Idempotency-Key": key})
        return result

    def get_job(self, job_id: str) -> dict[str, Any]:
        """One job."""
        result: dict[str, Any] = self._json("GET", f"/v1/jobs/{job_id}")
        return result

    def list_jobs(self, *, status: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent jobs (first page)."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        body = self._json("GET", "/v1/jobs", params=params)
        return list(body["data"] if isinstance(body, dict) else body)

    def cancel_job(self, job_id: str, *, save_checkpoint: bool = False) -> dict[str, Any]:
        """Ask a job to stop (queued: at once; running: at its next step)."""
        result: dict[str, Any] = self._json(
            "POST", f"/v1/jobs/{job_id}/cancel", json={"save_checkpoint": save_checkpoint}
        )
        return result

    def retry_job(self, job_id: str) -> dict[str, Any]:
        """Put a failed or cancelled job back in the queue (it resumes from its last checkpoint)."""
        result: dict[str, Any] = self._json("POST", f"/v1/jobs/{job_id}/retry")
        return result

    def events(self, job_id: str, *, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """One page of a job's events after ``seq`` ``after``."""
        body = self._json("GET", f"/v1/jobs/{job_id}/events", params={"after": after, "limit": limit})
        return list(body["data"] if isinstance(body, dict) else body)

    def stream_events(
        self, job_id: str, *, after: int = 0, timeout: float = 3600.0
    ) -> Iterator[dict[str, Any]]:
        """Follow a job's events over SSE until its terminal event, reconnecting with Last-Event-ID."""
        last = after
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last)}
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    params={"after": last},
                    headers=headers,
                    timeout=httpx.Timeout(30.0, read=None),
                ) as response:
                    _raise_for(response)
                    for event in _parse_sse(response.iter_lines()):
                        last = max(last, int(event.get("seq", last)))
                        yield event
                        if event.get("type") in TERMINAL_EVENTS:
                            return
            except (httpx.TransportError, httpx.StreamError):
                pass  # a dropped stream: reconnect from the last seq we saw
            # The stream ended without a terminal event (server restart, proxy timeout):
            # if the job is done we missed nothing that polling would not give us.
            if self.get_job(job_id)["status"] in TERMINAL_STATUSES:
                for event in self.events(job_id, after=last, limit=1000):
                    yield event
                return
            time.sleep(0.5)  # back off before reconnecting; not test synchronisation
        raise HyperforgeError(f"job {job_id} did not finish within {timeout:.0f} s", code="timeout")

    def poll_events(
        self, job_id: str, *, after: int = 0, interval: float = 1.0, timeout: float = 3600.0
    ) -> Iterator[dict[str, Any]]:
        """Follow a job's events by polling until its terminal event."""
        last = after
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            page = self.events(job_id, after=last)
            for event in page:
                last = max(last, int(event["seq"]))
                yield event
                if event.get("type") in TERMINAL_EVENTS:
                    return
            if not page:
                time.sleep(interval)  # polling interval of a client, not test synchronisation
        raise HyperforgeError(f"job {job_id} did not finish within {timeout:.0f} s", code="timeout")

    # -- artifacts -------------------------------------------------------------------------------
    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        """The artifacts a job has written so far."""
        body = self._json("GET", f"/v1/jobs/{job_id}/artifacts")
        return list(body["data"] if isinstance(body, dict) else body)

    def download_artifact(self, artifact: dict[str, Any], dest_dir: Path) -> Path:
        """Stream one artifact's bytes into ``dest_dir`` under its name; return the file's path."""
        dest_dir.mkdir(parents=True, exist_ok=True)
        name = Path(str(artifact["name"])).name or str(artifact["id"])  # never a path from the server
        target = dest_dir / name
        partial = target.with_name(target.name + ".partial")
        with self._http.stream("GET", f"/v1/artifacts/{artifact['id']}/content") as response:
            _raise_for(response)
            with partial.open("wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
        partial.replace(target)
        return target

    def download_all(self, job_id: str, dest_dir: Path, *, kinds: Iterable[str] | None = None) -> list[Path]:
        """Download a job's artifacts (optionally only some kinds); return the files written."""
        wanted = set(kinds) if kinds is not None else None
        return [
            self.download_artifact(a, dest_dir)
            for a in self.artifacts(job_id)
            if wanted is None or a["kind"] in wanted
        ]


def _parse_sse(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Decode ``text/event-stream`` lines into the JSON objects of their ``data:`` fields."""
    data: list[str] = []
    event_id: str | None = None
    for line in lines:
        if line == "":
            if data:
                payload = json.loads("\n".join(data))
                if isinstance(payload, dict):
                    if event_id is not None and "seq" not in payload:
                        payload["seq"] = int(event_id)
                    yield payload
            data, event_id = [], None
        elif line.startswith(":"):
            continue  # comment / keep-alive
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
    if data:
        payload = json.loads("\n".join(data))
        if isinstance(payload, dict):
            yield payload
