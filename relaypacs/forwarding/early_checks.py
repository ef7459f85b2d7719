"""Content checks while a study uploads (pipelined relay, `content` verification by Orthanc's
MD5s, see verification.check_early): what each pass stored is read back from the PACS beside the
job's next pass, so that the check at the end asks only for the rest.

In memory, per process: a job that another process finishes checks everything, as before. At
most EARLY_CHECKED jobs are remembered. An optimisation only: what it does not find (not held
yet, other bytes, a failed request), the end checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict

import httpx

from relaypacs.forwarding.verification import check_early, checks_early
from relaypacs.pacs.dicomweb import DicomWebClient

logger = logging.getLogger(__name__)

EARLY_CHECKED = 64  # jobs whose early content checks are remembered

JobKey = tuple[uuid.UUID, str]  # (upload, target)


class EarlyChecks:
    """The early content checks of this process's jobs: what each found, and the one running
    per job (after the previous one: one at a time per job)."""

    def __init__(self, remembered: int = EARLY_CHECKED) -> None:
        self._remembered = remembered
        # Content found at the PACS as sent: (upload, target) -> file index -> MD5 sent.
        self._checked: OrderedDict[JobKey, dict[int, str]] = OrderedDict()
        # The check of each job's last pass, running beside its next pass.
        self._running: dict[JobKey, asyncio.Task[None]] = {}

    def start(
        self,
        key: JobKey,
        client: DicomWebClient,
        study_uid: str,
        stored: dict[int, tuple[str, str]],
    ) -> None:
        """Check the content of what a pass stored (`stored`: file index -> SOP Instance UID
        and MD5 sent) as the end would, beside the job's next pass."""
        if not stored or not checks_early(client):
            return
        previous = self._running.get(key)
        task = asyncio.create_task(self._check(key, client, study_uid, stored, previous))
        self._running[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._running.get(key) is done:
                del self._running[key]

        task.add_done_callback(forget)

    async def known(self, key: JobKey) -> dict[int, str] | None:
        """What the early checks of this job found the PACS to hold as sent (file index -> MD5
        sent), once the last one (if still running) has finished."""
        running = self._running.get(key)
        if running is not None:  # the last pass's check, still running: its answers count
            with contextlib.suppress(Exception):
                await asyncio.shield(running)
        return self._checked.get(key)

    def forget(self, key: JobKey) -> None:
        """The job is settled or cancelled: its findings are of no more use."""
        self._checked.pop(key, None)

    async def stop(self) -> None:
        running = list(self._running.values())
        self._running.clear()
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _check(
        self,
        key: JobKey,
        client: DicomWebClient,
        study_uid: str,
        stored: dict[int, tuple[str, str]],
        previous: asyncio.Task[None] | None,
    ) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        held: dict[int, str] = {}
        for attempt in range(2):  # once more on a connection the PACS had closed meanwhile
            try:
                held = await check_early(client, study_uid, stored)
                break
            except httpx.TransportError as exc:
                if attempt:
                    logger.info(
                        "early content check failed (left to the end): %s", type(exc).__name__
                    )
                    return
            except httpx.HTTPError as exc:
                logger.info("early content check failed (left to the end): %s", type(exc).__name__)
                return
        self._checked.setdefault(key, {}).update(held)
        self._checked.move_to_end(key)
        while len(self._checked) > self._remembered:
            self._checked.popitem(last=False)
