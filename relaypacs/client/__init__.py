"""Upload client of the RelayPACS gateway: API client, file discovery, hashing, upload engine.

No user interface here: ``relaypacs.cli.upload`` is the command line on top of it.

The names below are imported on first use (PEP 562): ``relaypacs upload --help`` and the
light modules (``relaypacs.client.errors``) do not pay for httpx, SQLite and the DICOM walker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relaypacs.client.api import (
        ChunkReceipt,
        CodePrompt,
        GatewayClient,
        RemoteFile,
        RemoteForwarding,
        RemoteUpload,
        StartOutcome,
        StartResult,
    )
    from relaypacs.client.archive import (
        ArchiveLimits,
        ExtractedMember,
        extract_zip,
    )
    from relaypacs.client.delivery import (
        Delivery,
        DeliveryStatus,
        describe_forward_error,
    )
    from relaypacs.client.discovery import (
        DiscoveredFile,
        Discovery,
        SkippedFile,
        SkipReason,
        discover,
        extraction_workspace,
    )
    from relaypacs.client.engine import (
        NullProgress,
        ProgressListener,
        RunSummary,
        StudyResult,
        StudyStatus,
        UploadOptions,
        run_upload,
        upload_study,
        wait_for_delivery,
    )
    from relaypacs.client.errors import (
        ApiError,
        AuthenticationError,
        ClientError,
        EnrolmentRequiredError,
        ExitCode,
        InputError,
        RateLimitedError,
        SecondFactorError,
        ServerUnreachableError,
        UnsafeArchiveError,
    )
    from relaypacs.client.hashing import (
        HashCache,
        HashJob,
        hash_file,
        hash_files,
        study_hash,
    )
    from relaypacs.client.manifest import (
        FileProblem,
        StudyFile,
        StudyPlan,
        group_studies,
    )
    from relaypacs.client.retry import (
        RetryPolicy,
    )
    from relaypacs.client.state import (
        default_state_dir,
        ensure_state_dir,
    )

_WHERE: dict[str, str] = {
    "Delivery": "delivery",
    "DeliveryStatus": "delivery",
    "RemoteForwarding": "api",
    "describe_forward_error": "delivery",
    "wait_for_delivery": "engine",
    "ApiError": "errors",
    "ArchiveLimits": "archive",
    "AuthenticationError": "errors",
    "ChunkReceipt": "api",
    "ClientError": "errors",
    "CodePrompt": "api",
    "EnrolmentRequiredError": "errors",
    "RateLimitedError": "errors",
    "SecondFactorError": "errors",
    "DiscoveredFile": "discovery",
    "Discovery": "discovery",
    "ExitCode": "errors",
    "ExtractedMember": "archive",
    "FileProblem": "manifest",
    "GatewayClient": "api",
    "HashCache": "hashing",
    "HashJob": "hashing",
    "InputError": "errors",
    "NullProgress": "engine",
    "ProgressListener": "engine",
    "RemoteFile": "api",
    "RemoteUpload": "api",
    "RetryPolicy": "retry",
    "RunSummary": "engine",
    "ServerUnreachableError": "errors",
    "SkipReason": "discovery",
    "SkippedFile": "discovery",
    "StartOutcome": "api",
    "StartResult": "api",
    "StudyFile": "manifest",
    "StudyPlan": "manifest",
    "StudyResult": "engine",
    "StudyStatus": "engine",
    "UnsafeArchiveError": "errors",
    "UploadOptions": "engine",
    "default_state_dir": "state",
    "discover": "discovery",
    "ensure_state_dir": "state",
    "extract_zip": "archive",
    "extraction_workspace": "discovery",
    "group_studies": "manifest",
    "hash_file": "hashing",
    "hash_files": "hashing",
    "run_upload": "engine",
    "study_hash": "hashing",
    "upload_study": "engine",
}

__all__ = [
    "ApiError",
    "ArchiveLimits",
    "AuthenticationError",
    "ChunkReceipt",
    "ClientError",
    "CodePrompt",
    "Delivery",
    "DeliveryStatus",
    "DiscoveredFile",
    "Discovery",
    "EnrolmentRequiredError",
    "ExitCode",
    "ExtractedMember",
    "FileProblem",
    "GatewayClient",
    "HashCache",
    "HashJob",
    "InputError",
    "NullProgress",
    "ProgressListener",
    "RateLimitedError",
    "RemoteFile",
    "RemoteForwarding",
    "RemoteUpload",
    "RetryPolicy",
    "RunSummary",
    "SecondFactorError",
    "ServerUnreachableError",
    "SkipReason",
    "SkippedFile",
    "StartOutcome",
    "StartResult",
    "StudyFile",
    "StudyPlan",
    "StudyResult",
    "StudyStatus",
    "UnsafeArchiveError",
    "UploadOptions",
    "default_state_dir",
    "describe_forward_error",
    "discover",
    "ensure_state_dir",
    "extract_zip",
    "extraction_workspace",
    "group_studies",
    "hash_file",
    "hash_files",
    "run_upload",
    "study_hash",
    "upload_study",
    "wait_for_delivery",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
