"""The errors of the upload domain: each carries its HTTP status and machine-readable code."""

from __future__ import annotations

from relaypacs.errors import Conflict, GatewayError, NotFound


class UploadNotFound(NotFound):
    code = "upload_not_found"
    message = "No such upload."


class StudyAlreadyDelivered(Conflict):
    code = "study_already_delivered"
    message = "This study was already uploaded and accepted."


class ChunkOutOfRange(NotFound):
    code = "chunk_out_of_range"
    message = "That file or chunk index is outside the upload's manifest."


class BodyStalled(GatewayError):
    status_code = 408
    code = "body_stalled"
    message = "The chunk's body stopped arriving; send the chunk again."


class ChunkConflict(Conflict):
    code = "chunk_conflict"
    message = "That chunk is already stored with different bytes."


class UploadNotWritable(Conflict):
    code = "upload_not_writable"
    message = "This upload no longer takes chunks."


class UploadNotCancellable(Conflict):
    code = "upload_not_cancellable"
    message = "This upload was accepted and can no longer be cancelled."


class UploadIncomplete(Conflict):
    code = "upload_incomplete"
    message = "Some chunks are still missing."


class UploadRejected(GatewayError):
    status_code = 422
    code = "upload_rejected"
    message = "Some files of the upload failed verification."


class InvalidManifest(GatewayError):
    status_code = 422
    code = "invalid_request"


class ContentMd5Required(GatewayError):
    """Neither checksum header: the code predates Content-Digest and stays for clients."""

    code = "content_md5_required"
    message = (
        "A chunk needs its checksum: a Content-Digest header with sha-256 "
        "(`sha-256=:<base64>:`, RFC 9530) or a Content-MD5 header (base64 of its MD5)."
    )


class ContentMd5Mismatch(GatewayError):
    code = "content_md5_mismatch"
    message = "The chunk's bytes do not match its Content-MD5; nothing was kept."


class ContentDigestInvalid(GatewayError):
    code = "content_digest_invalid"
    message = "Content-Digest must be `sha-256=:<base64 of the 32-byte SHA-256>:` (RFC 9530)."


class ContentDigestMismatch(GatewayError):
    code = "content_digest_mismatch"
    message = "The chunk's bytes do not match its Content-Digest (sha-256); nothing was kept."


class ChunkSizeMismatch(GatewayError):
    code = "chunk_size_mismatch"


class ChunkTooLarge(GatewayError):
    status_code = 413
    code = "chunk_too_large"


class InvalidChunkBatch(GatewayError):
    code = "invalid_chunk_batch"
    message = "The chunk batch's body is not well formed (docs/api.md, Uploads: chunk batches)."


class ChunkBatchTooLarge(GatewayError):
    status_code = 413
    code = "chunk_batch_too_large"


class ContentLengthRequired(GatewayError):
    status_code = 411
    code = "content_length_required"
    message = "The Content-Length header is required."


class UploadNotRetryable(Conflict):
    code = "upload_not_retryable"
    message = "Only uploads that failed, or are queued or being forwarded, can be retried."
