"""``ledgerflow db ...``: the coordinator's database.

The ``ledgerflow`` parser imports this module on every invocation, so it imports nothing
heavy at module level: SQLAlchemy and Alembic load only when a ``db`` command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from ledgerflow.cli._common import CommandError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

DATABASE_URL_ENV = "LEDGERFLOW_DATABASE_URL"
"""The environment variable holding the database URL when ``--database-url`` is absent."""


def register(commands: Any) -> None:
    """Add the ``db`` command group to the top-level subcommands."""
    db = commands.add_parser("db", help="manage the coordinator's database")
    sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = sub.add_parser(
        "upgrade",
        help="apply the schema migrations the database lacks",
        description=(
            "Migrate the coordinator's database to the schema of this ledgerflow version. "
            "Idempotent; safe while other coordinators start (the server also does this "
            "at every start)."
        ),
    )
    add_database_url_flag(upgrade)
    upgrade.set_defaults(handler=_upgrade)


def add_database_url_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--database-url`` (every command that opens the database takes it)."""
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help=(
            "postgresql://user:password@host/dbname or sqlite:///path/to/file.db "
            f"(default: ${DATABASE_URL_ENV}, else ./ledgerflow.db)"
        ),
    )


def database_url(args: argparse.Namespace) -> str | None:
    """Return the database URL from ``--database-url`` or the environment; None for the default."""
    return args.database_url or os.environ.get(DATABASE_URL_ENV) or None


def _one_line(err: BaseException) -> str:
    # DBAPI errors carry the SQL and a documentation link on further lines; the driver's
    # own message (first line of `orig`) is what says what went wrong.
    orig = getattr(err, "orig", None)
    text = str(orig if orig is not None else err).strip() or type(err).__name__
    return text.splitlines()[0]


def _upgrade(args: argparse.Namespace) -> int:
    try:
        from alembic.util.exc import CommandError as AlembicError
        from sqlalchemy.exc import SQLAlchemyError

        from ledgerflow.coordinator.store import create_engine
    except ImportError as err:
        raise CommandError(
            f"the coordinator is not installed ({err.name} is missing): "
            "pip install 'ledgerflow[coordinator]'"
        ) from err

    url = database_url(args)
    try:
        engine = create_engine(url)
    except ValueError as err:
        raise CommandError(str(err)) from err
    shown = engine.url.render_as_string(hide_password=True)
    import asyncio

    try:
        revision = asyncio.run(_migrate(engine))
    # OSError: refused, unresolvable or timed-out connections, which asyncpg raises as is.
    except (OSError, SQLAlchemyError, AlembicError) as err:
        raise CommandError(f"cannot upgrade the database at {shown}: {_one_line(err)}") from err
    sys.stdout.write(f"database at {shown} is at revision {revision}\n")
    return 0


async def _migrate(engine: AsyncEngine) -> str | None:
    from ledgerflow.coordinator.store import current_revision, upgrade

    try:
        await upgrade(engine)
        return await current_revision(engine)
    finally:
        await engine.dispose()
