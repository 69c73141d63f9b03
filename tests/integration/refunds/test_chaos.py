"""Refund chaos test (rulebook §7: never twice, never lost), on PostgreSQL, with real processes.

1,000 refunds (500 unshipped two-tender orders, one auto-approved refund_only case each) are settled by
two `shopdesk worker` processes against the sandbox PSP (`shopdesk sandbox-psp`) injecting timeouts
before and after it books a refund, 5xx before and after, PROCESSING answers, duplicate and stale
out-of-order notifications and failing queries. The PSP notifies a `shopdesk serve --no-jobs`
process. A chaos loop SIGKILLs a random worker every 0.5-2 s and starts it again. At the end every
refund must be settled exactly once: total refunded == total approved == what the PSP paid out, no
refund_no was sent with two amounts, no second refund_no exists. See docs/refunds.md.

Run: SHOPDESK_TEST_DB=postgres .venv/bin/pytest tests/integration/refunds -q -s
Knobs: SHOPDESK_CHAOS_SEED (default 20261106), SHOPDESK_CHAOS_ORDERS (default 500 → 1,000 refunds).
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from shopdesk.aftersales.models import AftersaleCase
from shopdesk.core.db import transaction
from shopdesk.core.records import AuditLog
from shopdesk.integrations.payments.sandbox_psp import DEFAULT_NOTIFY_BACKOFF_S
from shopdesk.orders.models import Payment
from shopdesk.refunds.models import OPEN_STATUSES, Refund, RefundNotification
from tests.integration.refunds import make_merchant, make_refund_case

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]

SEED = int(os.environ.get("SHOPDESK_CHAOS_SEED", "20261106"))
ORDERS = int(os.environ.get("SHOPDESK_CHAOS_ORDERS", "500"))
WORKERS = 2
CHAOS_S = 100.0     # kill workers for at most this long ...
DEADLINE_S = 150.0  # ... and give up on settling after this long (both from the first worker start)
LEASE_S = 3.0
# Back-off is base * 2**attempts and every claim counts, including those of killed workers: the last
# refunds standing collect kills, so a small base keeps the tail short (0.05 s * 2**9 = 26 s).
RETRY_BASE_S = 0.05
CLIENT_TIMEOUT_S = 2.0  # SandboxProvider's default timeout; the PSP's sleeps must outlast it
FAULTS = {
    "timeout_rate": 0.05,                # sleep past the client's timeout, book nothing
    "timeout_after_commit_rate": 0.05,   # book the refund, then sleep past the client's timeout
    "error_5xx_rate": 0.05,              # 500/502/503, book nothing
    "error_5xx_after_commit_rate": 0.05,  # book the refund, then answer 500
    "processing_rate": 0.3,              # answer PROCESSING, settle SUCCESS later, notify then
    "duplicate_notify_rate": 0.3,        # the final notification twice, with one id
    "late_notify_rate": 0.3,             # a stale PROCESSING notification after the final one
    "query_5xx_rate": 0.1,               # queries answer 503
    "abnormal_rate": 0.0, "fail_rate": 0.0,  # the spec wants every refund to succeed
    "timeout_sleep_s": CLIENT_TIMEOUT_S + 0.5,
    "settle_delay_s": 0.5,
    "seed": SEED,
}
# One folder per test session: parallel sessions (each with its own database) must not mix their logs.
ARTIFACTS = Path(os.environ.get("SHOPDESK_TEST_ARTIFACTS", "test-artifacts")) / "refund-chaos" / str(os.getpid())
SHOPDESK = str(Path(sys.executable).with_name("shopdesk"))


def require_postgres() -> None:
    if os.environ.get("SHOPDESK_TEST_DB", "sqlite") != "postgres":
        pytest.skip("the refund chaos test runs on PostgreSQL only (SHOPDESK_TEST_DB=postgres)")
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        if os.environ.get("SHOPDESK_TEST_REQUIRE_SERVICES") == "1":
            pytest.fail("PostgreSQL is required (SHOPDESK_TEST_REQUIRE_SERVICES=1) but not reachable")
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    """One shopdesk process, logging to a file, that can be SIGKILLed and started again."""

    name: str
    args: list[str]
    env: dict[str, str]
    popen: subprocess.Popen | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return ARTIFACTS / f"{self.name}.log"

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start #{self.starts} at {time.strftime('%H:%M:%S')} ===\n".encode())
            log.flush()
            self.popen = subprocess.Popen([SHOPDESK, *self.args], env=self.env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL: no clean-up, no rollback by the process itself, connections cut mid-flight."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


async def wait_http(url: str, proc: Proc, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited:\n{proc.log_path.read_text()[-3000:]}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{proc.name} did not answer {url} within {timeout_s}s")


async def open_refunds(merchant_id: str) -> int:
    async with transaction() as session:
        return (await session.execute(select(func.count()).select_from(Refund).where(
            Refund.merchant_id == merchant_id, Refund.status.in_(OPEN_STATUSES)))).scalar_one()


async def wait_notifications_quiet(psp: httpx.AsyncClient, quiet_s: float = 2.0, max_s: float = 20.0) -> dict:
    """Let the PSP finish its pending settlements and notifications (late ones come settle_delay_s after)."""
    deadline = time.monotonic() + max_s
    last, since = -1, time.monotonic()
    while True:
        ledger = (await psp.get("/control/ledger")).json()
        pending = [n for n in ledger["notifications"]
                   if not n["delivered"] and n["attempts"] <= len(DEFAULT_NOTIFY_BACKOFF_S)]
        count = len(ledger["notifications"])
        if count != last or pending:
            last, since = count, time.monotonic()
        if time.monotonic() - since >= quiet_s or time.monotonic() > deadline:
            return ledger
        await asyncio.sleep(0.25)


@dataclass
class Chaos:
    rng: random.Random
    workers: list[Proc]
    kills: int = 0
    kill_log: list[str] = field(default_factory=list)

    async def run(self, merchant_id: str, t0: float) -> tuple[int, float]:
        """Kill and restart random workers until every refund is final; return (open refunds, chaos seconds)."""
        next_kill = t0 + self.rng.uniform(0.5, 2.0)
        chaos_end = None
        while True:
            now = time.monotonic()
            left = await open_refunds(merchant_id)
            if left == 0 or now - t0 > DEADLINE_S:
                return left, (chaos_end or now) - t0
            for w in self.workers:  # a worker that died by itself is a finding, not chaos
                assert w.alive(), f"{w.name} exited on its own:\n{w.log_path.read_text()[-3000:]}"
            if now - t0 <= CHAOS_S and now >= next_kill:
                victim = self.rng.choice(self.workers)
                victim.kill()
                self.kills += 1
                self.kill_log.append(f"{now - t0:6.2f}s kill {victim.name} ({left} open)")
                await asyncio.sleep(self.rng.uniform(0.0, 0.3))
                victim.start()
                next_kill = time.monotonic() + self.rng.uniform(0.5, 2.0)
            elif now - t0 > CHAOS_S and chaos_end is None:
                chaos_end = now
            await asyncio.sleep(0.1)


async def test_refund_chaos(frozen_clock) -> None:
    require_postgres()
    # Real time: the worker processes compare next_attempt_at with their own clock.
    frozen_clock.reset()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.log"):
        old.unlink()
    rng = random.Random(SEED)
    psp_port, app_port = free_port(), free_port()
    env = {**os.environ,  # the same database and SHOPDESK_SECRET_KEY (it signs the notifications)
           "SHOPDESK_BASE_URL": f"http://127.0.0.1:{app_port}",
           "SHOPDESK_SANDBOX_PSP_URL": f"http://127.0.0.1:{psp_port}",
           "SHOPDESK_RUN_JOBS_IN_PROCESS": "0",
           "SHOPDESK_REFUND_LEASE_S": str(LEASE_S), "SHOPDESK_REFUND_RETRY_BASE_S": str(RETRY_BASE_S),
           "SHOPDESK_JOB_INTERVAL_S": "0.1",
           "SHOPDESK_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    psp = Proc("sandbox-psp", ["sandbox-psp", "--port", str(psp_port)], env)
    server = Proc("server", ["serve", "--no-jobs", "--port", str(app_port)], env)
    workers = [Proc(f"worker-{i}", ["worker"], env) for i in range(1, WORKERS + 1)]
    procs = [psp, server, *workers]
    started = time.monotonic()
    try:
        psp.start()
        server.start()
        await wait_http(f"http://127.0.0.1:{psp_port}/control/faults", psp)
        await wait_http(f"http://127.0.0.1:{app_port}/healthz", server)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{psp_port}", timeout=10) as control:
            answer = await control.put("/control/faults", json=FAULTS)
            assert answer.status_code == 200, answer.text

            # 500 orders x 2 tenders, through the same actions the API uses.
            merchant_id = await make_merchant()
            gate = asyncio.Semaphore(8)

            async def one(n: int, price: int, balance: int):
                async with gate:
                    return await make_refund_case(merchant_id, n, price_fen=price, balance_fen=balance)

            prices = [rng.randint(200, 200_000) for _ in range(ORDERS)]
            amounts = [(price, rng.randint(1, price - 1)) for price in prices]  # (order total, balance part)
            cases = await asyncio.gather(*(one(n, p, b) for n, (p, b) in enumerate(amounts)))
            setup_s = time.monotonic() - started
            approved = sum(c.refund_fen for c in cases)
            assert approved == sum(p for p, _ in amounts)

            t0 = time.monotonic()
            for w in workers:
                w.start()
            chaos = Chaos(rng, workers)
            left, chaos_s = await chaos.run(merchant_id, t0)
            settle_s = time.monotonic() - t0
            # Stop the workers, then let stale notifications arrive: they must change nothing.
            for w in workers:
                w.stop()
            ledger = await wait_notifications_quiet(control)
        for p in (server, psp):
            p.stop()
    finally:
        for p in procs:
            p.stop()

    # --- what ShopDesk holds ---
    async with transaction() as session:
        refunds = list((await session.execute(select(Refund).where(Refund.merchant_id == merchant_id))).scalars())
        case_rows = list((await session.execute(
            select(AftersaleCase).where(AftersaleCase.merchant_id == merchant_id))).scalars())
        payments = list((await session.execute(select(Payment).where(Payment.merchant_id == merchant_id))).scalars())
        audit = list((await session.execute(select(AuditLog.action, AuditLog.object_id, AuditLog.data).where(
            AuditLog.merchant_id == merchant_id,
            AuditLog.action.in_(("refund.processing", "refund.succeeded", "aftersales.refunds_settled")))
        )).all())
        ours = {r.refund_no for r in refunds}
        # The database is the suite's: earlier tests' due refunds may have gone to this PSP too.
        everyone = {no: (amount, trade) for no, amount, trade in (await session.execute(
            select(Refund.refund_no, Refund.amount_fen, Refund.trade_no))).all()}
        applied = (await session.execute(select(RefundNotification.status, func.count()).where(
            RefundNotification.refund_no.in_(ours)).group_by(RefundNotification.status))).all()

    statuses = Counter(r.status for r in refunds)
    transitions = Counter(f"{data.get('from')}->{action.split('.', 1)[1]}"
                          for action, _, data in audit if action.startswith("refund."))
    attempts = sum(r.attempts for r in refunds)
    by_attempts = dict(sorted(Counter(r.attempts for r in refunds).items()))
    psp_refunds = {r["out_refund_no"]: r for r in ledger["refunds"]}
    notes = ledger["notifications"]
    notes_by_id = Counter(n["id"] for n in notes)
    wall_s = time.monotonic() - started
    summary = "; ".join([
        f"refund chaos (seed {SEED}): {len(refunds)} refunds on {len(case_rows)} cases, {approved} fen approved",
        f"setup {setup_s:.1f}s, settled in {settle_s:.1f}s (chaos {chaos_s:.1f}s), wall {wall_s:.1f}s",
        f"{chaos.kills} SIGKILLs, {sum(w.starts for w in workers) - WORKERS} restarts",
        f"{attempts} worker attempts ({attempts - len(refunds)} beyond the first; refunds by attempts {by_attempts})",
        f"transitions {dict(sorted(transitions.items()))}",
        f"PSP notifications {len(notes)} ({len(notes_by_id)} ids, "
        f"{sum(1 for c in notes_by_id.values() if c > 1)} sent twice, "
        f"{sum(1 for n in notes if n['event_type'] == 'REFUND.PROCESSING')} stale PROCESSING after the final one, "
        f"{sum(n['attempts'] - 1 for n in notes)} redeliveries, "
        f"{sum(1 for n in notes if not n['delivered'])} undelivered)",
        f"notifications stored {dict(applied)}",
        f"statuses {dict(statuses)}",
        f"{len(psp_refunds) - len(ours & set(psp_refunds))} other tests' refunds also went through this PSP",
    ])
    print(f"\n{summary}\n(logs and kill log: {ARTIFACTS})")
    (ARTIFACTS / "summary.txt").write_text(summary + "\n" + "\n".join(chaos.kill_log) + "\n")

    # --- every refund settled, exactly once ---
    assert left == 0, f"{left} refunds still open after {DEADLINE_S}s: {dict(statuses)}"
    assert len(refunds) == 2 * ORDERS
    assert dict(statuses) == {"succeeded": 2 * ORDERS}
    assert all(c.status == "completed" for c in case_rows), Counter(c.status for c in case_rows)
    # A settled refund is never touched again: no retry scheduled, no transport error written over it.
    touched = [(r.refund_no, r.last_error, r.next_attempt_at) for r in refunds
               if r.next_attempt_at is not None or r.settled_at is None]
    assert not touched, f"{len(touched)} settled refunds were changed after settling, e.g. {touched[:3]}"
    settled_audit = Counter(obj for action, obj, _ in audit if action == "refund.succeeded")
    assert set(settled_audit) == ours and set(settled_audit.values()) == {1}, "a refund settled twice in the audit"
    case_audit = Counter(obj for action, obj, _ in audit if action == "aftersales.refunds_settled")
    assert len(case_audit) == ORDERS and set(case_audit.values()) == {1}
    # total refunded == total approved == what the PSP paid out
    refunded = sum(r.amount_fen for r in refunds if r.status == "succeeded")
    assert refunded == approved == sum(c.refund_fen for c in case_rows)
    assert all(p.refunded_fen == p.amount_fen for p in payments)
    assert sum(r["amount"] for r in ledger["refunds"] if r["status"] == "SUCCESS" and r["out_refund_no"] in ours
               ) == approved
    # no refund_no sent with two amounts (or against another trade), none lost, none unknown to ShopDesk
    assert ledger["violations"] == []
    assert len(psp_refunds) == len(ledger["refunds"]) and ours <= set(psp_refunds) <= set(everyone)
    for no, booked in psp_refunds.items():
        assert (booked["amount"], booked["transaction_id"]) == everyone[no]
    assert {psp_refunds[no]["status"] for no in ours} == {"SUCCESS"}
    # no second refund_no: nothing definitively failed, so nothing was superseded
    assert not [r.refund_no for r in refunds if r.supersedes]
    # the chaos did happen
    assert chaos.kills >= 10
    assert any(c > 1 for c in notes_by_id.values()) and any(n["event_type"] == "REFUND.PROCESSING" for n in notes)
