"""The hub of live notices in one process: fan-out by user, a closed stream ends at once and is
released, a stream that does not read is ended (it reconnects and is replayed)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

from relaypacs.notifications.live import LiveNotice, NoticeHub, events


def _notice(user_id: uuid.UUID) -> LiveNotice:
    return LiveNotice(uuid.uuid4(), user_id, "report_ready", None, {}, dt.datetime.now(dt.UTC))


async def _collect(hub: NoticeHub, user_id: uuid.UUID, out: list[str]) -> None:
    subscription = hub.open(user_id)
    try:
        async for chunk in events(
            subscription, [], heartbeat=60, lifetime=60, render=lambda n: f"{n.id}"
        ):
            out.append(chunk)
    finally:
        hub.release(subscription)


class TestHub:
    async def test_fan_out_by_user_and_a_closed_stream_ends_and_is_released(self) -> None:
        hub = NoticeHub()
        await hub.start()
        mine, theirs = uuid.uuid4(), uuid.uuid4()
        got: list[str] = []
        other: list[str] = []
        task = asyncio.create_task(_collect(hub, mine, got))
        task_other = asyncio.create_task(_collect(hub, theirs, other))
        await asyncio.sleep(0.05)
        assert hub.open_streams == 2
        notice = _notice(mine)
        hub.committed([notice])
        await asyncio.sleep(0.05)
        assert got == ["retry: 3000\n\n", str(notice.id)]
        assert other == ["retry: 3000\n\n"]
        for subscription in list(hub._streams[mine]):
            subscription.close()
        await asyncio.wait_for(task, 2)  # ended at once, not after its heartbeat
        assert hub.open_streams == 1
        task_other.cancel()
        await hub.stop()

    async def test_a_stream_that_does_not_read_is_ended(self) -> None:
        hub = NoticeHub()
        await hub.start()
        user = uuid.uuid4()
        subscription = hub.open(user)
        hub.committed([_notice(user) for _ in range(300)])  # more than its queue holds
        await asyncio.sleep(0.05)
        assert subscription.overflowed
        chunks = [c async for c in events(subscription, [], heartbeat=60, lifetime=60, render=str)]
        assert chunks == ["retry: 3000\n\n"]  # ends: the client reconnects with Last-Event-ID
        hub.release(subscription)
        await hub.stop()
