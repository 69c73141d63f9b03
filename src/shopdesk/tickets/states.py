"""Ticket statuses: five built-in ones, merchant-defined ones grouped under them, and the moves allowed.

Pure: no I/O. A merchant's statuses live in its settings (`tickets.statuses`); every status
belongs to one of the five groups, and rules, SLA and reports only ever look at the group.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from shopdesk.core.errors import IllegalTransition, ValidationFailed

GROUPS = ("new", "open", "pending", "solved", "closed")
PRIORITIES = ("low", "normal", "high", "urgent")
CHANNELS = ("api", "web", "email", "phone", "wechat", "chat")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class Status:
    name: str
    group: str
    label_zh: str
    label_en: str


BUILT_IN = (
    Status("new", "new", "新建", "New"),
    Status("open", "open", "处理中", "Open"),
    Status("pending", "pending", "待客户回复", "Pending"),
    Status("solved", "solved", "已解决", "Solved"),
    Status("closed", "closed", "已关闭", "Closed"),
)


def statuses(settings: dict | None) -> dict[str, Status]:
    """The merchant's statuses by name: the built-in ones plus its own."""
    found = {s.name: s for s in BUILT_IN}
    for item in (settings or {}).get("statuses", []):
        found[item["name"]] = Status(item["name"], item["group"], item.get("label_zh") or item["name"],
                                     item.get("label_en") or item["name"])
    return found


def check_custom_statuses(items: list[dict]) -> list[dict]:
    """Validate merchant-defined statuses (field-named errors) and return them normalised."""
    seen: set[str] = set()
    out = []
    for i, item in enumerate(items):
        name = item.get("name", "")
        if not isinstance(name, str) or not NAME.match(name):
            raise ValidationFailed("a lower-case name of letters, digits and _ (at most 32)",
                                   field=f"statuses[{i}].name")
        if name in seen or name in {s.name for s in BUILT_IN}:
            raise ValidationFailed(f"status '{name}' exists already", field=f"statuses[{i}].name")
        if item.get("group") not in ("open", "pending", "solved"):
            # new and closed are single states of the ticket's life; custom ones sit in between.
            raise ValidationFailed("group must be open, pending or solved", field=f"statuses[{i}].group")
        seen.add(name)
        out.append({"name": name, "group": item["group"], "label_zh": str(item.get("label_zh") or name)[:32],
                    "label_en": str(item.get("label_en") or name)[:32]})
    return out


def check_move(current_group: str, target: Status, *, merged: bool) -> None:
    """Refuse a status change the ticket's life does not allow."""
    if merged:
        raise IllegalTransition("a merged ticket is closed for good; work on the ticket it was merged into")
    if current_group == "closed":
        raise IllegalTransition("a closed ticket does not change; open a follow-up ticket instead")
    if target.group == "new" and current_group != "new":
        raise IllegalTransition("a ticket cannot go back to new")


def raised(priority: str) -> str:
    """One priority level up (催单), urgent staying urgent."""
    i = PRIORITIES.index(priority)
    return PRIORITIES[min(i + 1, len(PRIORITIES) - 1)]
