"""Who may call what: the one table of every endpoint and the roles allowed on it, and its check.

Every route of the app must have an entry (`check_policy` refuses to build an app otherwise, and
`tests/security` checks it again), so a new endpoint cannot be reachable by accident. Each entry
states the roles; object-level rules (whose upload it is) live in the services' loaders, which
answer another user's object with the same 404 as a missing one.

To add an endpoint: add `"METHOD /api/v1/path/{param}": <rule>` below (the path template as
FastAPI shows it, prefix included). HEAD is covered by the GET entry. A mounted app (the web
app's static files) is `"MOUNT /path": PUBLIC`: no role can be checked on it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security import HTTPBearer
from starlette.routing import BaseRoute, compile_path
from starlette.types import Scope

from relaypacs.audit.service import record_for_request
from relaypacs.auth.dependencies import get_session_user
from relaypacs.auth.models import Role
from relaypacs.errors import Forbidden, GatewayError

logger = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False)
# What a path parameter must look like to be shown in a log or an audit record: an id or an
# index. Anything else a client put in the path is not repeated.
ID_LIKE = re.compile(r"[0-9A-Za-z-]{1,64}")


BodyLimit = Literal["default", "manifest", "own"]


@dataclass(frozen=True)
class Rule:
    """Who may call an endpoint. `roles` None: public, no token needed."""

    roles: frozenset[Role] | None
    # Request body limit: "default" (RELAYPACS_MAX_REQUEST_BODY), "manifest" (an upload's
    # manifest, which grows with the number of files allowed), or "own" (the endpoint checks
    # Content-Length itself before reading: the chunk PUT).
    body: BodyLimit = "default"

    @property
    def public(self) -> bool:
        return self.roles is None

    def allows(self, role: Role) -> bool:
        return self.roles is not None and role in self.roles


def allow(*roles: Role, body: BodyLimit = "default") -> Rule:
    return Rule(frozenset(roles), body=body)


PUBLIC = Rule(None)
ANY_ROLE = allow(Role.CLINICIAN, Role.RADIOLOGIST, Role.ADMIN)
# Clinicians upload their patients' studies; radiologists too (outside studies brought in for a
# second opinion). Administrators run the system and do not upload.
UPLOADERS = allow(Role.CLINICIAN, Role.RADIOLOGIST)
ADMIN = allow(Role.ADMIN)
RADIOLOGIST = allow(Role.RADIOLOGIST)

API = "/api/v1"
UPLOAD_INIT = f"POST {API}/uploads"  # who may start an upload (also: who gets a warm validator)

# Routes that exist only when a setting turns them on (the API documentation, RELAYPACS_API_DOCS).
OPTIONAL = frozenset({f"GET {API}/openapi.json", f"GET {API}/docs", f"MOUNT {API}/docs/assets"})

POLICY: dict[str, Rule] = {
    # Public: liveness, login and the API's own description.
    f"GET {API}/health": PUBLIC,
    f"GET {API}/openapi.json": PUBLIC,
    f"GET {API}/docs": PUBLIC,
    f"MOUNT {API}/docs/assets": PUBLIC,
    f"POST {API}/auth/login": PUBLIC,
    # Operations (relaypacs/ops), at the root: probes need no token; /metrics checks its own
    # (RELAYPACS_METRICS_TOKEN, else loopback only).
    "GET /health/live": PUBLIC,
    "GET /health/ready": PUBLIC,
    "GET /metrics": PUBLIC,
    f"GET {API}/auth/me": ANY_ROLE,
    # Sessions. Public as far as the table goes: the endpoint checks its own credential (the
    # mfa-pending token of the password step, the refresh token, the token to log out).
    f"POST {API}/auth/totp": PUBLIC,
    f"POST {API}/auth/refresh": PUBLIC,
    f"POST {API}/auth/logout": PUBLIC,
    # One's own account: allowed to a restricted account too (temporary password, TOTP not yet
    # enrolled), which the endpoints take as SessionUser; everything else refuses it.
    f"POST {API}/auth/password": ANY_ROLE,
    f"POST {API}/auth/totp/enrol": ANY_ROLE,
    f"POST {API}/auth/totp/confirm": ANY_ROLE,
    f"GET {API}/auth/sessions": ANY_ROLE,
    f"DELETE {API}/auth/sessions/{{session_id}}": ANY_ROLE,
    # Uploads: the uploader's own objects only (another user's upload is a 404). An
    # administrator may read any upload (support; every such read is audited) but not write.
    UPLOAD_INIT: allow(Role.CLINICIAN, Role.RADIOLOGIST, body="manifest"),
    f"GET {API}/uploads": UPLOADERS,
    f"GET {API}/uploads/{{upload_id}}": ANY_ROLE,
    f"PUT {API}/uploads/{{upload_id}}/files/{{file_index}}/chunks/{{chunk_index}}": allow(
        Role.CLINICIAN, Role.RADIOLOGIST, body="own"
    ),
    f"POST {API}/uploads/{{upload_id}}/chunks:batch": allow(
        Role.CLINICIAN, Role.RADIOLOGIST, body="own"
    ),
    f"POST {API}/uploads/{{upload_id}}/complete": UPLOADERS,
    f"DELETE {API}/uploads/{{upload_id}}": UPLOADERS,
    f"GET {API}/uploads/{{upload_id}}/timeline": ANY_ROLE,
    # Reports: the uploader reads the reports of their own uploads, a radiologist those
    # assigned to them (the only ones they write), an administrator all (audited).
    f"GET {API}/reports": ANY_ROLE,
    f"GET {API}/reports/{{report_id}}": ANY_ROLE,
    f"GET {API}/reports/{{report_id}}/versions/{{version}}": ANY_ROLE,
    f"GET {API}/reports/{{report_id}}/study": ANY_ROLE,
    f"GET {API}/reports/{{report_id}}/pdf": ANY_ROLE,
    f"PUT {API}/reports/{{report_id}}/draft": RADIOLOGIST,
    f"POST {API}/reports/{{report_id}}/sign": RADIOLOGIST,
    f"POST {API}/reports/{{report_id}}/amend": RADIOLOGIST,
    f"POST {API}/admin/reports/{{report_id}}/assign": ADMIN,
    f"GET {API}/admin/radiologists": ADMIN,
    f"PUT {API}/admin/radiologists/{{user_id}}/modalities": ADMIN,
    f"GET {API}/admin/assignment-rule": ADMIN,
    f"PUT {API}/admin/assignment-rule": ADMIN,
    # Notifications: one's own only (another user's is a 404). The stream checks its own
    # credential: the access token, or a one-time ticket (a browser's EventSource sends no
    # Authorization header).
    f"GET {API}/notifications": ANY_ROLE,
    f"POST {API}/notifications/{{notification_id}}/read": ANY_ROLE,
    f"POST {API}/notifications/read-all": ANY_ROLE,
    f"GET {API}/notifications/preferences": ANY_ROLE,
    f"PUT {API}/notifications/preferences": ANY_ROLE,
    f"POST {API}/notifications/stream-ticket": ANY_ROLE,
    f"GET {API}/notifications/stream": PUBLIC,
    # Administration.
    f"GET {API}/admin/uploads": ADMIN,
    f"POST {API}/admin/uploads/{{upload_id}}/retry": ADMIN,
    f"POST {API}/admin/uploads/{{upload_id}}/cancel": ADMIN,
    f"GET {API}/admin/targets": ADMIN,
    f"GET {API}/admin/audit": ADMIN,
    f"GET {API}/admin/audit/export": ADMIN,
    f"GET {API}/admin/stats": ADMIN,
    f"GET {API}/admin/users": ADMIN,
    f"POST {API}/admin/users": ADMIN,
    f"GET {API}/admin/users/{{user_id}}": ADMIN,
    f"POST {API}/admin/users/{{user_id}}/disable": ADMIN,
    f"POST {API}/admin/users/{{user_id}}/enable": ADMIN,
    f"PUT {API}/admin/users/{{user_id}}/role": ADMIN,
    f"DELETE {API}/admin/users/{{user_id}}/totp": ADMIN,
    f"POST {API}/admin/users/{{user_id}}/password": ADMIN,
    f"GET {API}/admin/users/{{user_id}}/sessions": ADMIN,
    f"DELETE {API}/admin/users/{{user_id}}/sessions": ADMIN,
    f"DELETE {API}/admin/users/{{user_id}}/sessions/{{session_id}}": ADMIN,
}


class PolicyError(Exception):
    """The app's routes and the policy table disagree: the app must not start."""


@dataclass(frozen=True)
class Endpoint:
    """One method of one route, as the app serves it."""

    method: str
    path: str
    route: BaseRoute  # the route object the router puts in scope["route"]
    enforced: bool  # a FastAPI route: the policy dependency runs on it

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"


def endpoints(routes: Iterable[BaseRoute]) -> list[Endpoint]:
    """Every (method, path template) of these routes, included routers flattened."""
    found = []
    for context in iter_route_contexts(list(routes)):
        path = context.path_format or context.path
        if path is None:
            raise PolicyError(f"a route without a path cannot be checked: {context!r}")
        methods = context.methods or set()
        original = context.original_route
        if not methods:  # a mount (static files of the web app): public or nothing
            found.append(Endpoint("MOUNT", context.path or path, original, enforced=False))
            continue
        for method in sorted(methods):
            if method == "HEAD" and "GET" in methods:
                continue
            found.append(Endpoint(method, path, original, isinstance(original, APIRoute)))
    return found


class PolicyIndex:
    """The policy of each route object, looked up per request in O(1)."""

    def __init__(self, routes: Iterable[BaseRoute], policy: Mapping[str, Rule] = POLICY) -> None:
        listed = endpoints(routes)
        missing = [e.key for e in listed if e.key not in policy]
        if missing:
            raise PolicyError(
                "routes without an entry in relaypacs/auth/policy.py (who may call them?): "
                + ", ".join(missing)
            )
        stale = sorted(set(policy) - {e.key for e in listed} - OPTIONAL)
        if stale:
            raise PolicyError("policy entries for routes that do not exist: " + ", ".join(stale))
        self._rules: dict[tuple[int, str], Rule] = {}
        self._keys: dict[tuple[int, str], str] = {}
        self.endpoints = listed
        for endpoint in listed:
            rule = policy[endpoint.key]
            if not endpoint.enforced and not rule.public:
                raise PolicyError(f"{endpoint.key}: only FastAPI routes can be role-restricted")
            slot = (id(endpoint.route), endpoint.method)
            if self._rules.get(slot, rule) != rule:
                raise PolicyError(f"{endpoint.key}: one route object under two different rules")
            self._rules[slot] = rule
            self._keys[slot] = endpoint.key
        # (method, compiled path, limit) of the routes without the default body limit.
        self._body_limits = [
            (e.method, compile_path(e.path)[0], policy[e.key].body)
            for e in listed
            if policy[e.key].body != "default"
        ]

    def rule(self, route: BaseRoute, method: str) -> Rule | None:
        if method == "HEAD":
            method = "GET"
        return self._rules.get((id(route), method))

    def key(self, route: BaseRoute, method: str) -> str | None:
        """ "METHOD /path/template" of a route, as in the policy table."""
        slot = id(route)
        return self._keys.get((slot, "GET" if method == "HEAD" else method)) or self._keys.get(
            (slot, "MOUNT")
        )

    def describe(self, scope: Scope) -> str:
        """The request as a log line may show it: the route's template and the id-like values
        of its path parameters, never the path as sent (a client may put anything there)."""
        route = scope.get("route")
        key = self.key(route, scope["method"]) if route is not None else None
        if key is None:
            return f"{scope['method']} (no route)"
        params = " ".join(
            f"{name}={value if ID_LIKE.fullmatch(str(value)) else '?'}"
            for name, value in (scope.get("path_params") or {}).items()
        )
        return f"{key} {params}" if params else key

    def template(self, scope: Scope) -> str:
        """The route's path template ("/api/v1/uploads/{upload_id}"): a metric's label."""
        route = scope.get("route")
        key = self.key(route, scope["method"]) if route is not None else None
        return key.split(" ", 1)[1] if key is not None else "(no route)"

    def body_limit(self, method: str, path: str) -> BodyLimit:
        """Which body limit applies to a request, before routing (from its method and path)."""
        for m, regex, limit in self._body_limits:
            if m == method and regex.match(path):
                return limit
        return "default"


def check_policy(app: FastAPI) -> PolicyIndex:
    """Index the policy of every route of `app`, or raise PolicyError."""
    index = PolicyIndex(app.routes)
    app.state.policy = index
    return index


def app_policy(app: FastAPI) -> PolicyIndex:
    """The policy index check_policy made for `app`."""
    index = getattr(app.state, "policy", None)
    if not isinstance(index, PolicyIndex):
        raise RuntimeError("the app's policy was not checked (check_policy)")
    return index


async def authorize(request: Request) -> None:
    """The policy, applied to every FastAPI route of the app: an app-wide dependency, so it
    runs before the endpoint's own dependencies and before its parameters are validated.

    Public routes pass; others need a valid token (401) and a role the entry lists (403, the
    same for every object id, so it confirms nothing about any object)."""
    index = app_policy(request.app)
    route = request.scope.get("route")
    rule = index.rule(route, request.method) if route is not None else None
    if rule is None:
        # A route added after the app was built, never checked: fail closed.
        logger.error("no policy entry for %s: refused", index.describe(request.scope))
        raise Forbidden()
    if rule.public:
        return
    # Authenticated here; what a restricted account (temporary password, TOTP not yet
    # enrolled) may do is decided by the endpoint: CurrentUser refuses it, SessionUser not.
    user = await get_session_user(request, await _bearer(request))
    if not rule.allows(user.role):
        raise Forbidden()


async def record_denial(request: Request, exc: GatewayError) -> None:
    """A refused authorisation (a role the policy does not list, or another user's object):
    who, which endpoint, which object, outcome `denied`. A failure to record it is logged and
    does not change the refusal."""
    denial = exc.denial
    object_type = denial.object_type if denial else None
    object_id = denial.object_id if denial else None
    if object_id is None:
        # A role refusal: the object the path names, unchecked (never looked up).
        for name, value in request.path_params.items():
            if name.endswith("_id"):
                object_type = name.removesuffix("_id")
                object_id = str(value) if ID_LIKE.fullmatch(str(value)) else "?"
                break
    route = request.scope.get("route")
    endpoint = app_policy(request.app).key(route, request.method) if route else None
    try:
        await record_for_request(
            request,
            action="access.denied",
            outcome="denied",
            object_type=object_type,
            object_id=object_id,
            study_instance_uid=denial.study_instance_uid if denial else None,
            details={
                "endpoint": endpoint or f"{request.method} ?",
                "status": exc.status_code,
                "code": exc.code,
                "reason": denial.reason if denial else "role",
            },
        )
    except Exception as error:  # the refusal stands either way
        logger.warning("could not audit a denied access: %s", type(error).__name__)
