"""Test set-up: one database per run (SQLite by default, PostgreSQL with SHOPDESK_TEST_DB=postgres)."""
from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

TMP = Path(tempfile.mkdtemp(prefix="shopdesk-test-"))
BASE_PG_URL = os.environ.get("SHOPDESK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Each test session gets a database of its own, so parallel runs never share tables.
PG_DB = f"shopdesk_test_{os.getpid()}"
PG_URL = BASE_PG_URL.rsplit("/", 1)[0] + "/" + PG_DB
REQUIRE = os.environ.get("SHOPDESK_TEST_REQUIRE_SERVICES") == "1"
BACKEND = os.environ.get("SHOPDESK_TEST_DB", "sqlite")

os.environ["SHOPDESK_VAR_DIR"] = str(TMP)
os.environ["SHOPDESK_RUN_JOBS_IN_PROCESS"] = "0"
os.environ["SHOPDESK_SECRET_KEY"] = "test-secret-key-0123456789abcdef"
os.environ["SHOPDESK_BASE_URL"] = "http://testserver"
os.environ["SHOPDESK_DATABASE_URL"] = PG_URL if BACKEND == "postgres" else f"sqlite+aiosqlite:///{TMP / 'test.db'}"
ARTIFACTS = Path(os.environ.get("SHOPDESK_TEST_ARTIFACTS", "test-artifacts"))

T0 = datetime(2026, 11, 6, 12, 0, tzinfo=timezone.utc)


def pg_available() -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        return True
    except OSError:
        return False


def _admin(sql: str) -> None:
    import psycopg

    plain = BASE_PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(sql)


def reset_postgres() -> None:
    """Create this session's empty database so migrations start from nothing."""
    _admin(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{PG_DB}"')


def pytest_sessionstart(session):
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    import shopdesk.core.security as security
    from shopdesk.migrations.runner import upgrade

    # Real argon2, at a cost that suits hundreds of test logins (production keeps the recommended cost).
    security._passwords = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))

    if BACKEND == "postgres":
        if not pg_available():
            if REQUIRE:
                raise pytest.UsageError("PostgreSQL is required (SHOPDESK_TEST_REQUIRE_SERVICES=1) but not reachable")
            return
        reset_postgres()
    upgrade()


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(TMP, ignore_errors=True)
    if BACKEND == "postgres" and pg_available():
        try:
            _admin(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
        except Exception:  # the next session with this pid drops it anyway
            pass


@pytest.fixture(autouse=True)
def frozen_clock():
    from shopdesk.core.clock import clock
    from shopdesk.core.ratelimit import reset

    clock.freeze(T0)
    reset()
    yield clock
    clock.reset()


@pytest.fixture(scope="session")
def app():
    from shopdesk.main import create_app

    return create_app()


@pytest.fixture
async def client(app):
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


@pytest.fixture
async def shop(client):
    from tests.factories import make_shop

    return await make_shop(client)


@pytest.fixture
async def other_shop(client):
    from tests.factories import make_shop

    return await make_shop(client)
