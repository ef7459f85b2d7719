"""Where an accepted study stands with the PACS, as the gateway reports it (``--wait``).

After ``complete``, an upload goes ``queued`` -> ``forwarding`` -> ``delivered`` (the PACS
lists every instance) or ``failed`` (the PACS refused some instance for good); it stays
``validated``, with ``forwarding: null``, when the gateway has no PACS configured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from relaypacs.client.api import RemoteUpload
from relaypacs.client.manifest import FileProblem

__all__ = ["Delivery", "DeliveryStatus", "delivery_of", "describe_forward_error"]


class DeliveryStatus(StrEnum):
    WAITING = "waiting"  # queued or forwarding: not final
    DELIVERED = "delivered"  # the PACS confirmed every instance
    FAILED = "failed"  # the PACS refused some instance for good
    CANCELLED = "cancelled"  # forwarding cancelled on the gateway (or the upload is gone)
    NO_PACS = "no_pacs"  # the gateway has no PACS configured: the study stays there
    TIMED_OUT = "timed_out"  # still waiting when --wait-timeout ran out
    UNREACHABLE = "unreachable"  # the gateway could not be asked any more


# Final statuses that mean the study will not be in the PACS (exit code 5).
NOT_DELIVERED = frozenset({DeliveryStatus.FAILED, DeliveryStatus.CANCELLED})
# Final statuses that mean we stopped following it; the gateway goes on (exit code 3).
NOT_FOLLOWED = frozenset({DeliveryStatus.TIMED_OUT, DeliveryStatus.UNREACHABLE})


@dataclass(slots=True)
class Delivery:
    status: DeliveryStatus
    upload_status: str = ""
    target: str | None = None
    instances: int = 0
    sent: int = 0
    confirmed: int = 0
    failed: int = 0
    attempts: int = 0
    next_attempt_at: str | None = None
    last_error: str | None = None
    delivered_at: str | None = None
    # The refused instances: file name, the PACS's reason, what it means.
    failures: list[FileProblem] = field(default_factory=list)
    message: str | None = None

    @property
    def progress(self) -> tuple[int, int, str]:
        """What changes while the study is forwarded (to poll faster while it does)."""
        return (self.sent, self.confirmed + self.failed, self.upload_status)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "upload_status": self.upload_status,
            "target": self.target,
            "instances": self.instances,
            "sent": self.sent,
            "confirmed": self.confirmed,
            "failed": self.failed,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "delivered_at": self.delivered_at,
            "failures": [problem.as_dict() for problem in self.failures],
            "message": self.message,
        }


def delivery_of(upload: RemoteUpload) -> Delivery:
    """The delivery state of ``upload`` (``GET /uploads/{id}``)."""
    forwarding = upload.forwarding
    delivery = Delivery(DeliveryStatus.WAITING, upload_status=upload.status)
    if forwarding is not None:
        delivery.target = forwarding.target
        delivery.instances = forwarding.instances
        delivery.sent = forwarding.sent
        delivery.confirmed = forwarding.confirmed
        delivery.failed = forwarding.failed
        delivery.attempts = forwarding.attempts
        delivery.next_attempt_at = forwarding.next_attempt_at
        delivery.last_error = forwarding.last_error
        delivery.delivered_at = forwarding.delivered_at
    elif upload.instance_count is not None:
        delivery.instances = upload.instance_count
    status = upload.status
    if status == "delivered":
        delivery.status = DeliveryStatus.DELIVERED
    elif status == "failed":
        delivery.status = DeliveryStatus.FAILED
        delivery.failures = [
            FileProblem(f.name, *_code_and_meaning(f.forward_error))
            for f in upload.files
            if f.forward_status == "failed"
        ]
        delivery.message = (
            f"the PACS refused {delivery.failed or len(delivery.failures)} of "
            f"{delivery.instances} instances"
        )
    elif status == "cancelled" or (forwarding is not None and forwarding.status == "cancelled"):
        delivery.status = DeliveryStatus.CANCELLED
        delivery.message = "forwarding to the PACS was cancelled on the gateway"
    elif status == "expired":  # abandoned before complete: its chunks were deleted
        delivery.status = DeliveryStatus.CANCELLED
        delivery.message = "the upload expired on the gateway before it was complete"
    elif status == "rejected":  # not after validation; never wait for it
        delivery.status = DeliveryStatus.CANCELLED
        delivery.message = "the gateway rejected the study"
    elif status == "validated" and forwarding is None:
        delivery.status = DeliveryStatus.NO_PACS
        delivery.message = "the gateway has no PACS configured: the study is kept there"
    return delivery


# DICOM Storage failure reasons (PS3.4 B.2.3, PS3.7 C, PS3.18 10.5.3), then the gateway's own.
_STATUS = {
    "0110": "processing failure",
    "0111": "duplicate SOP instance",
    "0117": "invalid SOP instance",
    "0122": "SOP class not supported",
    "0124": "not authorized",
    "0211": "unrecognized operation",
    "0212": "mistyped argument",
    "0213": "resource limitation",
    "C122": "transfer syntax not supported",
}
_STATUS_RANGES = (
    ("A7", "out of resources"),
    ("A9", "data set does not match SOP class"),
    ("C", "cannot understand"),
)
_GATEWAY_CODES = {
    "timeout": "the PACS did not answer in time",
    "not_listed_by_qido": "sent, but the PACS does not list it",
}


def _code_and_meaning(forward_error: str | None) -> tuple[str, str]:
    """A file's ``forward_error`` as a code and a few words: the gateway's own refusals come as
    ``"content_mismatch: the PACS holds other bytes..."``, the PACS's as a bare code."""
    code, sep, text = (forward_error or "failed").partition(": ")
    if sep and code.replace("_", "").isalnum() and code.islower():
        return code, text
    return forward_error or "failed", describe_forward_error(forward_error)


def describe_forward_error(code: str | None) -> str:
    """A few words on a file's ``forward_error``: the PACS's FailureReason in hex (``A900``)
    or the gateway's own code (``http_409``, ``timeout``...)."""
    if not code:
        return "refused by the PACS"
    if code in _GATEWAY_CODES:
        return _GATEWAY_CODES[code]
    if code.startswith("http_") and code[5:].isdigit():
        return f"the PACS answered HTTP {code[5:]}"
    status = code.upper()
    if len(status) == 4 and all(c in "0123456789ABCDEF" for c in status):
        if status in _STATUS:
            return _STATUS[status]
        for prefix, meaning in _STATUS_RANGES:
            if status.startswith(prefix):
                return meaning
    return "refused by the PACS"
