"""The chunk PUT's request headers, parsed for the router: its declared checksums (Content-MD5,
RFC 9530 Content-Digest) and its Content-Length."""

from __future__ import annotations

import base64
import binascii

from relaypacs.uploads.chunks import ChunkDigests
from relaypacs.uploads.errors import ContentDigestInvalid, ContentMd5Required


def parse_content_md5(header: str | None) -> str:
    if not header:
        raise ContentMd5Required()
    try:
        digest = base64.b64decode(header.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ContentMd5Required("Content-MD5 is not valid base64.") from None
    if len(digest) != 16:
        raise ContentMd5Required("Content-MD5 must be the base64 of a 16-byte MD5 digest.")
    return digest.hex()


def parse_content_digest(header: str) -> str | None:
    """The sha-256 of an RFC 9530 Content-Digest (a structured-field dictionary such as
    `sha-256=:<base64>:, sha-512=:...:`), hex; None when it names no sha-256 (other
    algorithms are ignored, as the RFC allows). ContentDigestInvalid when malformed."""
    found = None
    for member in header.split(","):
        name, sep, value = member.strip().partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or not name or len(value) < 2 or value[0] != ":" or value[-1] != ":":
            raise ContentDigestInvalid()
        if name != "sha-256":
            continue
        try:
            digest = base64.b64decode(value[1:-1], validate=True)
        except (binascii.Error, ValueError):
            raise ContentDigestInvalid() from None
        if len(digest) != 32 or found is not None:
            raise ContentDigestInvalid()
        found = digest.hex()
    return found


def parse_chunk_digests(content_md5: str | None, content_digest: str | None) -> ChunkDigests:
    """A chunk's declared checksums, from its Content-MD5 and Content-Digest headers."""
    sha256 = parse_content_digest(content_digest) if content_digest else None
    md5 = parse_content_md5(content_md5) if content_md5 or sha256 is None else None
    return ChunkDigests(sha256=sha256, md5=md5)


def parse_content_length(header: str | None) -> int | None:
    """The declared body size; None when absent or not a plain decimal number."""
    return int(header) if header and header.isdigit() else None
