"""The widget script, the demo shop page that embeds it, and the cross-origin calls it makes."""
import re

from tests.integration.chat.conftest import store_secret, widget


async def test_the_widget_script_is_served_as_javascript(api):
    r = await api.get("/widget.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/javascript")
    assert "max-age" in r.headers["cache-control"]
    # it speaks protocol version 1 and never renders network text as HTML
    assert "/ws?v=1&token=" in r.text
    assert "innerHTML = \"<svg" in r.text and r.text.count("innerHTML") == 1


async def test_a_shop_page_on_another_origin_may_open_a_session(api, chat_shop):
    # the browser's preflight for the JSON POST the widget makes from the shop's own domain
    pre = await api.options("/api/v1/widget/sessions", headers={
        "Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in pre.headers  # tokens, never cookies
    r = await api.post("/api/v1/widget/sessions", json={"store": "main", "merchant": chat_shop.slug},
                       headers={"Origin": "https://shop.example.com"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"


async def test_the_demo_shop_signs_its_logged_in_shopper_on_the_server(api, chat_shop):
    page = await api.get(f"/demo/shop/{chat_shop.slug}/main", params={"login": "u-demo-1"})
    assert page.status_code == 200
    assert f'data-merchant="{chat_shop.slug}"' in page.text and 'data-store="main"' in page.text
    secret = await store_secret(chat_shop)
    assert secret not in page.text  # only the HMAC reaches the browser
    identity = re.search(r'"hmac": "([0-9a-f]{64})"', page.text)
    assert identity, page.text
    # and that HMAC is accepted by the session endpoint for that shopper
    bound = await widget(api, chat_shop, identity={"external_id": "u-demo-1", "hmac": identity.group(1)})
    assert bound["visitor_id"]
    assert (await api.get(f"/demo/shop/{chat_shop.slug}/nope")).status_code == 404
