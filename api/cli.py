"""The service's CLI commands, plugged into ``hyperforge`` through the ``hyperforge.commands`` entry point.

- ``hyperforge admin create-tenant NAME``: create a tenant and print its API key (once).
- ``hyperforge admin add-model NAME PATH_OR_URI [--arch sd1|sd2|sdxl] [--format ...] [--sha256 HEX]``
- ``hyperforge serve [--host H] [--port P] [--workers N]``: the API under uvicorn.
- ``hyperforge migrate [--revision head]``: apply the database migrations.

Settings come from ``HYPERFORGE_*`` variables, as for the server. Heavy imports happen inside the
command functions so ``hyperforge --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from core.errors import HyperforgeError


def register(subparsers: Any) -> None:
    """Add ``admin``, ``serve`` and ``migrate`` to the ``hyperforge`` parser."""
    admin = subparsers.add_parser("admin", help="operator tasks: tenants and base models")
    admin_sub = admin.add_subparsers(dest="admin_command", metavar="ADMIN_COMMAND", required=True)

    tenant = admin_sub.add_parser("create-tenant", help="create a tenant and print its API key")
    tenant.add_argument("name", help="the tenant's display name")
    tenant.set_defaults(func=_create_tenant)

    model = admin_sub.add_parser("add-model", help="register a base model workers can train on")
    model.add_argument("name", help="short name used in job specs, e.g. sd15")
    model.add_argument(
        "uri", metavar="PATH_OR_URI", help="a diffusers folder, a .safetensors file, or s3:// / https://"
    )
    model.add_argument("--arch", choices=["sd1", "sd2", "sdxl"], help="detected from the files when omitted")
    model.add_argument("--format", choices=["diffusers", "single_file"], help="detected when omitted")
    model.add_argument("--sha256", help="the model's sha256 (computed for local files when omitted)")
    model.set_defaults(func=_add_model)

    serve = subparsers.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.set_defaults(func=_serve)

    migrate = subparsers.add_parser("migrate", help="apply database migrations (alembic upgrade)")
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    migrate.set_defaults(func=_migrate)


def _problem_message(exc: Exception) -> str:
    code = getattr(exc, "code", "error")
    return f"{code}: {exc}"


def _create_tenant(args: argparse.Namespace) -> int:
    from api.db.engine import Database
    from api.errors import Problem
    from api.services.tenants import create_tenant
    from api.settings import get_settings

    settings = get_settings()
    database = Database.from_url(settings.effective_database_url)
    try:
        with database.session() as session:
            created = create_tenant(session, settings, args.name)
    except Problem as exc:
        print(f"hyperforge admin create-tenant: {_problem_message(exc)}", file=sys.stderr)
        return 2
    finally:
        database.dispose()
    print(f"tenant {created.tenant.id} ({created.tenant.name})", file=sys.stderr)
    print("API key (shown once, store it now):", file=sys.stderr)
    print(created.key.secret)
    return 0


def _add_model(args: argparse.Namespace) -> int:
    from api.db.engine import Database
    from api.errors import Problem
    from api.services.models import model_to_schema, register_model
    from api.settings import get_settings

    settings = get_settings()
    database = Database.from_url(settings.effective_database_url)
    try:
        with database.session() as session:
            record = register_model(
                session, name=args.name, uri=args.uri, arch=args.arch, format=args.format, sha256=args.sha256
            )
            shown = model_to_schema(record).model_dump(mode="json")
    except Problem as exc:
        print(f"hyperforge admin add-model: {_problem_message(exc)}", file=sys.stderr)
        return 2
    finally:
        database.dispose()
    print(json.dumps(shown, indent=2))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.middleware import configure_logging
    from api.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)  # this process's (uvicorn's own)
    uvicorn.run(
        "api.app:create_served_app",  # sets up logging again in each server process
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,  # keep our JSON logging
        access_log=False,  # the middleware logs each request, with its request id
        proxy_headers=True,
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from api.db.migrate import upgrade
    from api.settings import get_settings

    url = get_settings().effective_database_url
    try:
        upgrade(url, args.revision)
    except Exception as exc:  # alembic and the driver raise many types; the message is what matters
        raise HyperforgeError(f"migration failed: {exc}", code="migration_failed") from exc
    print(f"database at revision {args.revision}", file=sys.stderr)
    return 0
