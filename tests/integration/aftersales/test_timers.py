"""Rulebook §6 timers, fired by `shopdesk timers run --now` (the real command, in a subprocess)."""
import hashlib
import json
import os
import subprocess
import sys
from datetime import timedelta

from tests.conftest import T0
from tests.integration.aftersales.test_flows import act, create


def timers_run(shop, at) -> int:
    """Run the real command for this shop's merchant (other tests' cases share the database)."""
    out = subprocess.run([sys.executable, "-m", "shopdesk.cli", "timers", "run", "--now", at.isoformat(),
                          "--merchant", shop.slug],
                         capture_output=True, text=True, env=os.environ.copy(), timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


def push_signed(tracking_no: str, when: str) -> dict:
    param = json.dumps({"status": "polling", "lastResult": {"nu": tracking_no, "state": "3", "data": [
        {"time": when, "ftime": when, "context": "已签收，签收人：前台", "status": "签收"}]}}, ensure_ascii=False)
    salt = os.environ["SHOPDESK_SECRET_KEY"][:16]
    return {"param": param, "sign": hashlib.md5((param + salt).encode()).hexdigest().upper()}


async def test_timers_fire_once_each(shop, client, frozen_clock):
    # Given three cases at T0: one waiting for review, one approved, one whose return is on its way
    order = await shop.order()
    buyer = await shop.shopper(order)
    review = await create(shop, order, buyer, "return_refund", "no_reason_7d", [("A", 1)])
    order2 = await shop.order()
    buyer2 = await shop.shopper(order2)
    waiting = await act(shop, await create(shop, order2, buyer2, "return_refund", "no_reason_7d", [("A", 1)]),
                        "approve", token=shop.agent_token)
    order3 = await shop.order()
    buyer3 = await shop.shopper(order3)
    shipped = await act(shop, await create(shop, order3, buyer3, "return_refund", "no_reason_7d", [("A", 1)]),
                        "approve", token=shop.agent_token)
    shipped = await act(shop, shipped, "ship-return", {"carrier": "zto", "tracking_no": "ZT-T3-0001"}, token=buyer3)
    # and the courier reports the return signed one day later (Beijing time)
    r = await client.post("/api/v1/hooks/kuaidi100", data=push_signed("ZT-T3-0001", "2026-11-07 20:00:00"))
    assert r.json() == {"result": True, "returnCode": "200", "message": "成功"}
    bad = await client.post("/api/v1/hooks/kuaidi100", data={**push_signed("ZT-T3-0001", "2026-11-07 20:00:00"),
                                                             "sign": "0" * 32})
    assert bad.status_code == 400
    signed_case = (await shop.get(f"/aftersales/{shipped['id']}")).json()
    assert signed_case["deadline_at"] == "2026-11-14T12:00:00Z"  # signed 12:00Z + 7 days

    # When nothing happens for 49 hours, the review is auto-approved (and only that)
    assert timers_run(shop, T0 + timedelta(hours=49)) == 1
    assert timers_run(shop, T0 + timedelta(hours=49)) == 0
    review = (await shop.get(f"/aftersales/{review['id']}")).json()
    assert review["status"] == "awaiting_return" and review["events"][-1]["actor"] == "system"

    # After 7 days without a waybill the approved return closes
    assert timers_run(shop, T0 + timedelta(days=7, hours=1)) == 1
    waiting = (await shop.get(f"/aftersales/{waiting['id']}")).json()
    assert waiting["status"] == "closed" and waiting["events"][-1]["action"] == "return_timeout"

    # 7 days after the return was signed, it is treated as received OK and the refund starts
    assert timers_run(shop, T0 + timedelta(days=8, hours=1)) == 1
    shipped = (await shop.get(f"/aftersales/{shipped['id']}")).json()
    assert shipped["status"] == "refunding" and len(shipped["refunds"]) == 2
    assert timers_run(shop, T0 + timedelta(days=8, hours=1)) == 0

    # A refund not settled within 24 h raises the first alarm, once
    assert timers_run(shop, T0 + timedelta(days=9, hours=2)) == 2  # the alarm, and the review case's return timeout
    shipped = (await shop.get(f"/aftersales/{shipped['id']}")).json()
    assert shipped["events"][-1]["action"] == "refund_alarm"
    assert timers_run(shop, T0 + timedelta(days=9, hours=2)) == 0


async def test_rejected_case_closes_after_escalation_window(shop):
    order = await shop.order()
    buyer = await shop.shopper(order)
    case = await act(shop, await create(shop, order, buyer, "return_refund", "no_reason_7d", [("B", 1)]),
                     "reject", {"reason": "超出售后期限"}, token=shop.agent_token)
    assert timers_run(shop, T0 + timedelta(days=6)) == 0
    assert timers_run(shop, T0 + timedelta(days=7, seconds=1)) == 1
    case = (await shop.get(f"/aftersales/{case['id']}")).json()
    assert case["status"] == "closed"


async def test_two_sweepers_at_once_fire_each_timer_once(shop):
    # Given five cases waiting for review
    cases = []
    for _ in range(5):
        order = await shop.order()
        cases.append(await create(shop, order, await shop.shopper(order), "return_refund", "no_reason_7d", [("A", 1)]))
    # When two nodes sweep at the same instant
    at = (T0 + timedelta(hours=49)).isoformat()
    cmd = [sys.executable, "-m", "shopdesk.cli", "timers", "run", "--now", at, "--merchant", shop.slug]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
             for _ in range(2)]
    fired = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        fired.append(int(out.strip().splitlines()[-1]))
    # Then each case was approved exactly once, by one of them
    assert sum(fired) == 5, fired
    for case in cases:
        case = (await shop.get(f"/aftersales/{case['id']}")).json()
        assert [e["action"] for e in case["events"]] == ["create", "auto_approve"]
