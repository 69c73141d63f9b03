"""The widget script, and a demo shop page that embeds it the way a merchant's own site would."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select

from shopdesk.accounts.models import Merchant, Store
from shopdesk.core.db import sessionmaker
from shopdesk.core.errors import NotFound
from shopdesk.core.security import hmac_hex
from shopdesk.orders.models import Product

WEB = Path(__file__).resolve().parent
_env = Environment(loader=FileSystemLoader(WEB / "templates" / "demo"), autoescape=select_autoescape(["html"]))

router = APIRouter(include_in_schema=False)


@router.get("/widget.js")
async def widget_js() -> FileResponse:
    # Short cache: a shop page picks up a new widget within minutes, without a build step on its side.
    return FileResponse(WEB / "widget" / "widget.js", media_type="application/javascript; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=300"})


@router.get("/demo/shop/{merchant}/{store}", response_class=HTMLResponse)
async def demo_shop(request: Request, merchant: str, store: str, sku: str | None = None, login: str | None = None,
                    lang: str = "zh") -> HTMLResponse:
    """A product page of a pretend shop with the widget; ?login=<external id> plays a logged-in shopper.

    The HMAC is computed here, on the server, exactly as a shop's backend must do it: the identity
    secret never reaches the browser.
    """
    async with sessionmaker()() as session:
        row = (await session.execute(select(Store, Merchant).join(Merchant, Merchant.id == Store.merchant_id)
                                     .where(Merchant.slug == merchant, Store.code == store))).first()
        if row is None:
            raise NotFound("no such store")
        shop, owner = row
        stmt = select(Product).where(Product.merchant_id == owner.id).order_by(Product.sku)
        if sku:
            stmt = stmt.where(Product.sku == sku)
        product = (await session.execute(stmt.limit(1))).scalar_one_or_none()
    identity = None
    if login:
        identity = {"external_id": login, "name": login, "hmac": hmac_hex(shop.identity_secret, login)}
    html = _env.get_template("shop.html").render(
        shop=shop, merchant=owner, product=product, identity=identity, lang="en" if lang == "en" else "zh",
        base=str(request.base_url).rstrip("/"))
    return HTMLResponse(html)
