"""The automatic assignment rule: whether a report that opens is assigned at once, and to whom
(round robin among the active radiologists, optionally only those who read the study's
modality). An administrator sets it (stored in `assignment_rule`, audited); until then
RELAYPACS_REPORT_AUTO_ASSIGN decides: round robin by modality when true, off otherwise."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.models import Actor
from relaypacs.audit.service import record_event
from relaypacs.auth import repository as users
from relaypacs.auth.models import Role
from relaypacs.reports import repository
from relaypacs.reports.schemas import AssignmentRuleRead


@dataclass(frozen=True)
class Rule:
    enabled: bool
    by_modality: bool


async def effective_rule(session: AsyncSession, *, configured: bool) -> Rule:
    """The rule in force: the administrator's, else the configuration's (`configured`:
    RELAYPACS_REPORT_AUTO_ASSIGN)."""
    stored = await repository.assignment_rule(session)
    if stored is None:
        return Rule(enabled=configured, by_modality=True)
    return Rule(enabled=stored.enabled, by_modality=stored.by_modality)


async def next_radiologist(
    session: AsyncSession, modality: str | None, *, by_modality: bool = True
) -> uuid.UUID | None:
    """Round robin: among the active radiologists (`by_modality`: those registered for the
    modality, all active radiologists where none is), the one assigned least recently (never
    first)."""
    active = [
        u.id for u in await users.users_with_role(session, Role.RADIOLOGIST, active_only=True)
    ]
    if not active:
        return None
    candidates = active
    if by_modality and modality:
        readers = set(await repository.readers_of(session, modality))
        candidates = [u for u in active if u in readers] or active
    last = await repository.last_assigned(session, candidates)
    never = dt.datetime.min.replace(tzinfo=dt.UTC)
    return min(candidates, key=lambda u: (last[u] or never, str(u)))


async def show_rule(session: AsyncSession, *, configured: bool) -> AssignmentRuleRead:
    stored = await repository.assignment_rule(session)
    active = await users.users_with_role(session, Role.RADIOLOGIST, active_only=True)
    if stored is None:
        return AssignmentRuleRead(
            enabled=configured,
            by_modality=True,
            source="configuration",
            updated_at=None,
            updated_by=None,
            active_radiologists=len(active),
        )
    by = await users.get_user(session, stored.updated_by) if stored.updated_by else None
    return AssignmentRuleRead(
        enabled=stored.enabled,
        by_modality=stored.by_modality,
        source="administrator",
        updated_at=stored.updated_at,
        updated_by=by.username if by else None,
        active_radiologists=len(active),
    )


async def set_rule(
    session: AsyncSession,
    *,
    enabled: bool,
    by_modality: bool,
    actor: Actor,
    configured: bool,
) -> AssignmentRuleRead:
    """An administrator turns the rule on or off and chooses among whom it turns (audited:
    `assignment.rule`, with the rule before and after). It applies to the reports that open
    from now on; those waiting stay for assignment by hand."""
    before = await effective_rule(session, configured=configured)
    await repository.save_assignment_rule(
        session, enabled=enabled, by_modality=by_modality, by=actor.id
    )
    await record_event(
        session,
        actor=actor,
        action="assignment.rule",
        object_type="assignment_rule",
        details={
            "enabled": enabled,
            "by_modality": by_modality,
            "before": {"enabled": before.enabled, "by_modality": before.by_modality},
        },
    )
    return await show_rule(session, configured=configured)
