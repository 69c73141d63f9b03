"""API input for tickets, calendars and SLA policies."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Priority = Literal["urgent", "high", "normal", "low"]
Channel = Literal["api", "web", "email", "phone", "wechat", "chat"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerRef(Strict):
    external_id: str = Field(min_length=1, max_length=64)
    name: str | None = Field(default=None, max_length=100)
    email: str | None = Field(default=None, max_length=255)
    phone: str | None = Field(default=None, max_length=32)


class TicketIn(Strict):
    subject: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=20_000)
    customer: CustomerRef | None = None
    category: str = Field(default="", max_length=64)
    priority: Priority = "normal"
    channel: Channel = "api"
    order_id: str | None = Field(default=None, max_length=32)
    aftersales_id: str | None = Field(default=None, max_length=32)
    tags: list[str] = Field(default=[], max_length=20)
    # Additions to the contract.
    store: str | None = Field(default=None, max_length=63)  # the store's code (SLA policies may match on it)
    custom_fields: dict[str, str | int | float | bool | None] = {}
    parent_id: str | None = Field(default=None, max_length=32)
    assignee_id: str | None = Field(default=None, max_length=32)
    team: str = Field(default="", max_length=64)
    requester_email: str | None = Field(default=None, max_length=255)
    requester_name: str = Field(default="", max_length=100)


class TicketPatch(Strict):
    status: str | None = Field(default=None, max_length=32)
    priority: Priority | None = None
    category: str | None = Field(default=None, max_length=64)
    assignee_id: str | None = Field(default=None, max_length=32)
    tags: list[str] | None = Field(default=None, max_length=20)
    add_tags: list[str] | None = Field(default=None, max_length=20)  # kept with the ticket's own (bulk changes)
    custom_fields: dict[str, str | int | float | bool | None] | None = None
    team: str | None = Field(default=None, max_length=64)
    watchers: list[str] | None = Field(default=None, max_length=50)
    expected_version: int | None = None


class ReplyIn(Strict):
    body: str = Field(min_length=1, max_length=20_000)
    public: bool = True
    attachment_ids: list[str] = Field(default=[], max_length=10)


class MergeIn(Strict):
    into: str = Field(min_length=1, max_length=32)


class SplitIn(Strict):
    reply_id: str = Field(min_length=1, max_length=32)


class RatingIn(Strict):
    score: int = Field(ge=1, le=5)
    comment: str = Field(default="", max_length=2000)
    answers: dict[str, str | int] = Field(default={}, max_length=20)  # the merchant's survey questions


class CalendarIn(Strict):
    time_zone: str = Field(min_length=1, max_length=64)
    hours: dict[str, list[list[str]]]
    holidays: list[str] = Field(default=[], max_length=400)
    workdays: list[str] = Field(default=[], max_length=400)


class PolicyMatch(Strict):
    priority: list[Priority] = []
    category: list[str] = []
    store: list[str] = []


class SlaPolicyIn(Strict):
    calendar: str | None = Field(default=None, max_length=64)
    match: PolicyMatch = PolicyMatch()
    first_response_minutes: int | None = Field(default=None, ge=1, le=525_600)
    next_response_minutes: int | None = Field(default=None, ge=1, le=525_600)
    resolution_minutes: int | None = Field(default=None, ge=1, le=525_600)
    position: int = Field(default=0, ge=0, le=10_000)


class TicketSettingsIn(Strict):
    statuses: list[dict] | None = Field(default=None, max_length=50)
    categories: list[str] | None = Field(default=None, max_length=200)
    assignment: dict | None = None
    followup: dict | None = None  # {"revisit_after_hours": 72, "priorities": ["high", "urgent"], "note": "…"}
    survey: dict | None = None  # {"scale": 5, "questions": [{"key": "speed", "label": "处理速度"}]}


class RuleIn(Strict):
    kind: Literal["create", "update", "time", "macro"]
    conditions: list[dict] = Field(default=[], max_length=20)
    actions: list[dict] = Field(min_length=1, max_length=20)
    active: bool = True
    position: int = Field(default=0, ge=0, le=10_000)


class TaskDoneIn(Strict):
    outcome: str = Field(default="", max_length=2000)
    status: Literal["done", "cancelled"] = "done"


class FromChatIn(Strict):
    subject: str = Field(default="", max_length=200)
    priority: Priority = "normal"
    category: str = Field(default="", max_length=64)


class InboxViewIn(Strict):
    name: str = Field(min_length=1, max_length=64)
    filters: dict = {}
    sort: str = "updated_desc"
    shared: bool = False


class BulkIn(Strict):
    ids: list[str] = Field(min_length=1, max_length=100)
    patch: TicketPatch
