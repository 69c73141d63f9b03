"""The email channel against real servers on loopback: pymap (IMAP), aiosmtpd (SMTP in and out).

A server that cannot start fails the test; nothing here is skipped.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import imaplib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import func, select, update

from shopdesk.aftersales.models import Upload
from shopdesk.config import get_settings
from shopdesk.core import storage
from shopdesk.core.db import transaction
from shopdesk.core.outbox import OutboxItem
from shopdesk.jobs.runner import _send_email
from shopdesk.tickets.channel_models import InboundEmail, Mailbox
from shopdesk.tickets.email_channel import (BACKOFF_MAX_S, backoff_s, ingest, poll_all_once, reply_envelope,
                                            run_mail_pollers, start_smtp_receiver)
from shopdesk.tickets.models import Ticket, TicketReply
from tests.factories import count_queries
from tests.conftest import T0

IMAP_USER, IMAP_PASSWORD = "desk", "desk-pass-1"
BUYER = "buyer@customer.example"
HANG_TIMEOUT_S = 20.0


# ------------------------------------------------------------------------------------------ servers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def imap_port():
    """A pymap IMAP server (in-memory backend) in its own process."""
    port = _free_port()
    pymap = Path(sys.executable).with_name("pymap")
    proc = subprocess.Popen([str(pymap), "--host", "127.0.0.1", "--port", str(port), "--no-tls", "dict",
                             "--demo-user", IMAP_USER, "--demo-password", IMAP_PASSWORD],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while True:
        try:
            client = imaplib.IMAP4("127.0.0.1", port, timeout=2)
            client.login(IMAP_USER, IMAP_PASSWORD)
            client.logout()
            break
        except (OSError, imaplib.IMAP4.error) as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"pymap did not start on port {port}: {exc}\n{err}") from exc
            time.sleep(0.1)
    yield port
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


def _append(port: int, folder: str, raws: list[bytes], *, recreate: bool = False) -> None:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    try:
        client.login(IMAP_USER, IMAP_PASSWORD)
        if recreate:
            assert client.delete(folder)[0] == "OK"
        client.create(folder)  # NO when it exists: fine
        for raw in raws:
            assert client.append(folder, None, None, raw)[0] == "OK"
    finally:
        client.logout()


async def append(port: int, folder: str, raws: list[bytes], **kw) -> None:
    await asyncio.to_thread(_append, port, folder, raws, **kw)


@pytest.fixture
async def hanging_port():
    """A server that accepts connections and never says a word."""
    release = asyncio.Event()
    held = []

    async def hold(reader, writer):
        held.append(writer)
        await release.wait()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    release.set()
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.fixture
async def smtp_in():
    """The SMTP receiver, on a free loopback port."""
    server = await start_smtp_receiver("127.0.0.1", 0, hostname="desk.test")
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


class Capture:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


@pytest.fixture
async def smtp_out(monkeypatch):
    """A real SMTP server the outbox sends to; what it receives is kept."""
    from aiosmtpd.smtp import SMTP

    capture = Capture()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(capture, hostname="mx.test", loop=loop), "127.0.0.1", 0)
    monkeypatch.setattr(get_settings(), "smtp_host", "127.0.0.1")
    monkeypatch.setattr(get_settings(), "smtp_port", server.sockets[0].getsockname()[1])
    yield capture
    server.close()
    await server.wait_closed()


@pytest.fixture(autouse=True)
async def quiet_mailboxes():
    """Mailboxes outlive a test in the database: deactivate them so no later poller visits dead servers."""
    yield
    async with transaction() as session:
        await session.execute(update(Mailbox).values(active=False))


# ------------------------------------------------------------------------------------------ helpers
def email(*, subject: str, body: str = "你好", sender: str = BUYER, to: str = "support@shop.example",
          message_id: str | None = None, in_reply_to: str | None = None, references: tuple[str, ...] = (),
          headers: dict | None = None, attachments: tuple[tuple[str, bytes, str], ...] = ()) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Date"] = format_datetime(T0)
    if message_id:
        m["Message-ID"] = f"<{message_id}>"
    if in_reply_to:
        m["In-Reply-To"] = f"<{in_reply_to}>"
    if references:
        m["References"] = " ".join(f"<{r}>" for r in references)
    for name, value in (headers or {}).items():
        m[name] = value
    m.set_content(body)
    for filename, data, content_type in attachments:
        maintype, subtype = content_type.split("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return m.as_bytes(policy=policy.SMTP)


def email_with_a_big_attachment(filename: str, data: bytes, content_type: str) -> bytes:
    """The same MIME as `email(...)` builds, written directly (the generator takes seconds on 20 MB)."""
    return (f"From: {BUYER}\r\nTo: support@shop.example\r\nSubject: =?utf-8?b?6YCA6LSn6KeG6aKR?=\r\n"
            f"Date: {format_datetime(T0)}\r\nMessage-ID: <{mid('big')}>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n视频在附件。\r\n"
            f"--b1\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: base64\r\n"
            f"Content-Disposition: attachment; filename=\"{filename}\"\r\n\r\n").encode() + \
        base64.encodebytes(data).replace(b"\n", b"\r\n") + b"--b1--\r\n"


def mid(name: str) -> str:
    return f"{name}.{secrets.token_hex(4)}@customer.example"


async def add_mailbox(shop, *, folder: str | None = None, port: int | None = None) -> Mailbox:
    body = {"address": f"support-{secrets.token_hex(3)}@{shop.slug}.example.com", "display_name": "售后客服"}
    if port is not None:
        body.update(imap_host="127.0.0.1", imap_port=port, imap_ssl=False, imap_user=IMAP_USER,
                    imap_password=IMAP_PASSWORD, imap_folder=folder or "INBOX")
    r = await shop.post("/mailboxes", body, shop.admin_token)
    assert r.status_code == 201, r.text
    return await mailbox(r.json()["id"])


async def mailbox(mailbox_id: str) -> Mailbox:
    async with transaction() as session:
        return await session.get(Mailbox, mailbox_id)


async def taken_in(mailbox_id: str) -> list[InboundEmail]:
    async with transaction() as session:
        return list((await session.execute(select(InboundEmail).where(InboundEmail.mailbox_id == mailbox_id)
                                           .order_by(InboundEmail.received_at, InboundEmail.id))).scalars())


async def replies(ticket_id: str, public: bool = True) -> list[TicketReply]:
    async with transaction() as session:
        return list((await session.execute(select(TicketReply).where(
            TicketReply.ticket_id == ticket_id, TicketReply.public.is_(public))
            .order_by(TicketReply.created_at, TicketReply.id))).scalars())


async def ticket(ticket_id: str) -> Ticket:
    async with transaction() as session:
        return await session.get(Ticket, ticket_id)


async def merchant_tickets(merchant_id: str) -> int:
    async with transaction() as session:
        return (await session.execute(select(func.count()).select_from(Ticket).where(
            Ticket.merchant_id == merchant_id))).scalar_one()


async def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------------------ mailboxes
async def test_mailboxes_are_for_admins_and_never_show_the_password(shop):
    body = {"address": f"Help@{shop.slug}.example.com", "imap_host": "imap.example.com", "imap_user": "help",
            "imap_password": "s3cret-pass", "store": "main"}
    # An agent may not add one
    r = await shop.post("/mailboxes", body, shop.agent_token)
    assert r.status_code == 403, r.text
    # An admin may; the address is kept in lower case and the password is never shown
    r = await shop.post("/mailboxes", body, shop.admin_token)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["address"] == f"help@{shop.slug}.example.com" and out["store_id"]
    assert out["imap"]["password_set"] is True and "s3cret-pass" not in r.text
    # The same address twice is a conflict; a wrong one names the field; IMAP without a password is refused
    assert (await shop.post("/mailboxes", body, shop.admin_token)).status_code == 409
    r = await shop.post("/mailboxes", {"address": "not an address"}, shop.admin_token)
    assert r.status_code == 422 and r.json()["field"] == "address"
    r = await shop.post("/mailboxes", {"address": f"x@{shop.slug}.example.com", "imap_host": "h"}, shop.admin_token)
    assert r.status_code == 422 and r.json()["field"] == "imap_user"
    # The list shows it, without the password, in a fixed number of queries
    with count_queries() as one:
        r = await shop.get("/mailboxes", shop.admin_token)
    assert [b["address"] for b in r.json()["items"]] == [out["address"]] and "s3cret-pass" not in r.text
    for i in range(3):
        await shop.post("/mailboxes", {"address": f"more{i}@{shop.slug}.example.com"}, shop.admin_token)
    with count_queries() as four:
        r = await shop.get("/mailboxes", shop.admin_token)
    assert len(r.json()["items"]) == 4
    assert len(one) == len(four) <= 3, four
    assert (await shop.get("/mailboxes", shop.agent_token)).status_code == 403


# ------------------------------------------------------------------------------------------ IMAP intake
async def test_a_thread_of_three_mails_is_one_ticket_with_two_replies(shop, imap_port):
    # Given a known customer and three mails of one conversation in the mailbox's folder
    order = await shop.order(email=BUYER)
    folder = f"T{secrets.token_hex(3)}"
    first, second, third = mid("first"), mid("second"), mid("third")
    pdf = b"%PDF-1.4\n" + secrets.token_bytes(3000)
    await append(imap_port, folder, [
        email(subject="耳机左耳没声音", body="收到两天左耳就不响了。", message_id=first),
        email(subject="Re: 耳机左耳没声音", body="补充：发票在附件里。\n\n> 收到两天左耳就不响了。", message_id=second,
              in_reply_to=first, references=(first,), attachments=(("发票.pdf", pdf, "application/pdf"),)),
        email(subject="Re: Re: 耳机左耳没声音", body="请尽快处理，谢谢。", message_id=third, in_reply_to=second,
              references=(first, second)),
    ])
    box = await add_mailbox(shop, folder=folder, port=imap_port)
    # When the mailbox is polled
    results = await poll_all_once({box.id}, timeout_s=10)
    assert results[box.id].error is None and dict(results[box.id].statuses) == {"ticket": 1, "reply": 2}
    # Then it is one email ticket for that customer, with the two later mails as its public replies
    mails = await taken_in(box.id)
    assert [m.status for m in mails] == ["ticket", "reply", "reply"]
    assert len({m.ticket_id for m in mails}) == 1
    t = await ticket(mails[0].ticket_id)
    assert (t.channel, t.subject, t.requester_email) == ("email", "耳机左耳没声音", BUYER)
    assert t.customer_id == order["customer_id"]
    assert "左耳就不响了" in t.description
    got = await replies(t.id)
    assert [r.message_id for r in got] == [second, third]
    assert [(r.author_type, r.channel) for r in got] == [("shopper", "email")] * 2
    assert got[0].body.startswith("补充：发票在附件里。") and "> 收到两天" not in got[0].body
    # And the attachment is stored and linked from the reply
    async with transaction() as session:
        upload = await session.get(Upload, got[0].attachment_ids[0])
    assert (upload.content_type, upload.size) == ("application/pdf", len(pdf))
    assert storage.open_path(upload.path).read_bytes() == pdf
    # And the position is after the last message: polling again takes nothing
    assert (await mailbox(box.id)).last_uid > 0
    again = await poll_all_once({box.id}, timeout_s=10)
    assert again[box.id].error is None and not again[box.id].statuses


MALFORMED = (b"From: =?utf-8?B?5byg5LiJ?= <broken@customer.example\r\n"
             b"To: support@shop.example\r\n"
             b"Subject: =?gb2312?B?zsS8/rvZwcs=?= \xb1\xa8\xb4\xed\r\n"
             b"Date: someday soon\r\n"
             b"MIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n"
             b"\r\n"
             b"--XYZ\r\n"
             b"Content-Type: text/plain; charset=no-such-charset\r\n"
             b"Content-Transfer-Encoding: base64\r\n"
             b"\r\n"
             b"5L2g5aW9!!!not base64\x00\r\n"
             b"--XYZ\r\n"
             b"Content-Type: application/pdf; name=\"a.pdf\"\r\n"
             b"Content-Transfer-Encoding: base64\r\n"
             b"\r\n"
             b"JVBERi0xLjQK%%%\r\n")  # no closing boundary, no Message-ID


async def test_big_malformed_and_hanging_mailboxes_do_not_hold_up_the_others(shop, imap_port, hanging_port):
    # Given a mailbox with a 20 MB attachment and a malformed message, a healthy one, and one whose server hangs
    big_folder, ok_folder = f"B{secrets.token_hex(3)}", f"K{secrets.token_hex(3)}"
    payload = os.urandom(20 * 1024 * 1024)
    big_raw = email_with_a_big_attachment("unboxing.mp4", payload, "video/mp4")
    await append(imap_port, big_folder, [big_raw, MALFORMED])
    await append(imap_port, ok_folder, [email(subject="发票抬头写错了", message_id=mid("ok"))])
    big = await add_mailbox(shop, folder=big_folder, port=imap_port)
    ok = await add_mailbox(shop, folder=ok_folder, port=imap_port)
    hang = await add_mailbox(shop, port=hanging_port)
    # When the pollers run, each mailbox in its own task (the silent server is given a long time to answer)
    stop = asyncio.Event()
    pollers = asyncio.create_task(run_mail_pollers(stop, interval_s=30, timeout_s=HANG_TIMEOUT_S, refresh_s=0.1,
                                                   only={big.id, ok.id, hang.id}))
    try:
        async def others_done():
            return len(await taken_in(ok.id)) == 1 and len(await taken_in(big.id)) == 2

        await until(others_done, HANG_TIMEOUT_S, "the healthy and the big mailbox")
        # Then the others were taken in while the silent server was still being waited for
        stuck = await mailbox(hang.id)
        assert stuck.last_polled_at is None and stuck.last_error is None
    finally:
        # And stopping does not wait for it either
        stop.set()
        await asyncio.wait_for(pollers, 3)
    # When the silent server runs out of time, the mailbox records why (and the healthy one is unaffected)
    results = await poll_all_once({hang.id, ok.id}, timeout_s=1)
    assert results[hang.id].error == "greeting: no answer within 1 s" and results[ok.id].error is None
    assert (await mailbox(hang.id)).last_error == "greeting: no answer within 1 s"
    assert (await mailbox(ok.id)).last_error is None
    # And the 20 MB attachment is kept whole, on the ticket's note
    big_mail, bad_mail = await taken_in(big.id)
    assert big_mail.status == "ticket" and big_mail.size > 20 * 1024 * 1024
    notes = await replies(big_mail.ticket_id, public=False)
    async with transaction() as session:
        upload = await session.get(Upload, notes[0].attachment_ids[0])
    assert upload.size == len(payload) and upload.content_type == "video/mp4"
    assert hashlib.sha256(storage.open_path(upload.path).read_bytes()).digest() == hashlib.sha256(payload).digest()
    # And the malformed message became a ticket with what could be read
    assert bad_mail.status == "ticket" and bad_mail.reason.startswith("defects:")
    assert bad_mail.message_id.endswith("@synthetic.shopdesk.invalid")
    bad = await ticket(bad_mail.ticket_id)
    assert bad.subject.startswith("文件毁了") and bad.requester_email == "broken@customer.example"
    assert "not base64" in bad.description  # the undecodable part, as it came
    # And the healthy one is an ordinary ticket
    assert (await taken_in(ok.id))[0].status == "ticket"


async def test_nothing_is_lost_or_taken_twice_when_the_poller_is_killed(shop, imap_port):
    # Given 20 mails waiting
    folder = f"R{secrets.token_hex(3)}"
    raws = [email(subject=f"第 {i} 封", message_id=mid(f"r{i}"), sender=f"c{i}@customer.example")
            for i in range(20)]
    await append(imap_port, folder, raws)
    box = await add_mailbox(shop, folder=folder, port=imap_port)
    cli = [sys.executable, "-m", "shopdesk.cli", "mail", "poll", "--mailbox", box.id, "--timeout", "10"]
    # When the poller (`shopdesk mail poll`, its own process) is killed (SIGKILL) in the middle of its work:
    # after its third commit, as its log says (asking the database would wait behind its writes on SQLite)
    proc = await asyncio.create_subprocess_exec(*cli, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT,
                                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output: list[bytes] = []
    try:
        async def third_commit():
            committed = 0
            while committed < 3:
                line = await proc.stdout.readline()
                if not line:
                    raise AssertionError(f"the poller exited: {b''.join(output).decode(errors='replace')}")
                output.append(line)
                committed += b'"email_ingested"' in line
        await asyncio.wait_for(third_commit(), 30)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    killed_at = len(await taken_in(box.id))
    assert 3 <= killed_at < 20
    # And, worse, its position was lost (as if it died between a mail's commit and saving the position)
    async with transaction() as session:
        await session.execute(update(Mailbox).where(Mailbox.id == box.id).values(last_uid=0))
    # And two more mails arrived meanwhile
    raws += [email(subject="第 20 封", message_id=mid("r20")), email(subject="第 21 封", message_id=mid("r21"))]
    await append(imap_port, folder, raws[20:])
    # When it is started again
    results = await poll_all_once({box.id}, timeout_s=10)
    assert results[box.id].error is None
    # Then every mail is taken in exactly once, each its own ticket
    mails = await taken_in(box.id)
    assert len(mails) == 22 and len({m.message_id for m in mails}) == 22
    assert {m.status for m in mails} == {"ticket"} and len({m.ticket_id for m in mails}) == 22
    assert await merchant_tickets(box.merchant_id) == 22
    # When the folder is rebuilt on the server (new UIDVALIDITY) with the same mails
    before = (await mailbox(box.id)).uidvalidity
    await append(imap_port, folder, raws, recreate=True)
    results = await poll_all_once({box.id}, timeout_s=10)
    assert results[box.id].error is None
    # Then it is read from the start again and still nothing is taken twice
    assert (await mailbox(box.id)).uidvalidity != before
    assert len(await taken_in(box.id)) == 22 and await merchant_tickets(box.merchant_id) == 22


# ------------------------------------------------------------------------------------------ SMTP intake, loops
async def test_smtp_receiver_takes_mail_for_known_addresses_and_ignores_bounces_and_auto_replies(shop, smtp_in):
    box = await add_mailbox(shop)

    async def send(raw: bytes, sender: str = BUYER, to: str = box.address):
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp_in, timeout=10) as client:
            return await client.sendmail(sender, [to], raw)  # sender "" is the null sender of bounces

    # A stranger's address is refused at RCPT
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await send(email(subject="hi"), to=f"nobody@{shop.slug}.example.com")
    assert refused.value.recipients[0].code == 550
    # An ordinary mail becomes a ticket; delivered twice (an SMTP retry) it is still one
    raw = email(subject="快递丢了", body="物流三天没更新", to=box.address, message_id=mid("smtp"))
    await send(raw)
    await send(raw)
    # A bounce (null sender, delivery-status report), an out-of-office reply and our own mail coming back
    bounce = (b"From: Mail Delivery System <MAILER-DAEMON@mx.customer.example>\r\n"
              b"To: " + box.address.encode() + b"\r\nSubject: Undelivered Mail Returned to Sender\r\n"
              b"Message-ID: <" + mid("dsn").encode() + b">\r\nMIME-Version: 1.0\r\n"
              b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n"
              b"--B\r\nContent-Type: text/plain\r\n\r\nThis is the mail system.\r\n"
              b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.customer.example\r\n\r\n"
              b"Final-Recipient: rfc822; gone@customer.example\r\nAction: failed\r\nStatus: 5.1.1\r\n--B--\r\n")
    await send(bounce, sender="")
    await send(email(subject="自动回复: 我们已收到您的工单", message_id=mid("ooo"), to=box.address,
                     headers={"Auto-Submitted": "auto-replied"}))
    await send(email(subject="[#TK20261106-0001] 回复", sender=box.address, message_id=mid("self")))
    # Then: one ticket, three ignored with their reasons, nothing else
    mails = await taken_in(box.id)
    assert [(m.status, m.reason) for m in mails] == [("ticket", None), ("ignored", "bounce"),
                                                    ("ignored", "auto_reply"), ("ignored", "from_self")]
    assert (await ticket(mails[0].ticket_id)).subject == "快递丢了"
    async with transaction() as session:
        count = (await session.execute(select(func.count()).select_from(Ticket).where(
            Ticket.requester_email == BUYER, Ticket.subject == "快递丢了"))).scalar_one()
    assert count == 1


async def test_smtp_receiver_refuses_a_message_over_the_size_limit(shop):
    box = await add_mailbox(shop)
    server = await start_smtp_receiver("127.0.0.1", 0, hostname="desk.test", data_size_limit=4096)
    try:
        port = server.sockets[0].getsockname()[1]
        # 552 at MAIL FROM (the client declares SIZE) or after DATA (a client that does not)
        with pytest.raises(aiosmtplib.SMTPResponseException) as too_big:
            await aiosmtplib.send(email(subject="大", body="x" * 10_000, to=box.address), sender=BUYER,
                                  recipients=[box.address], hostname="127.0.0.1", port=port, timeout=10)
        assert too_big.value.code == 552
    finally:
        server.close()
        await server.wait_closed()
    assert await taken_in(box.id) == []


# ------------------------------------------------------------------------------------------ threading rules
async def test_ticket_numbers_count_only_from_the_requester_and_closed_tickets_get_a_follow_up(shop):
    box = await add_mailbox(shop)
    opened = await ingest(box.merchant_id, box.id, email(subject="屏幕有坏点", message_id=mid("open")))
    t = await ticket(opened.ticket_id)
    tag = f"Re: [#{t.number}] 屏幕有坏点"
    # The requester answering with only the ticket number in the subject reaches the ticket
    row = await ingest(box.merchant_id, box.id, email(subject=tag, body="照片补上了", message_id=mid("tagged")))
    assert (row.status, row.ticket_id) == ("reply", t.id)
    # Someone else using the number (or our header) opens a ticket of their own
    row = await ingest(box.merchant_id, box.id, email(subject=tag, sender="other@elsewhere.example",
                                                      message_id=mid("stranger"),
                                                      headers={"X-Shopdesk-Ticket": t.number}))
    assert row.status == "ticket" and row.ticket_id != t.id
    # Taking the same mail in again changes nothing
    again = await ingest(box.merchant_id, box.id, email(subject=tag, body="照片补上了", message_id=row.message_id))
    assert again.id == row.id
    # Once the ticket is closed, an answer in its thread opens a follow-up that names it
    r = await shop.client.patch(f"/api/v1/tickets/{t.id}", json={"status": "closed"}, headers=shop.h(shop.agent_token))
    assert r.status_code == 200, r.text
    row = await ingest(box.merchant_id, box.id, email(subject="Re: 屏幕有坏点", body="又坏了\n\n> 屏幕有坏点",
                                                      message_id=mid("late"), in_reply_to=opened.message_id))
    follow = await ticket(row.ticket_id)
    assert row.status == "ticket" and follow.id != t.id
    assert follow.custom_fields == {"follow_up_of": t.number} and follow.description == "又坏了"
    assert t.number in (await replies(follow.id, public=False))[0].body
    assert len(await replies(t.id)) == 1  # the closed one got nothing
    # A mail in the thread of a merged ticket goes to the ticket it was merged into
    other = await ingest(box.merchant_id, box.id, email(subject="另一个问题", message_id=mid("second-issue")))
    r = await shop.post(f"/tickets/{other.ticket_id}/merge", {"into": follow.id}, shop.agent_token)
    assert r.status_code == 200, r.text
    row = await ingest(box.merchant_id, box.id, email(subject="Re: 另一个问题", message_id=mid("after-merge"),
                                                      in_reply_to=other.message_id))
    assert (row.status, row.ticket_id) == ("reply", follow.id)


async def test_a_mail_that_cannot_be_processed_is_recorded_as_failed_and_not_retried():
    # Given a mail for a merchant that no longer exists (its mailbox outlived it)
    raw = email(subject="无主之信", message_id=mid("orphan"))
    # When it is taken in, then it is kept as failed, with the reason
    row = await ingest("0" * 32, None, raw)
    assert (row.status, row.reason, row.ticket_id) == ("failed", "NotFound: no such merchant", None)
    # And taking it in again is a no-op (the poller moves past it)
    assert (await ingest("0" * 32, None, raw)).id == row.id


def test_a_failing_mailbox_backs_off_doubling_up_to_a_cap():
    for n in (1, 2, 3):
        assert 0.8 * 60 * 2 ** n <= backoff_s(n, 60) <= 1.2 * 60 * 2 ** n
    assert backoff_s(30, 60) <= BACKOFF_MAX_S * 1.2


# ------------------------------------------------------------------------------------------ outbound
async def test_a_reply_goes_out_from_the_mailbox_threaded_with_the_ticket_number(shop, smtp_out):
    # Given an email ticket the customer has written to twice
    box = await add_mailbox(shop)
    first, second = mid("o1"), mid("o2")
    opened = await ingest(box.merchant_id, box.id, email(subject="耳机没声音", message_id=first, to=box.address))
    await ingest(box.merchant_id, box.id, email(subject="Re: 耳机没声音", body="还在等", message_id=second,
                                                in_reply_to=first, references=(first,), to=box.address))
    t = await ticket(opened.ticket_id)
    # When an agent answers
    r = await shop.post(f"/tickets/{t.id}/replies", {"body": "您好，已为您安排换货。"}, shop.agent_token)
    assert r.status_code == 201, r.text
    async with transaction() as session:
        outbox = [i.payload for i in (await session.execute(select(OutboxItem).where(
            OutboxItem.kind == "email").order_by(OutboxItem.created_at, OutboxItem.id))).scalars()
            if i.payload["to"] == BUYER and t.number in i.payload["subject"]]
        envelope = await reply_envelope(session, await session.get(Ticket, t.id))
    ack, answer = outbox[0], outbox[-1]
    assert answer.get("message_id") and "已为您安排换货" in answer["body"]
    # (tickets/actions.py `_mail_requester` is to add these keys itself; until then they are added here)
    for payload in (ack, answer):
        for key, value in envelope.items():
            payload.setdefault(key, value)
        assert await _send_email(payload) == "smtp"
    # Then the answer reached the SMTP server from the mailbox, with the ticket number and the thread
    assert len(smtp_out.messages) == 2
    sender, rcpts, raw = smtp_out.messages[1]
    sent = message_from_bytes(raw, policy=policy.default)
    assert (sender, rcpts) == (box.address, [BUYER])
    assert parseaddr(str(sent["From"]))[1] == box.address
    assert f"[#{t.number}]" in str(sent["Subject"]) and str(sent["X-Shopdesk-Ticket"]) == t.number
    assert str(sent["In-Reply-To"]) == f"<{second}>"
    assert str(sent["References"]).split() == [f"<{first}>", f"<{second}>"]
    assert str(sent["Message-ID"]).strip() == f"<{answer['message_id'].strip('<>')}>"
    # And the customer's answer to it, even from a colleague's address, lands on the ticket by its Message-ID
    row = await ingest(box.merchant_id, box.id, email(subject=str(sent["Subject"]), body="好的，谢谢",
                                                      sender="colleague@customer.example", message_id=mid("o3"),
                                                      in_reply_to=str(sent["Message-ID"]).strip().strip("<>")))
    assert (row.status, row.ticket_id) == ("reply", t.id)
    # And an answer to the acknowledgement (whose id we made up) finds the ticket through its number
    ack_id = str(message_from_bytes(smtp_out.messages[0][2], policy=policy.default)["Message-ID"]).strip()
    assert ack_id.startswith(f"<{t.number}.")
    row = await ingest(box.merchant_id, box.id, email(subject="Re: 耳机没声音", body="收到", message_id=mid("o4"),
                                                      in_reply_to=ack_id.strip("<>")))
    assert (row.status, row.ticket_id) == ("reply", t.id)


async def test_the_acknowledgement_of_a_new_email_ticket_can_thread_under_that_mail(shop, monkeypatch):
    # Given the requester mails of tickets/actions.py watched as they are written
    from shopdesk.tickets import actions

    box = await add_mailbox(shop)
    envelopes = []
    original = actions._mail_requester

    async def watched(session, t, subject, body, **kw):
        envelopes.append(await reply_envelope(session, t))
        return await original(session, t, subject, body, **kw)

    monkeypatch.setattr(actions, "_mail_requester", watched)
    # When a mail opens a ticket, then the acknowledgement written in that transaction can answer that mail
    first = mid("ack")
    await ingest(box.merchant_id, box.id, email(subject="发票", message_id=first))
    assert len(envelopes) == 1
    assert (envelopes[0]["in_reply_to"], envelopes[0]["references"]) == (first, [first])
    assert parseaddr(envelopes[0]["from"]) == ("售后客服", box.address)
