"""``hyperforge local``: the whole service on one machine with nothing installed besides Python.

API (uvicorn) + worker (with its outbox dispatcher and reconciler) + an embedded broker (kombu's
SQLAlchemy transport on ``DIR/broker.sqlite``) + SQLite (``DIR/hyperforge.db``) + filesystem
storage (``DIR/objects``). On start it migrates the database, writes and registers the tiny demo
model, and creates a dev tenant whose API key it prints and writes to ``DIR/dev-api-key`` (kept
across restarts). The children are supervised: one that dies is restarted (a worker's job resumes
from its last checkpoint once its lease runs out).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from api.db.engine import Database
from api.db.migrate import upgrade
from api.settings import Settings, get_settings
from worker.supervisor import Child, Supervisor

DEV_TENANT = "dev"
DEMO_MODEL = "tiny"
LOCAL_LEASE_SECONDS = "15"  # a restarted worker picks its job up again within ~20 s


def local_env(data_dir: Path) -> dict[str, str]:
    """Environment of local mode's processes: SQLite, the embedded broker and files under ``data_dir``."""
    env = dict(os.environ)
    env.update(
        {
            "HYPERFORGE_ENVIRONMENT": "local",
            "HYPERFORGE_DATA_DIR": str(data_dir),
            "HYPERFORGE_DATABASE_URL": f"sqlite:///{(data_dir / 'hyperforge.db').as_posix()}",
            "HYPERFORGE_BROKER_URL": f"sqla+sqlite:///{(data_dir / 'broker.sqlite').as_posix()}",
            "HYPERFORGE_STORAGE_BACKEND": "filesystem",
            "HYPERFORGE_STORAGE_DIR": str(data_dir / "objects"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    env.setdefault("HYPERFORGE_LEASE_SECONDS", LOCAL_LEASE_SECONDS)
    return env


def ensure_demo_model(db: Database, data_dir: Path) -> str:
    """Write the tiny demo model into ``data_dir/models`` once and register it; returns its id."""
    from api.db.repositories.base_models import BaseModelRepository
    from api.services.models import register_model

    with db.session() as session:
        existing = BaseModelRepository(session).get_by_name(DEMO_MODEL)
        if existing is not None:
            return existing.id
    folder = data_dir / "models" / "tiny-sd1"
    if not (folder / "model_index.json").exists():
        from core.models.tiny import make_tiny_model

        make_tiny_model(folder, arch="sd1")
    with db.session() as session:
        return register_model(session, name=DEMO_MODEL, uri=str(folder), arch="sd1").id


def ensure_dev_key(db: Database, settings: Settings, data_dir: Path) -> str:
    """The dev tenant's API key: the one in ``DIR/dev-api-key`` if it still works, else a new tenant's."""
    from api.services.tenants import authenticate, create_tenant

    key_file = data_dir / "dev-api-key"
    if key_file.exists():
        key = key_file.read_text(encoding="utf-8").strip()
        with db.session() as session:
            if authenticate(session, settings, key) is not None:
                return key
    with db.session() as session:
        created = create_tenant(session, settings, DEV_TENANT)
    key_file.write_text(created.key.secret + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    return created.key.secret


def prepare(data_dir: Path) -> tuple[dict[str, str], str]:
    """Migrate, register the demo model, make the dev key; returns the children's env and the key."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = local_env(data_dir)
    os.environ.update({k: v for k, v in env.items() if k.startswith("HYPERFORGE_")})
    get_settings.cache_clear()
    settings = get_settings()
    url = settings.effective_database_url
    upgrade(url)
    db = Database.from_url(url)
    try:
        ensure_demo_model(db, data_dir)
        key = ensure_dev_key(db, settings, data_dir)
    finally:
        db.dispose()
    return env, key


def run_local(*, port: int = 8000, host: str = "127.0.0.1", data_dir: Path = Path(".hyperforge")) -> int:
    """Start everything and supervise it until Ctrl-C."""
    data_dir = data_dir.resolve()
    env, key = prepare(data_dir)
    url = f"http://{host}:{port}"
    print(f"hyperforge local: data in {data_dir}", flush=True)
    print(f"API:        {url}  (docs at {url}/docs)", flush=True)
    print(f"dev API key: {key}  (also in {data_dir / 'dev-api-key'})", flush=True)
    print(f"try:        hyperforge demo --url {url} --api-key {key}", flush=True)
    api = [
        sys.executable,
        "-m",
        "uvicorn",
        "api.app:create_served_app",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
    ]
    worker = [sys.executable, "-m", "core.cli", "worker", "--hostname", "local@%h"]
    Supervisor([Child("api", api, env), Child("worker", worker, env)]).run()
    return 0
