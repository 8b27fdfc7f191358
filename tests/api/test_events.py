"""``/v1/jobs/{id}/events``: polling pages, and the SSE stream with Last-Event-ID ending at the end.

Job state is driven by writing through the repositories and ``append_event``, as the worker does.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from api.app import create_app
from api.services.events import StreamSettings, stream_events
from tests.api.conftest import ApiEnv
from tests.api.jobs_support import new_job, run_to, seed, worker_finish, worker_progress, worker_start

SSE = {"Accept": "text/event-stream"}


def parse_sse(text: str) -> list[dict[str, Any]]:
    """SSE messages (blank-line separated) as dicts of their fields; comments kept as ``comment``."""
    messages = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        message: dict[str, Any] = {}
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            message[field or "comment"] = value[1:] if value.startswith(" ") else value
        messages.append(message)
    return messages


def _succeeded_job(env: ApiEnv) -> tuple[Any, str]:
    """A job whose log is queued, started, 3 x progress, succeeded (seq 1..6)."""
    s = seed(env)
    job_id = new_job(env, s)
    attempt = worker_start(env, job_id, s.tenant.id)
    for step in (50, 100, 150):
        worker_progress(env, job_id, s.tenant.id, attempt, step)
    worker_finish(env, job_id, s.tenant.id, attempt, "succeeded")
    return s, job_id


def test_polling_pages_by_seq(any_env: ApiEnv) -> None:
    """Events come oldest first with consecutive seqs; ``after`` and ``limit`` page through them."""
    s, job_id = _succeeded_job(any_env)
    url = f"/v1/jobs/{job_id}/events"
    full = any_env.client.get(url, headers=s.tenant.headers).json()
    assert [e["seq"] for e in full["data"]] == [1, 2, 3, 4, 5, 6]
    assert [e["type"] for e in full["data"]] == ["job.queued", "job.started"] + ["job.progress"] * 3 + [
        "job.succeeded"
    ]
    assert full["has_more"] is False
    assert full["data"][2]["data"]["step"] == 50 and full["data"][0]["id"].startswith("evt_")
    page = any_env.client.get(url, params={"after": 2, "limit": 2}, headers=s.tenant.headers).json()
    assert [e["seq"] for e in page["data"]] == [3, 4] and page["has_more"] is True
    assert any_env.client.get(url, params={"after": 6}, headers=s.tenant.headers).json() == {
        "data": [],
        "has_more": False,
    }


def test_sse_resumes_after_last_event_id_and_ends_at_the_terminal_event(any_env: ApiEnv) -> None:
    """With Last-Event-ID: 3 the stream sends seq 4..6 (id = seq, event = type) and then closes."""
    s, job_id = _succeeded_job(any_env)
    response = any_env.client.get(
        f"/v1/jobs/{job_id}/events", headers={**s.tenant.headers, **SSE, "Last-Event-ID": "3"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    messages = [m for m in parse_sse(response.text) if "id" in m]
    assert [m["id"] for m in messages] == ["4", "5", "6"]
    assert [m["event"] for m in messages] == ["job.progress", "job.progress", "job.succeeded"]
    polled = any_env.client.get(f"/v1/jobs/{job_id}/events?after=3", headers=s.tenant.headers).json()["data"]
    assert [json.loads(m["data"]) for m in messages] == polled


def test_sse_reconnect_after_the_end_closes_at_once(api_env: ApiEnv) -> None:
    """A client resuming after the terminal event gets no events and a closed stream, not a hang."""
    s, job_id = _succeeded_job(api_env)
    response = api_env.client.get(
        f"/v1/jobs/{job_id}/events", headers={**s.tenant.headers, **SSE, "Last-Event-ID": "6"}
    )
    assert response.status_code == 200
    assert [m for m in parse_sse(response.text) if "id" in m] == []


def test_sse_continues_past_a_terminal_event_that_a_retry_superseded(api_env: ApiEnv) -> None:
    """cancelled -> retry -> succeeded: the stream from 0 does not stop at job.cancelled."""
    s = seed(api_env)
    job_id = new_job(api_env, s)
    run_to(api_env, job_id, s.tenant.id, "cancelled")
    assert api_env.client.post(f"/v1/jobs/{job_id}/retry", headers=s.tenant.headers).status_code == 200
    attempt = worker_start(api_env, job_id, s.tenant.id)
    worker_finish(api_env, job_id, s.tenant.id, attempt, "succeeded")
    response = api_env.client.get(f"/v1/jobs/{job_id}/events", headers={**s.tenant.headers, **SSE})
    types = [m["event"] for m in parse_sse(response.text) if "id" in m]
    assert types == [
        "job.queued",
        "job.started",
        "job.cancelled",
        "job.queued",
        "job.started",
        "job.succeeded",
    ]


def test_after_query_and_last_event_id_take_the_later(api_env: ApiEnv) -> None:
    """When both are given the stream resumes after the larger seq (it never repeats events)."""
    s, job_id = _succeeded_job(api_env)
    response = api_env.client.get(
        f"/v1/jobs/{job_id}/events?after=5", headers={**s.tenant.headers, **SSE, "Last-Event-ID": "2"}
    )
    assert [m["id"] for m in parse_sse(response.text) if "id" in m] == ["6"]


@pytest.mark.parametrize("params", [{"after": -1}, {"limit": 0}, {"limit": 100000}, {"after": "x"}])
def test_bad_event_parameters_are_422(api_env: ApiEnv, params: dict[str, Any]) -> None:
    """Negative or non-numeric cursors and silly limits are 422 problems."""
    s = seed(api_env)
    job_id = new_job(api_env, s)
    response = api_env.client.get(f"/v1/jobs/{job_id}/events", params=params, headers=s.tenant.headers)
    assert response.status_code == 422


def test_stream_sends_heartbeats_and_holds_no_session_while_waiting(local_env: ApiEnv) -> None:
    """With nothing new the stream sends heartbeat comments; each poll opened and closed its own session."""
    s = seed(local_env)
    job_id = new_job(local_env, s)
    opened: list[int] = []
    closed: list[int] = []

    class CountingSession:
        def __enter__(self) -> Any:
            opened.append(1)
            self.session = local_env.database.session_factory()
            return self.session

        def __exit__(self, *exc: object) -> None:
            self.session.close()
            closed.append(1)

    async def first_chunks() -> list[str]:
        chunks: list[str] = []
        stream = stream_events(
            CountingSession,
            job_id=job_id,
            after=0,
            settings=StreamSettings(poll_seconds=0.01, heartbeat_seconds=0.05),
        )
        async for chunk in stream:
            chunks.append(chunk)
            if sum(c.startswith(": heartbeat") for c in chunks) == 2:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        return chunks

    chunks = anyio.run(first_chunks)
    assert chunks[0].startswith("retry: ")
    assert chunks[1].startswith("id: 1\nevent: job.queued\n")
    assert sum(c == ": heartbeat\n\n" for c in chunks) == 2
    assert len(opened) == len(closed) >= 2


# -- a real server: the stream delivers events written while it is open --------------------------------


@pytest.fixture()
def live_server(local_env: ApiEnv) -> Iterator[str]:
    """The local-mode app served by uvicorn on a loopback port, in a thread."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(local_env.settings, database=local_env.database, store=local_env.store)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = threading.Event()
    while not started.wait(0.01):  # waiting for the server thread to bind; not test synchronisation
        if server.started:
            started.set()
        assert thread.is_alive()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.timeout(60)
def test_live_stream_follows_the_job_to_its_end(local_env: ApiEnv, live_server: str) -> None:
    """Open the stream on a queued job, then run it: every event arrives in order and the stream ends."""
    s = seed(local_env)
    job_id = new_job(local_env, s)
    seen: list[tuple[str, str]] = []
    with (
        httpx.Client(base_url=live_server, timeout=30) as client,
        client.stream("GET", f"/v1/jobs/{job_id}/events", headers={**s.tenant.headers, **SSE}) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        attempt = 0
        current: dict[str, str] = {}
        for line in lines:
            if line.startswith(("id:", "event:")):
                key, _, value = line.partition(": ")
                current[key] = value
            elif line == "" and "id" in current:
                seen.append((current["id"], current["event"]))
                current = {}
                if seen[-1][1] == "job.queued":  # the stream is open: now the worker runs the job
                    attempt = worker_start(local_env, job_id, s.tenant.id)
                elif seen[-1][1] == "job.started":
                    worker_progress(local_env, job_id, s.tenant.id, attempt, 100)
                elif seen[-1][1] == "job.progress":
                    worker_finish(local_env, job_id, s.tenant.id, attempt, "succeeded")
    assert seen == [("1", "job.queued"), ("2", "job.started"), ("3", "job.progress"), ("4", "job.succeeded")]
