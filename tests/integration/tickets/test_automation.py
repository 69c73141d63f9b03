"""Automation: triggers, time rules, macros; follow-up tasks (回访) and the survey's scale."""
from __future__ import annotations

from datetime import timedelta

from shopdesk.tickets.automation import sweep_time_rules
from tests.integration.tickets.test_sla import merchant_of, relogin
from tests.integration.tickets.test_tickets_api import emails_to, new_ticket


async def put_rule(shop, name: str, body: dict, expect: int = 200) -> dict:
    r = await shop.client.put(f"/api/v1/settings/ticket-rules/{name}", json=body, headers=shop.h(shop.admin_token))
    assert r.status_code == expect, r.text
    return r.json()


async def test_create_trigger_sets_fields_assigns_and_answers(shop):
    me = (await shop.get("/auth/me", shop.agent_token)).json()
    await put_rule(shop, "logistics", {"kind": "create", "conditions": [
        {"field": "category", "op": "is", "value": "物流"}, {"field": "subject", "op": "contains", "value": "快递"}],
        "actions": [{"type": "set", "field": "priority", "value": "high"}, {"type": "add_tags", "tags": ["物流"]},
                    {"type": "assign", "staff_id": me["id"]},
                    {"type": "reply", "body": "您好，工单 {{number}} 已收到，物流组会尽快处理。"}]})
    t = await new_ticket(shop, category="物流", subject="快递三天没动")
    assert (t["priority"], t["tags"], t["assignee_id"]) == ("high", ["物流"], me["id"])
    [reply] = t["replies"]
    assert reply["author"]["type"] == "system" and t["number"] in reply["body"]
    # The automatic reply is no first response, and the ticket is still new
    assert t["first_response_at"] is None and t["status_group"] == "new"
    assert any(e["action"] == "rule" and e["data"]["name"] == "logistics" for e in t["events"])
    # A ticket the conditions do not match is left alone
    other = await new_ticket(shop, category="质量", subject="快递")
    assert (other["priority"], other["tags"], other["replies"]) == ("normal", [], [])


async def test_update_trigger_notifies_and_does_not_loop(shop):
    order = await shop.order(email=f"trig-{shop.slug}@example.com")
    shopper = await shop.shopper(order)
    await put_rule(shop, "urgent-tag", {"kind": "update", "conditions": [
        {"field": "priority", "op": "is", "value": "urgent"}],
        "actions": [{"type": "add_tags", "tags": ["加急"]},
                    {"type": "notify", "to": f"boss-{shop.slug}@example.com", "subject": "加急 {{number}}", "body": "请关注"}]})
    t = await new_ticket(shop, shopper, channel="web")
    r = await shop.client.patch(f"/api/v1/tickets/{t['id']}", json={"priority": "urgent"},
                                headers=shop.h(shop.agent_token))
    assert r.json()["tags"] == ["加急"]
    assert len(await emails_to(f"boss-{shop.slug}@example.com")) == 1  # the rule's own change fired nothing again


async def test_time_rules_remind_then_close_a_pending_ticket(shop, frozen_clock):
    order = await shop.order(email=f"wait-{shop.slug}@example.com")
    shopper = await shop.shopper(order)
    await put_rule(shop, "remind-3d", {"kind": "time", "conditions": [
        {"field": "status_group", "op": "is", "value": "pending"}, {"field": "hours_in_status", "op": "gte", "value": 72}],
        "actions": [{"type": "reply", "body": "您好，请问问题解决了吗？超过 7 天未回复工单将自动关闭。"}]})
    await put_rule(shop, "close-7d", {"kind": "time", "position": 1, "conditions": [
        {"field": "status_group", "op": "is", "value": "pending"}, {"field": "hours_in_status", "op": "gte", "value": 168}],
        "actions": [{"type": "set", "field": "status", "value": "closed"}]})
    t = await new_ticket(shop, shopper, channel="web")
    r = await shop.client.patch(f"/api/v1/tickets/{t['id']}", json={"status": "pending"},
                                headers=shop.h(shop.agent_token))
    assert r.json()["status_group"] == "pending"
    frozen_clock.advance(timedelta(hours=71))
    assert await sweep_time_rules(merchant_id=await merchant_of(shop)) == 0
    frozen_clock.advance(timedelta(hours=2))
    assert await sweep_time_rules(merchant_id=await merchant_of(shop)) == 1
    assert await sweep_time_rules(merchant_id=await merchant_of(shop)) == 0  # once per status
    assert any("自动关闭" in m["body"] for m in await emails_to(f"wait-{shop.slug}@example.com"))
    frozen_clock.advance(timedelta(hours=100))
    assert await sweep_time_rules(merchant_id=await merchant_of(shop)) == 1
    r = await shop.get(f"/tickets/{t['id']}")
    assert r.json()["status_group"] == "closed"
    assert [x["author"]["type"] for x in r.json()["replies"]] == ["system"]


async def test_macro_is_applied_in_the_agents_name(shop):
    await put_rule(shop, "ask-photo", {"kind": "macro", "actions": [
        {"type": "reply", "body": "麻烦您拍一张商品问题的照片发给我们。"}, {"type": "set", "field": "status", "value": "pending"}]})
    t = await new_ticket(shop)
    r = await shop.post(f"/tickets/{t['id']}/macros/ask-photo", None, shop.agent_token)
    assert r.status_code == 200, r.text
    after = r.json()
    assert after["status_group"] == "pending" and after["replies"][0]["author"]["type"] == "staff"
    assert after["first_response_at"] is not None
    r = await shop.post(f"/tickets/{t['id']}/macros/nope", None, shop.agent_token)
    assert r.status_code == 404
    r = await shop.get("/settings/ticket-rules", params={"kind": "macro"})
    assert [m["name"] for m in r.json()["items"]] == ["ask-photo"]


async def test_bad_rules_name_the_field_and_are_not_saved(shop):
    cases = [({"kind": "sometimes", "actions": [{"type": "add_tags", "tags": ["x"]}]}, "kind"),
             ({"kind": "create", "conditions": [{"field": "mood", "op": "is", "value": 1}],
               "actions": [{"type": "add_tags", "tags": ["x"]}]}, "conditions[0].field"),
             ({"kind": "create", "actions": [{"type": "set", "field": "priority", "value": "asap"}]}, "actions[0].value"),
             ({"kind": "create", "actions": [{"type": "assign", "staff_id": "nobody"}]}, "actions[0].staff_id"),
             ({"kind": "create", "actions": [{"type": "set", "field": "status", "value": "zzz"}]}, "actions[0].value"),
             ({"kind": "time", "conditions": [{"field": "priority", "op": "is", "value": "low"}],
               "actions": [{"type": "add_tags", "tags": ["x"]}]}, "conditions")]
    for body, field in cases:
        r = await shop.client.put("/api/v1/settings/ticket-rules/bad", json=body, headers=shop.h(shop.admin_token))
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)
    assert (await shop.get("/settings/ticket-rules")).json()["items"] == []


async def test_revisit_task_after_solve_and_the_survey_scale(shop, frozen_clock):
    order = await shop.order(email=f"revisit-{shop.slug}@example.com")
    shopper = await shop.shopper(order)
    r = await shop.client.put("/api/v1/settings/tickets", json={
        "followup": {"revisit_after_hours": 48}, "survey": {"scale": 3, "questions": [{"key": "speed", "label": "速度"}]}},
        headers=shop.h(shop.admin_token))
    assert r.status_code == 200, r.text
    t = await new_ticket(shop, shopper, channel="web")
    await shop.client.patch(f"/api/v1/tickets/{t['id']}", json={"status": "solved"}, headers=shop.h(shop.agent_token))
    r = await shop.get("/ticket-tasks", shop.agent_token)
    [task] = [x for x in r.json()["items"] if x["ticket_id"] == t["id"]]
    assert task["kind"] == "revisit" and task["status"] == "open"
    assert task["due_at"] == "2026-11-08T12:00:00Z"  # 48 h after the solve (the suite's clock starts 2026-11-06 12:00)
    r = await shop.post(f"/ticket-tasks/{task['id']}/done", {"outcome": "客户确认已解决"}, shop.agent_token)
    assert r.status_code == 200 and r.json()["status"] == "done"
    r = await shop.post(f"/ticket-tasks/{task['id']}/done", {"outcome": "again"}, shop.agent_token)
    assert r.status_code == 409
    # The merchant's 3-point scale bounds the score; answers must be its questions
    r = await shop.post(f"/tickets/{t['id']}/rating", {"score": 4}, shopper)
    assert r.status_code == 422 and r.json()["field"] == "score"
    r = await shop.post(f"/tickets/{t['id']}/rating", {"score": 3, "answers": {"mood": 1}}, shopper)
    assert r.status_code == 422 and r.json()["field"] == "answers.mood"
    r = await shop.post(f"/tickets/{t['id']}/rating", {"score": 3, "answers": {"speed": 3}}, shopper)
    assert r.status_code == 200 and r.json()["rating"]["score"] == 3
    await relogin(shop)
