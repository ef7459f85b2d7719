"""The errors of the report domain: each carries its HTTP status and machine-readable code."""

from __future__ import annotations

from relaypacs.errors import Conflict, GatewayError, NotFound


class ReportNotFound(NotFound):
    code = "report_not_found"
    message = "No such report."


class ReportVersionNotFound(NotFound):
    code = "report_version_not_found"
    message = "This report has no such signed version."


class ReportSigned(Conflict):
    code = "report_signed"
    message = "This report is signed: it can no longer be edited or reassigned, only amended."


class ReportNotSigned(Conflict):
    code = "report_not_signed"
    message = "Only a signed report can be amended; sign it first."


class ReportNotAssigned(Conflict):
    code = "report_not_assigned"
    message = "This report is not assigned to a radiologist yet."


class ReportEmpty(GatewayError):
    status_code = 422
    code = "report_empty"
    message = "A report is signed with its findings and its impression: both are needed."


class NotARadiologist(GatewayError):
    status_code = 422
    code = "not_a_radiologist"
    message = "That user is not an active radiologist."


class RadiologistNotFound(NotFound):
    code = "radiologist_not_found"
    message = "No such radiologist."
