"""The operations endpoints' errors."""

from __future__ import annotations

from relaypacs.errors import GatewayError, NotAuthenticated


class MetricsTokenRequired(NotAuthenticated):
    code = "metrics_token_required"
    message = "The metrics need the bearer token configured in RELAYPACS_METRICS_TOKEN."


class MetricsLoopbackOnly(GatewayError):
    status_code = 403
    code = "metrics_loopback_only"
    message = (
        "Without RELAYPACS_METRICS_TOKEN the metrics are served to the loopback interface only."
    )
