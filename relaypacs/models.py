"""Imports every table so that the metadata is complete (Alembic, create_all in tests)."""

from relaypacs.audit.models import AuditEvent
from relaypacs.auth.models import AuthSession, RecoveryCode, RefreshToken, Role, User
from relaypacs.db import Base
from relaypacs.forwarding.models import ForwardJob, JobStatus
from relaypacs.notifications.models import EmailOutbox, Notification, NotificationPreference
from relaypacs.reports.models import (
    AssignmentRule,
    RadiologistModality,
    Report,
    ReportPacsCopy,
    ReportPacsInstance,
    ReportStatus,
    ReportVersion,
)
from relaypacs.scheduler.models import ScheduledJob
from relaypacs.stats.models import DailyStat
from relaypacs.uploads.models import FileStatus, Upload, UploadChunk, UploadFile, UploadStatus

__all__ = [
    "AssignmentRule",
    "AuditEvent",
    "AuthSession",
    "Base",
    "DailyStat",
    "EmailOutbox",
    "FileStatus",
    "ForwardJob",
    "JobStatus",
    "Notification",
    "NotificationPreference",
    "RadiologistModality",
    "RecoveryCode",
    "RefreshToken",
    "Report",
    "ReportPacsCopy",
    "ReportPacsInstance",
    "ReportStatus",
    "ReportVersion",
    "Role",
    "ScheduledJob",
    "Upload",
    "UploadChunk",
    "UploadFile",
    "UploadStatus",
    "User",
]
