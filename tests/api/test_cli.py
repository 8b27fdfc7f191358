"""``hyperforge migrate``, ``admin create-tenant`` and ``admin add-model`` against a local SQLite database;
the app ``hyperforge serve`` runs in each server process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from api.db.engine import Database
from api.db.models import BaseModelRecord, Tenant
from api.services.tenants import authenticate
from api.settings import Settings, get_settings
from core.cli import build_parser, main


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HYPERFORGE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("HYPERFORGE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_commands_are_registered() -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--port", "9000", "--workers", "2"])
    assert (args.host, args.port, args.workers) == ("0.0.0.0", 9000, 2)
    assert parser.parse_args(["admin", "add-model", "sd15", "/m", "--arch", "sd1"]).arch == "sd1"


def test_migrate_then_create_tenant_prints_a_working_key(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate"]) == 0
    assert (data_dir / "hyperforge.db").exists()
    capsys.readouterr()
    assert main(["admin", "create-tenant", "acme"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("hf_live_")
    settings = Settings()
    database = Database.from_url(settings.effective_database_url)
    try:
        with database.session() as session:
            tenant = session.scalars(select(Tenant)).one()
            principal = authenticate(session, settings, key)
        assert principal is not None and principal.tenant_id == tenant.id and tenant.name == "acme"
    finally:
        database.dispose()


def test_add_model(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate"]) == 0
    weights = tmp_path / "model.ckpt"
    weights.write_bytes(b"not really a checkpoint")
    assert main(["admin", "add-model", "sd15", str(weights), "--arch", "sd1"]) == 0
    assert '"name": "sd15"' in capsys.readouterr().out
    assert main(["admin", "add-model", "sd15", str(weights), "--arch", "sd1"]) == 2
    assert "model_exists" in capsys.readouterr().err
    database = Database.from_url(Settings().effective_database_url)
    try:
        with database.session() as session:
            (model,) = session.scalars(select(BaseModelRecord)).all()
        assert (model.format, model.uri) == ("single_file", str(weights.resolve()))
    finally:
        database.dispose()


def test_served_app_logs_json_lines_and_freezes_its_start_up_heap(data_dir: Path) -> None:
    """In a process of its own: ``gc.freeze`` is process-wide, and each uvicorn worker is one."""
    code = (
        "import gc, logging\n"
        "from api.app import create_served_app\n"
        "app = create_served_app()\n"
        "assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()\n"
        "assert app.state.poll_limiter.total_tokens == app.state.settings.database_pool_size\n"
        "logging.getLogger('api.access').info('hello', extra={'request_id': 'req_1'})\n"
    )
    env = {**os.environ, "HYPERFORGE_LOG_LEVEL": "INFO", "HYPERFORGE_LOG_JSON": "true"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stderr.strip().splitlines()[-1])
    assert (line["logger"], line["message"], line["request_id"]) == ("api.access", "hello", "req_1")
