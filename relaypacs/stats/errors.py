"""The errors of the statistics domain."""

from __future__ import annotations

from relaypacs.errors import GatewayError


class StatsRangeInvalid(GatewayError):
    status_code = 422
    code = "stats_range_invalid"
    message = "The range of days is not valid: `from` must not be after `to`, at most 366 days."
