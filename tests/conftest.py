"""Session-wide test fixtures: the real external services the suite talks to.

Postgres, Redis and an S3 API on loopback are real servers. Their URLs come from
``HYPERFORGE_TEST_DATABASE_URL``, ``HYPERFORGE_TEST_REDIS_URL`` and
``HYPERFORGE_TEST_S3_ENDPOINT`` (``.ci/run`` exports them); the defaults are this
machine's Postgres and Redis, and a moto S3 server the suite starts itself on a
free loopback port. A test that needs a service that is down is skipped with the
reason, unless ``HYPERFORGE_REQUIRE_SERVICES=1`` (CI) where it fails instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def services_required() -> bool:
    """True when a missing service must fail the run rather than skip (CI)."""
    return os.environ.get("HYPERFORGE_REQUIRE_SERVICES", "") == "1"


def _unavailable(what: str, why: str) -> None:
    message = f"{what} is not reachable ({why})"
    if services_required():
        pytest.fail(message + "; HYPERFORGE_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
    pytest.skip(message)


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def database_url() -> str:
    """URL of a reachable Postgres database (SQLAlchemy form, psycopg 3 driver)."""
    url = os.environ.get("HYPERFORGE_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    parsed = urlparse(url.replace("+psycopg", ""))
    if not _port_open(parsed.hostname or "127.0.0.1", parsed.port or 5432):
        _unavailable("PostgreSQL", url)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a reachable Redis server."""
    url = os.environ.get("HYPERFORGE_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    parsed = urlparse(url)
    if not _port_open(parsed.hostname or "127.0.0.1", parsed.port or 6379):
        _unavailable("Redis", url)
    return url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Endpoint URL of an S3 API on loopback (moto's server, started here if not given)."""
    given = os.environ.get("HYPERFORGE_TEST_S3_ENDPOINT")
    if given:
        parsed = urlparse(given)
        if not _port_open(parsed.hostname or "127.0.0.1", parsed.port or 80):
            _unavailable("The S3 server", given)
        yield given
        return
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not _port_open("127.0.0.1", port, 0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _unavailable("The S3 server", f"moto.server did not start on port {port}")
        time.sleep(0.1)  # polling a port we just asked a child to open; not test synchronisation
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
