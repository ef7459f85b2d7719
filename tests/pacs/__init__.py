"""PACS servers for tests: a real Orthanc, a recording reverse proxy and a fault-injecting PACS.

- :func:`run_orthanc` runs the Debian ``Orthanc`` binary with its DICOMweb plugin on a free
  127.0.0.1 port, with authentication and our own configuration (``scripts/orthanc.sh install``
  installs it). :class:`OrthancServer` stops, restarts, freezes and inspects it.
- :class:`RecordingProxy` sits in front of any HTTP server and forwards every request byte for
  byte (chunked bodies stay chunked) while it records what passed: method, path, status, body
  size and, for ``multipart/related`` bodies, one :class:`PartInfo` per part (size, SHA-256 and
  the part's DICOM UIDs), so a test can count STOW-RS requests and see which instances each
  carried.
- :class:`FaultPacs` is a small DICOMweb server (STOW-RS and QIDO-RS) whose answers a test
  scripts one request at a time: :func:`ok`, :func:`status`, :func:`failed`, :func:`slow`,
  :func:`hang`, :func:`drop`. It records every request with its arrival time.

The proxy and the fault PACS are asyncio servers on a loopback port chosen by the kernel, each
run by its own event loop in a daemon thread: synchronous and async tests use them alike.
Everything listens on 127.0.0.1 only (Orthanc through ``scripts/orthanc.sh``'s loopback shim:
Orthanc 1.10 has no option for its listening address).

Import from ``tests.pacs``; the modules of the package hold the parts: ``orthanc`` (Orthanc),
``proxy`` (the recording proxy), ``fault`` and ``behaviours`` (the fault PACS and its scripted
answers), ``dicomweb`` (DICOM JSON tags, UIDs, multipart bodies) and ``loopback`` (the HTTP/1.1
layer and the background servers the proxy and the fault PACS are built on).
"""

from __future__ import annotations

from tests.pacs.behaviours import Behaviour, drop, failed, hang, ok, slow, status
from tests.pacs.dicomweb import (
    FAILED_SOP_SEQUENCE,
    FAILURE_REASON,
    NUMBER_OF_STUDY_RELATED_INSTANCES,
    REFERENCED_SOP_CLASS_UID,
    REFERENCED_SOP_INSTANCE_UID,
    REFERENCED_SOP_SEQUENCE,
    RETRIEVE_URL,
    SERIES_INSTANCE_UID,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    DicomUids,
    MultipartReader,
    PartInfo,
    dicom_uids,
    encode_multipart,
    parse_content_type,
    parse_multipart,
)
from tests.pacs.fault import FaultPacs, PacsRequest, StoredInstance
from tests.pacs.orthanc import (
    DICOMWEB_PLUGIN,
    LOOPBACK_SHIM,
    ORTHANC_BIN,
    OrthancServer,
    OrthancStartError,
    orthanc_available,
    orthanc_missing_reason,
    run_orthanc,
)
from tests.pacs.proxy import ProxyRecord, RecordingProxy

__all__ = [
    "DICOMWEB_PLUGIN",
    "FAILED_SOP_SEQUENCE",
    "FAILURE_REASON",
    "LOOPBACK_SHIM",
    "NUMBER_OF_STUDY_RELATED_INSTANCES",
    "ORTHANC_BIN",
    "REFERENCED_SOP_CLASS_UID",
    "REFERENCED_SOP_INSTANCE_UID",
    "REFERENCED_SOP_SEQUENCE",
    "RETRIEVE_URL",
    "SERIES_INSTANCE_UID",
    "SOP_CLASS_UID",
    "SOP_INSTANCE_UID",
    "STUDY_INSTANCE_UID",
    "Behaviour",
    "DicomUids",
    "FaultPacs",
    "MultipartReader",
    "OrthancServer",
    "OrthancStartError",
    "PacsRequest",
    "PartInfo",
    "ProxyRecord",
    "RecordingProxy",
    "StoredInstance",
    "dicom_uids",
    "drop",
    "encode_multipart",
    "failed",
    "hang",
    "ok",
    "orthanc_available",
    "orthanc_missing_reason",
    "parse_content_type",
    "parse_multipart",
    "run_orthanc",
    "slow",
    "status",
]
