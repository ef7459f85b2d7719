"""Upload client of the RelayPACS gateway: API client, file discovery, hashing, upload engine.

No user interface here: ``relaypacs.cli.upload`` is the command line on top of it.
"""

from relaypacs.client.api import (
    ChunkReceipt,
    GatewayClient,
    RemoteFile,
    RemoteUpload,
    StartOutcome,
    StartResult,
)
from relaypacs.client.archive import ArchiveLimits, ExtractedMember, extract_zip
from relaypacs.client.discovery import (
    DiscoveredFile,
    Discovery,
    SkippedFile,
    SkipReason,
    discover,
    extraction_workspace,
)
from relaypacs.client.engine import (
    ExitCode,
    NullProgress,
    ProgressListener,
    RunSummary,
    StudyResult,
    StudyStatus,
    UploadOptions,
    prepare_studies,
    run_upload,
    upload_study,
)
from relaypacs.client.errors import (
    ApiError,
    AuthenticationError,
    ClientError,
    InputError,
    ServerUnreachableError,
    UnsafeArchiveError,
)
from relaypacs.client.hashing import HashCache, HashJob, hash_file, hash_files, study_hash
from relaypacs.client.manifest import FileProblem, StudyFile, StudyPlan, group_studies
from relaypacs.client.retry import RetryPolicy
from relaypacs.client.state import default_state_dir, ensure_state_dir

__all__ = [
    "ApiError",
    "ArchiveLimits",
    "AuthenticationError",
    "ChunkReceipt",
    "ClientError",
    "DiscoveredFile",
    "Discovery",
    "ExitCode",
    "ExtractedMember",
    "FileProblem",
    "GatewayClient",
    "HashCache",
    "HashJob",
    "InputError",
    "NullProgress",
    "ProgressListener",
    "RemoteFile",
    "RemoteUpload",
    "RetryPolicy",
    "RunSummary",
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
    "discover",
    "ensure_state_dir",
    "extract_zip",
    "extraction_workspace",
    "group_studies",
    "hash_file",
    "hash_files",
    "prepare_studies",
    "run_upload",
    "study_hash",
    "upload_study",
]
