"""Following accepted studies until the PACS has confirmed (or refused) every instance: the
`--wait` of `relaypacs upload`. The gateway forwards on its own; this only asks, politely."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from relaypacs.client.api import (
    GatewayClient,
)
from relaypacs.client.delivery import (
    Delivery,
    DeliveryStatus,
    delivery_of,
)
from relaypacs.client.errors import (
    ApiError,
    AuthenticationError,
    ClientError,
    ServerUnreachableError,
    most_serious,
)
from relaypacs.client.results import (
    NullProgress,
    ProgressListener,
    StudyResult,
    UploadOptions,
)

# -- waiting for the PACS (--wait) -------------------------------------------------------

# Past --wait-timeout, a poll in progress (with its retries) gets this long to answer.
_LAST_POLL_GRACE = 30.0
# A poll of a big study is not free for the gateway (~0.05 ms per file here): the next one waits
# at least this many times as long as the last one took (up to _MAX_POLL_FLOOR seconds).
_POLL_DUTY_FACTOR = 20.0
_MAX_POLL_FLOOR = 30.0


async def wait_for_delivery(
    client: GatewayClient,
    results: Sequence[StudyResult],
    *,
    options: UploadOptions | None = None,
    progress: ProgressListener | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Follow every accepted study (validated, whole or partly, or already delivered) of
    ``results`` until the PACS has it, refused some instance, or ``options.wait_timeout`` ran
    out; sets each one's ``delivery``. The studies are followed together, each polled every
    ``wait_poll_min`` seconds while it moves, backing off to ``wait_poll_max`` while it does
    not, and never more often than 1/20 of the time its answers take (a study of thousands of
    files).

    Raises AuthenticationError; a gateway that cannot be reached any more makes the studies
    UNREACHABLE (the gateway goes on forwarding them meanwhile).
    """
    options = options or UploadOptions()
    progress = progress or NullProgress()
    followed = [r for r in results if r.upload_id is not None and r.accepted]
    if not followed:
        return
    progress.waiting(followed)
    deadline = clock() + options.wait_timeout
    try:
        async with asyncio.TaskGroup() as group:
            for result in followed:
                group.create_task(
                    _follow(client, result, deadline, options, progress, sleep, clock)
                )
    except BaseExceptionGroup as errors:
        raise most_serious(errors, (AuthenticationError, ServerUnreachableError)) from None


async def _follow(
    client: GatewayClient,
    result: StudyResult,
    deadline: float,
    options: UploadOptions,
    progress: ProgressListener,
    sleep: Callable[[float], Awaitable[None]],
    clock: Callable[[], float],
) -> None:
    assert result.upload_id is not None
    delay = options.wait_poll_min
    last: tuple[int, int, str] | None = None
    while True:
        asked = clock()
        delivery = await _poll(client, result, deadline, clock)
        floor = min(_MAX_POLL_FLOOR, (clock() - asked) * _POLL_DUTY_FACTOR)
        result.delivery = delivery
        if delivery.status is DeliveryStatus.WAITING and clock() >= deadline:
            delivery.status = DeliveryStatus.TIMED_OUT
            delivery.message = (
                f"still {delivery.upload_status or 'queued'} after {options.wait_timeout:g} s"
                " of waiting; the gateway goes on forwarding it"
            )
        if delivery.status is not DeliveryStatus.WAITING:
            progress.delivery_finished(result)
            return
        progress.delivery_progress(result)
        moved = delivery.progress != last
        last = delivery.progress
        delay = options.wait_poll_min if moved else min(delay * 1.5, options.wait_poll_max)
        await sleep(max(0.0, min(max(delay, floor), deadline - clock())))


async def _poll(
    client: GatewayClient, result: StudyResult, deadline: float, clock: Callable[[], float]
) -> Delivery:
    """The study's delivery now; UNREACHABLE (or CANCELLED) instead of an exception."""
    assert result.upload_id is not None
    previous = result.delivery
    try:
        async with asyncio.timeout(max(0.0, deadline - clock()) + _LAST_POLL_GRACE):
            # Poll the light view; the file list only once the PACS refused something, for
            # the names and reasons.
            upload = await client.get_upload(result.upload_id, files=False)
            if upload.status == "failed":
                upload = await client.get_upload(result.upload_id)
    except AuthenticationError:
        raise
    except ApiError as exc:
        if exc.code == "upload_not_found":
            gone = "the upload is gone from the gateway"
            return _stopped(previous, DeliveryStatus.CANCELLED, gone)
        return _stopped(previous, DeliveryStatus.UNREACHABLE, f"{exc.message} ({exc.code})")
    except (ClientError, TimeoutError) as exc:
        message = str(exc) or "the gateway did not answer"
        return _stopped(
            previous, DeliveryStatus.UNREACHABLE, f"{message}; the gateway goes on forwarding it"
        )
    if upload.instance_count is not None:
        result.instances = upload.instance_count
    return delivery_of(upload)


def _stopped(previous: Delivery | None, status: DeliveryStatus, message: str) -> Delivery:
    """The last known delivery state with a final ``status``."""
    delivery = previous if previous is not None else Delivery(status)
    delivery.status = status
    delivery.message = message
    return delivery


# -- a whole run --------------------------------------------------------------------------
