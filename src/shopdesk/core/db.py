"""Engine, sessions and the declarative base shared by every domain."""
from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, AsyncIterator

from sqlalchemy import JSON, DateTime, MetaData, String, event, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from shopdesk.core.clock import UTC, now
from shopdesk.core.ids import new_id

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict: JSONType, list: JSONType}


def id_column() -> Mapped[str]:
    return mapped_column(String(32), primary_key=True, default=new_id)


def created_column() -> Mapped[datetime]:
    return mapped_column(UTCDateTime, default=now, nullable=False)


_engine: AsyncEngine | None = None
_sessionmaker: async_sessionmaker[AsyncSession] | None = None
_autocommit_engine: AsyncEngine | None = None


def make_engine(url: str) -> AsyncEngine:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Every transaction takes the write lock up front: SQLite then serialises writers
        # instead of failing one with SQLITE_BUSY when two upgrade from a read at once.
        # One pooled connection: transactions queue fairly on the pool (first come, first served)
        # instead of sleeping in SQLite's busy handler, where unlucky waiters starved (bench/README.md).
        kwargs["connect_args"] = {"timeout": 30, "isolation_level": None}
        kwargs.update(pool_size=1, max_overflow=0, pool_timeout=60)
        engine = create_async_engine(url, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # No pre-ping (it cost a SELECT 1 per checkout, 10 per flow); recycle instead. Pool sized for the
    # requests one process has in flight, so connections are not closed and reopened under load.
    kwargs.update(pool_size=20, max_overflow=5, pool_recycle=1800)
    return create_async_engine(url, **kwargs)


def init_engine(url: str) -> AsyncEngine:
    global _engine, _sessionmaker
    _engine = make_engine(url)
    # Autoflush stays on (decision 0006): turning it off saved 2 statements per after-sales flow, but
    # reads that must see this transaction's changes (the chat queue's positions) silently went stale.
    _sessionmaker = async_sessionmaker(_engine, expire_on_commit=False)
    return _engine


def get_engine() -> AsyncEngine:
    if _engine is None:
        from shopdesk.config import get_settings

        init_engine(get_settings().effective_database_url)
    assert _engine is not None
    return _engine


def sessionmaker() -> async_sessionmaker[AsyncSession]:
    get_engine()
    assert _sessionmaker is not None
    return _sessionmaker


def autocommit_engine() -> AsyncEngine:
    """A second PostgreSQL pool, in autocommit, for code that sends its own SQL (`aftersales.fast`).

    Its own connections, because psycopg forgets every prepared statement of a connection when a
    transaction on it rolls back, as the ORM's sessions do after each read-only request: on shared
    connections the fast path's statements would be planned afresh all the time.
    """
    global _autocommit_engine
    if _autocommit_engine is None or _autocommit_engine.url != get_engine().url:
        url = get_engine().url
        assert url.get_backend_name() == "postgresql"
        _autocommit_engine = create_async_engine(url, connect_args={"autocommit": True}, pool_size=16,
                                                 max_overflow=4, pool_recycle=1800)
    return _autocommit_engine


async def dispose_engine() -> None:
    global _engine, _sessionmaker, _autocommit_engine
    for engine in (_engine, _autocommit_engine):
        if engine is not None:
            await engine.dispose()
    _engine = _autocommit_engine = None
    _sessionmaker = None


@asynccontextmanager
async def transaction() -> AsyncIterator[AsyncSession]:
    """Open a session, commit on success, roll back on error."""
    async with sessionmaker()() as session:
        async with session.begin():
            yield session


def is_postgres(session: AsyncSession) -> bool:
    return session.bind.dialect.name == "postgresql"  # type: ignore[union-attr]


async def lock_first(session: AsyncSession, model: Any, *where: Any) -> None:
    """Lock rows in a statement of their own, before a load that joins their children.

    On PostgreSQL a locked read that had to wait for another transaction returns that transaction's
    new version of the locked row, but the rows it joins as they were when the statement began: a
    case's events or an order's payment totals from before the other transaction committed. A second
    statement starts after the wait and sees everything. (SQLite serialises writers at BEGIN.)
    """
    if is_postgres(session):
        await session.execute(select(model.id).where(*where).with_for_update())
