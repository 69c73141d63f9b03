"""POST /api/v1/widget/sessions: anonymous visitors, HMAC-bound shoppers, reuse of a visitor id."""
from tests.integration.chat.conftest import store_secret, sign, widget


async def test_an_anonymous_visitor_keeps_their_id(api, chat_shop):
    first = await widget(api, chat_shop, page={"url": "https://shop.example/p/1", "title": "蓝牙耳机"})
    assert set(first) >= {"visitor_id", "token"} and len(first["visitor_id"]) == 32
    again = await widget(api, chat_shop, visitor_id=first["visitor_id"])
    assert again["visitor_id"] == first["visitor_id"]
    # an unknown or malformed visitor id gets a fresh visitor rather than an error
    assert (await widget(api, chat_shop, visitor_id="f" * 32))["visitor_id"] != first["visitor_id"]


async def test_identity_with_the_right_hmac_binds_the_customer(api, chat_shop):
    secret = await store_secret(chat_shop)
    identity = {"external_id": "u-1001", "name": "王先生", "hmac": sign(secret, "u-1001")}
    # given an anonymous visitor who logs in on the shop
    anon = await widget(api, chat_shop)
    bound = await widget(api, chat_shop, visitor_id=anon["visitor_id"], identity=identity)
    # then the same visitor is bound, and the customer exists with that name
    assert bound["visitor_id"] == anon["visitor_id"]
    assert (await chat_shop.post("/customers/u-1001/token")).status_code == 200
    # and on another device (no visitor id) the same shopper gets the same visitor back
    other_device = await widget(api, chat_shop, identity=identity)
    assert other_device["visitor_id"] == anon["visitor_id"]
    # the visitor id alone still keeps the same visitor (the contract: reuse keeps the visitor)
    assert (await widget(api, chat_shop, visitor_id=anon["visitor_id"]))["visitor_id"] == anon["visitor_id"]
    # but another shopper's proof on this visitor id is somebody new (two people never share a chat)
    other = {"external_id": "u-2002", "hmac": sign(secret, "u-2002")}
    assert (await widget(api, chat_shop, visitor_id=anon["visitor_id"], identity=other))["visitor_id"] \
        != anon["visitor_id"]


async def test_a_wrong_hmac_is_401_and_creates_nothing(api, chat_shop):
    secret = await store_secret(chat_shop)
    for hmac in (sign(secret, "someone-else"), sign("not-the-secret", "u-1"), "zz", sign(secret, "u-1")[:-1]):
        r = await api.post("/api/v1/widget/sessions", json={
            "store": "main", "merchant": chat_shop.slug, "identity": {"external_id": "u-1", "hmac": hmac}})
        assert r.status_code == 401, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "bad_identity" and r.json()["field"] == "identity.hmac"
    assert (await chat_shop.post("/customers/u-1/token")).status_code == 404


async def test_bad_session_bodies_name_the_field(api, chat_shop):
    cases = [({"merchant": chat_shop.slug}, "store", 422),
             ({"store": "nope", "merchant": chat_shop.slug}, "store", 422),
             ({"store": "main"}, "merchant", 422),  # every test shop has a store 'main'
             ({"store": "main", "merchant": chat_shop.slug, "identity": {"external_id": "x"}}, "identity.hmac", 422),
             ({"store": "main", "merchant": chat_shop.slug, "page": {"url": 5}}, "page.url", 422),
             ({"store": "main", "merchant": chat_shop.slug, "extra": 1}, "extra", 422)]
    for body, field, status in cases:
        r = await api.post("/api/v1/widget/sessions", json=body)
        assert r.status_code == status and r.json()["field"] == field, (body, r.text)
    r = await api.post("/api/v1/widget/sessions", content=b"{oops", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "malformed_json"
