"""Alembic environment: the URL comes from ShopDesk's settings; runs on the async engine."""
import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from shopdesk.config import get_settings
from shopdesk.models import metadata

URL = get_settings().effective_database_url


def run_sync(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=URL.startswith("sqlite"),
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def main() -> None:
    engine = create_async_engine(URL)
    async with engine.connect() as conn:
        await conn.run_sync(run_sync)
        await conn.commit()
    await engine.dispose()


def run_in_thread() -> None:
    """Alembic may be called from inside a running loop (tests): run it on a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(main())
        return
    import threading

    errors = []

    def target():
        try:
            asyncio.run(main())
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if errors:
        raise errors[0]


run_in_thread()
