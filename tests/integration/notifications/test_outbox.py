"""Emails through a real SMTP server and signed webhooks through a real HTTP receiver, from the outbox."""
import email
import hashlib
import hmac
import json
import threading
from datetime import timedelta
from email.header import decode_header, make_header
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from shopdesk.config import get_settings
from shopdesk.jobs.runner import deliver_outbox
from tests.integration.aftersales.test_flows import act, create


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp():
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    settings = get_settings()
    settings.smtp_host, settings.smtp_port = "127.0.0.1", port
    yield inbox
    settings.smtp_host = ""
    controller.stop()


@pytest.fixture
def receiver():
    got = []
    fail_first = {"n": 1}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if fail_first["n"] > 0:
                fail_first["n"] -= 1
                self.send_response(503)
                self.end_headers()
                return
            got.append((dict(self.headers), body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()


async def test_email_and_webhook_delivered_once_with_retry(shop, smtp, receiver, frozen_clock):
    url, got = receiver
    r = await shop.post("/webhooks", {"url": url, "events": ["aftersales.*"], "secret": "whsec-123456"},
                        token=shop.admin_token)
    assert r.status_code == 201, r.text
    order = await shop.order(email="buyer@example.com")
    buyer = await shop.shopper(order)
    case = await create(shop, order, buyer, "return_refund", "no_reason_7d", [("A", 1)])
    await act(shop, case, "approve", token=shop.agent_token)

    await deliver_outbox()
    subjects = [str(make_header(decode_header(m["Subject"]))) for m in smtp.messages]
    assert len(subjects) == 2 and all(case["case_no"] in s for s in subjects)
    approval = next(m for m, s in zip(smtp.messages, subjects) if "待退货" in s)
    assert all(m["To"] == "buyer@example.com" for m in smtp.messages)
    body = approval.get_payload(decode=True).decode()
    assert "上海" in body and "退货" in body  # the return address is in the approval mail
    assert len(got) == 1  # the first webhook attempt got a 503 and waits for its back-off

    await deliver_outbox()
    assert len(got) == 1  # not due yet
    frozen_clock.advance(timedelta(minutes=5))
    await deliver_outbox()
    await deliver_outbox()
    assert len(got) == 2 and len(smtp.messages) == 2
    events = []
    for headers, raw in got:
        expected = "sha256=" + hmac.new(b"whsec-123456", raw, hashlib.sha256).hexdigest()
        assert headers["X-Shopdesk-Signature"] == expected
        payload = json.loads(raw)
        assert payload["id"] and headers["X-Shopdesk-Delivery"] == payload["id"]
        events.append(payload["event"])
    assert sorted(events) == ["aftersales.approve", "aftersales.create"]
