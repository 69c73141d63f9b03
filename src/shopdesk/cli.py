"""The shopdesk command line."""
from __future__ import annotations

import asyncio
import sys
from typing import Optional

import typer

from shopdesk.config import get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help="ShopDesk: after-sales and customer service.")
db_app = typer.Typer(no_args_is_help=True, help="Database migrations.")
merchants_app = typer.Typer(no_args_is_help=True, help="Merchants.")
keys_app = typer.Typer(no_args_is_help=True, help="Merchant API keys.")
staff_app = typer.Typer(no_args_is_help=True, help="Staff logins.")
timers_app = typer.Typer(no_args_is_help=True, help="After-sales timers.")
app.add_typer(db_app, name="db")
app.add_typer(merchants_app, name="merchants")
app.add_typer(keys_app, name="api-keys")
app.add_typer(staff_app, name="staff")
app.add_typer(timers_app, name="timers")
mail_app = typer.Typer(no_args_is_help=True, help="The email channel: IMAP polling and the SMTP receiver.")
app.add_typer(mail_app, name="mail")


def run(coro):
    """Run one coroutine and release the engine before the loop closes."""
    from shopdesk.core.db import dispose_engine

    async def main():
        try:
            return await coro
        finally:
            await dispose_engine()

    return asyncio.run(main())


def echo_or_fail(coro) -> None:
    """Run a command's coroutine and print its result; a domain error becomes 'error: …' and exit 1."""
    from shopdesk.core.errors import DomainError

    try:
        typer.echo(run(coro))
    except DomainError as exc:
        fail(exc.detail)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations."""
    from shopdesk.migrations.runner import upgrade

    upgrade(revision)
    typer.echo("database is at head")


@merchants_app.command("create")
def merchants_create(name: str = typer.Option(..., "--name"), slug: str = typer.Option(..., "--slug")) -> None:
    from shopdesk.accounts.actions import do_create_merchant
    from shopdesk.core.db import transaction

    async def go():
        async with transaction() as session:
            m = await do_create_merchant(session, name=name, slug=slug)
            return m.slug

    echo_or_fail(go())


@keys_app.command("create")
def keys_create(merchant: str = typer.Option(..., "--merchant")) -> None:
    from shopdesk.accounts.actions import do_create_api_key, merchant_by_slug
    from shopdesk.core.db import transaction

    async def go():
        async with transaction() as session:
            return await do_create_api_key(session, await merchant_by_slug(session, merchant))

    echo_or_fail(go())


@staff_app.command("create")
def staff_create(merchant: Optional[str] = typer.Option(None, "--merchant"), email: str = typer.Option(..., "--email"),
                 password: str = typer.Option(..., "--password"), role: str = typer.Option("agent", "--role"),
                 name: str = typer.Option("", "--name")) -> None:
    """Create a staff login (--role platform without --merchant creates a platform operator)."""
    from shopdesk.accounts.actions import do_create_staff, merchant_by_slug
    from shopdesk.core.db import transaction

    async def go():
        async with transaction() as session:
            m = await merchant_by_slug(session, merchant) if merchant else None
            s = await do_create_staff(session, merchant=m, email=email, password=password, role=role, name=name)
            return s.id

    echo_or_fail(go())


@timers_app.command("run")
def timers_run(now: Optional[str] = typer.Option(None, "--now", help="ISO-8601 instant (default: now)"),
               merchant: Optional[str] = typer.Option(None, "--merchant", help="only this merchant's timers")) -> None:
    """Run every timer due at that instant once and print how many fired."""
    from shopdesk.accounts.actions import merchant_by_slug
    from shopdesk.core.clock import clock, parse_instant
    from shopdesk.core.db import transaction
    from shopdesk.jobs.runner import sweep_timers

    if now:
        try:
            clock.freeze(parse_instant(now))
        except ValueError:
            fail("--now must be an ISO-8601 instant, e.g. 2026-11-25T10:00:00Z")

    async def go() -> int:
        merchant_id = None
        if merchant:
            async with transaction() as session:
                merchant_id = (await merchant_by_slug(session, merchant)).id
        return await sweep_timers(merchant_id=merchant_id)

    echo_or_fail(go())


@mail_app.command("poll")
def mail_poll(once: bool = typer.Option(False, "--once", help="poll each mailbox until it is drained, then exit"),
              mailbox: Optional[list[str]] = typer.Option(None, "--mailbox", help="only this mailbox id (repeatable)"),
              timeout: float = typer.Option(30.0, "--timeout", help="seconds a server may take to answer"),
              interval: float = typer.Option(60.0, "--interval", help="seconds between polls of a mailbox")) -> None:
    """Poll the IMAP mailboxes, each in its own task (the worker does this too)."""
    from shopdesk.core.logging import configure
    from shopdesk.tickets.email_channel import poll_all_once, run_mail_pollers

    configure(get_settings().log_level)
    only = set(mailbox) if mailbox else None
    if not once:
        run(run_mail_pollers(asyncio.Event(), interval_s=interval, timeout_s=timeout, only=only))
        return
    results = run(poll_all_once(only, timeout_s=timeout))
    for mailbox_id, result in results.items():
        counts = " ".join(f"{k}={v}" for k, v in sorted(result.statuses.items())) or "nothing new"
        typer.echo(f"{mailbox_id}: {counts}" + (f" error: {result.error}" if result.error else ""))
    if any(r.error for r in results.values()):
        raise typer.Exit(1)


@mail_app.command("smtp")
def mail_smtp(host: str = typer.Option("127.0.0.1", "--host"), port: int = typer.Option(2525, "--port")) -> None:
    """Receive mail for the mailboxes' addresses by SMTP (others are refused at RCPT with 550)."""
    from shopdesk.core.logging import configure
    from shopdesk.tickets.email_channel import start_smtp_receiver

    configure(get_settings().log_level)

    async def serve_smtp():
        server = await start_smtp_receiver(host, port)
        typer.echo(f"smtp receiver on {host}:{port}")
        async with server:
            await server.serve_forever()

    run(serve_smtp())


@app.command()
def worker(once: bool = typer.Option(False, "--once", help="drain what is due and exit")) -> None:
    """Deliver the outbox (refunds, emails, webhooks) and sweep timers."""
    from shopdesk.core.logging import configure
    from shopdesk.jobs.runner import run_forever, run_once

    configure(get_settings().log_level)

    async def drain():
        totals: dict[str, int] = {}
        while True:
            done = await run_once()
            for k, v in done.items():
                totals[k] = totals.get(k, 0) + v
            if not any(done.values()):
                return totals

    async def forever():
        stop = asyncio.Event()
        await run_forever(stop)

    if once:
        totals = run(drain())
        typer.echo(" ".join(f"{k}={v}" for k, v in totals.items()))
    else:
        run(forever())


@app.command()
def serve(host: str = typer.Option("127.0.0.1", "--host"), port: int = typer.Option(8000, "--port"),
          jobs: bool = typer.Option(True, "--jobs/--no-jobs", help="run the job runner in this process")) -> None:
    """Run the server (and the in-process job runner)."""
    import os

    import uvicorn

    os.environ["SHOPDESK_RUN_JOBS_IN_PROCESS"] = "1" if jobs else "0"
    os.environ["SHOPDESK_SERVE"] = "1"  # a long-running server: the app quiets the garbage collector
    os.environ.setdefault("SHOPDESK_BASE_URL", f"http://{host}:{port}")
    get_settings.cache_clear()
    # Chat frames are at most 64 KiB (larger ones get an error frame); far larger ones are cut off by the server.
    # X-Forwarded-For is believed only when SHOPDESK_TRUSTED_PROXY says a proxy we trust sits in front
    # (uvicorn would otherwise trust it from 127.0.0.1, which anyone on the box can spoof).
    trusted = get_settings().trusted_proxy
    # Pings: a busy server reads a healthy client's pong late; with uvicorn's 20 s timeout such clients were
    # closed (1011) under load and all reconnected at once (bench/README.md). 60 s still finds dead peers.
    uvicorn.run("shopdesk.main:create_app", factory=True, host=host, port=port, log_level="warning",
                ws="websockets-sansio" if sys.version_info >= (3, 10) else "auto", ws_max_size=1024 * 1024,
                ws_ping_interval=20.0, ws_ping_timeout=60.0,
                proxy_headers=trusted, forwarded_allow_ips="*" if trusted else None)


@app.command("sandbox-psp")
def sandbox_psp(host: str = typer.Option("127.0.0.1", "--host"), port: int = typer.Option(8900, "--port")) -> None:
    """Run the sandbox payment provider alone (set SHOPDESK_SANDBOX_PSP_URL to point the app at it)."""
    import uvicorn

    uvicorn.run("shopdesk.integrations.payments.sandbox_psp:app", host=host, port=port, log_level="warning")


@app.command()
def demo() -> None:
    """Create a demo merchant, store, staff, products and orders; print the logins."""
    from shopdesk.demo import build_demo

    for line in run(build_demo()):
        typer.echo(line)


if __name__ == "__main__":
    app()
