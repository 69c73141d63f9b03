"""The application factory: routers, error rendering, static files and the in-process job runner."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from pathlib import Path
from typing import AsyncIterator

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from shopdesk.config import get_settings, node_modules
from shopdesk.core.db import get_engine
from shopdesk.core.errors import DomainError
from shopdesk.core.logging import configure

log = structlog.get_logger("shopdesk")
PROBLEM = "application/problem+json"
GC_YOUNG_THRESHOLD = 50_000
ROOT = Path(__file__).resolve().parent


def problem(status: int, code: str, title: str, detail: str, **extra) -> JSONResponse:
    body = {"type": f"https://shopdesk.dev/problems/{code}", "status": status, "title": title, "detail": detail,
            "code": code, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError):
        if request.url.path.startswith("/api/"):
            return JSONResponse(exc.problem(), status_code=exc.status, media_type=PROBLEM)
        from shopdesk.web.pages import html_error

        return html_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
            errors.append({"field": ".".join(loc) or "body", "detail": err.get("msg", "invalid")})
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return problem(400, "malformed_json", "Malformed JSON", "the body is not valid JSON",
                           field="body", errors=errors)
        first = errors[0] if errors else {"field": "body", "detail": "invalid"}
        return problem(422, "validation_failed", "Validation failed", f"{first['field']}: {first['detail']}",
                       field=first["field"], errors=errors)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unhandled_error", method=request.method, path=request.url.path)
        return problem(500, "internal_error", "Internal error", "something went wrong on our side; it is logged")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404 and request.url.path.startswith(("/shop", "/console")):
            from shopdesk.core.errors import NotFound
            from shopdesk.web.pages import html_error

            return html_error(request, NotFound("page not found"))
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code, "http_error")
        return problem(exc.status_code, code, str(exc.detail), str(exc.detail))


def quiet_gc() -> None:
    """Make the collector's full passes short and rare in a server process (decision 0008).

    What is alive once the app has started (modules, mappers, compiled statements) is frozen out of the
    collector's sight, and young collections wait for 50,000 new objects instead of 700, so full passes
    come about 70× less often. Under chat load full passes over ~290k objects took 80–195 ms every 2–5 s,
    and every message in flight waited for them: they were the p99.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    get_engine()
    if settings.chat_bot:
        from shopdesk.chat.bot import load_answerer

        load_answerer(settings.chat_bot)
    from shopdesk.core.pubsub import close_broker, start_broker

    await start_broker()
    if os.environ.get("SHOPDESK_SERVE") == "1":
        quiet_gc()
    stop = asyncio.Event()
    runner = None
    if settings.run_jobs_in_process:
        from shopdesk.jobs.runner import run_forever

        runner = asyncio.create_task(run_forever(stop))
    yield
    stop.set()
    if runner:
        await runner
    from shopdesk.integrations.payments import close_providers
    from shopdesk.integrations.payments.sandbox_psp import app as psp_app

    await close_providers()
    await psp_app.state.psp.aclose()
    await close_broker()
    from shopdesk.core.db import dispose_engine

    await dispose_engine()


def create_app() -> FastAPI:
    settings = get_settings()
    configure(settings.log_level)
    app = FastAPI(title="ShopDesk", version="1", lifespan=lifespan, docs_url="/api/docs",
                  openapi_url="/api/v1/openapi.json")
    install_error_handlers(app)

    from shopdesk.accounts.api import router as accounts
    from shopdesk.aftersales.api import router as aftersales
    from shopdesk.chat.api import router as chat
    from shopdesk.customers.api import router as customers
    from shopdesk.integrations.couriers.kuaidi100 import router as kuaidi100
    from shopdesk.notifications.api import router as webhooks
    from shopdesk.orders.api import router as orders
    from shopdesk.refunds.api import router as refunds
    from shopdesk.tickets.api import router as tickets
    from shopdesk.tickets.email_api import router as mailboxes
    from shopdesk.tickets.hooks import router as ticket_hooks

    for router in (accounts, customers, orders, aftersales, refunds, webhooks, kuaidi100, chat, tickets, ticket_hooks,
                   mailboxes):
        app.include_router(router, prefix="/api/v1")
    from shopdesk.chat.socket import chat_socket

    app.add_api_websocket_route("/ws", chat_socket)

    from shopdesk.integrations.payments.sandbox_psp import app as psp_app

    app.mount("/sandbox-psp", psp_app)
    app.mount("/static", StaticFiles(directory=ROOT / "web" / "static"), name="static")
    if node_modules().exists():
        app.mount("/vendor", StaticFiles(directory=node_modules()), name="vendor")
    from shopdesk.web.pages import router as pages
    from shopdesk.web.shop_demo import router as shop_demo

    app.include_router(pages)
    app.include_router(shop_demo)
    # The widget runs on the merchant's own domain and calls the API from there. Every API call is
    # authorised by a bearer token, never by a cookie, so any origin may call it (no credentials).
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=False,
                       allow_methods=["GET", "POST", "PUT", "DELETE"],
                       allow_headers=["authorization", "content-type", "idempotency-key"], max_age=600)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"ok": True}

    return app
