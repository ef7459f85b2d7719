"""HTTP endpoints of the upload domain: parse, call one service function, return a schema."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.dependencies.utils import request_params_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from relaypacs.audit.service import request_actor
from relaypacs.auth.dependencies import (
    CurrentUser,
    bearer_scheme,
    get_current_user,
    get_session_user,
    per_user,
)
from relaypacs.auth.policy import authorize
from relaypacs.fields import Offset
from relaypacs.state import DatabaseDep, SessionDep, StorageDep, get_app_state
from relaypacs.uploads import batches, completion, service
from relaypacs.uploads.bodies import read_body, read_body_into
from relaypacs.uploads.dependencies import CompleteContextDep, EarlyVerifierDep, UploadLimitsDep
from relaypacs.uploads.headers import parse_chunk_digests, parse_content_length
from relaypacs.uploads.models import UploadStatus
from relaypacs.uploads.schemas import (
    ChunkBatchStored,
    ChunkStored,
    UploadCreate,
    UploadList,
    UploadRead,
)

router = APIRouter(prefix="/uploads", tags=["uploads"])


# The chunk route's rate limit: declared as its dependency (documentation, the policy table)
# and called by ChunkRoute itself.
_chunk_limit = per_user("upload_chunk")


class _ChunkPath(BaseModel):
    upload_id: uuid.UUID
    file_index: int
    chunk_index: int


class ChunkRoute(APIRoute):
    """The chunk PUT, called once per chunk: hundreds of times per study, where FastAPI's
    dependency injection and response validation cost about a third of the gateway's time per
    request (bench/README.md). This route calls its endpoint itself, with the checks a FastAPI
    route would make, in the same order and with the same answers: the policy (`authorize`,
    401/403), the full-use account check (`get_current_user`), the per-user rate limit (429),
    the path parameters (422 `invalid_request`), then the endpoint; the answer is the
    endpoint's `ChunkStored` as JSON. The route is still an APIRoute: it is in the OpenAPI
    description and in the policy table like every other (tests/security covers it)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        async def handler(request: Request) -> Response:
            await authorize(request)
            user = await get_current_user(
                request, await get_session_user(request, await bearer_scheme(request))
            )
            await _chunk_limit(request, user)
            try:
                path = _ChunkPath.model_validate(request.path_params)
            except ValidationError as exc:
                raise RequestValidationError(
                    [{**e, "loc": ("path", *e["loc"])} for e in exc.errors(include_url=False)]
                ) from None
            stored = await put_chunk(
                path.upload_id, path.file_index, path.chunk_index, request, user
            )
            return Response(stored.model_dump_json(), media_type="application/json")

        return handler


chunk_router = APIRouter(prefix="/uploads", tags=["uploads"], route_class=ChunkRoute)


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post(
    "",
    response_model=UploadRead,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {
            "model": UploadRead,
            "description": "An upload of this manifest exists: it is resumed (what it holds).",
        }
    },
    dependencies=[Depends(per_user("upload_init"))],
)
async def start_upload(
    body: UploadCreate,
    request: Request,
    response: Response,
    user: CurrentUser,
    session: SessionDep,
    limits: UploadLimitsDep,
) -> UploadRead:
    view, created = await service.start_upload(
        session, user=user, body=body, limits=limits, client_ip=client_ip(request)
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return view


class ReadRoute(APIRoute):
    """The reads clients poll, many at once: an upload's status (`GET /uploads/{id}`, every few
    seconds per upload, by the CLI's `--wait` and the web app) and the list (`GET /uploads`).
    FastAPI's dependency solving and response validation were about a sixth of their cost
    (bench/README.md, "The API under load"). As ChunkRoute does for the chunk PUT, this route
    calls its endpoint itself, with the checks a FastAPI route would make, in the same order
    and with the same answers: the policy (`authorize`, 401/403), the full-use account check
    (`get_current_user`, 403), then the path and query parameters, validated by FastAPI's own
    `request_params_to_args` against the endpoint's declared parameters (the same values, the
    same 422 `invalid_request` problems, in the same order: path, then query), then the
    endpoint, called with `request`, `user` and those parameters (it takes no dependency).
    Its answer, a pydantic model built from the declared response model, is serialized as
    FastAPI serializes a response model (by alias). The route is still an APIRoute: it is in
    the OpenAPI description and in the policy table like every other (tests/security)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        path_fields = self.dependant.path_params
        query_fields = self.dependant.query_params
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            await authorize(request)
            user = await get_current_user(
                request, await get_session_user(request, await bearer_scheme(request))
            )
            path, errors = request_params_to_args(path_fields, request.path_params)
            query, query_errors = request_params_to_args(query_fields, request.query_params)
            if errors or query_errors:
                raise RequestValidationError([*errors, *query_errors])
            answer: BaseModel = await endpoint(request=request, user=user, **path, **query)
            return Response(answer.model_dump_json(by_alias=True), media_type="application/json")

        return handler


read_router = APIRouter(prefix="/uploads", tags=["uploads"], route_class=ReadRoute)


# Plain calls in the two reads below, not dependencies: ReadRoute resolves none (see its
# docstring); `user` is declared for the OpenAPI description (the bearer scheme).


@read_router.get("", response_model=UploadList)
async def list_uploads(
    request: Request,
    user: CurrentUser,
    upload_status: Annotated[UploadStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[Offset, Query()] = 0,
) -> UploadList:
    items, total = await service.list_uploads(
        get_app_state(request).db,
        user=user,
        actor=request_actor(request),
        status=upload_status,
        limit=limit,
        offset=offset,
    )
    return UploadList(items=items, total=total)


@read_router.get("/{upload_id}", response_model=UploadRead)
async def get_upload(
    upload_id: uuid.UUID,
    request: Request,
    user: CurrentUser,
    files: Annotated[
        bool, Query(description="false: without the file list (cheap to poll)")
    ] = True,
) -> UploadRead:
    return await service.show_upload(
        get_app_state(request).db,
        upload_id=upload_id,
        user=user,
        actor=request_actor(request),
        with_files=files,
    )


@chunk_router.put(
    "/{upload_id}/files/{file_index}/chunks/{chunk_index}",
    response_model=ChunkStored,
    # Documentation: ChunkRoute makes this check itself.
    dependencies=[Depends(_chunk_limit)],
)
async def put_chunk(
    upload_id: uuid.UUID, file_index: int, chunk_index: int, request: Request, user: CurrentUser
) -> ChunkStored:
    # A plain call, not a dependency: ChunkRoute resolves none (see its docstring).
    state = get_app_state(request)
    headers = request.headers
    declared = parse_chunk_digests(headers.get("content-md5"), headers.get("content-digest"))
    return await service.put_chunk(
        state.chunk_intake,
        state.storage,
        user=user,
        upload_id=upload_id,
        file_index=file_index,
        chunk_index=chunk_index,
        content_length=parse_content_length(headers.get("content-length")),
        declared=declared,
        read_body=functools.partial(
            read_body, request, idle_seconds=state.chunk_intake.body_idle_seconds
        ),
    )


@router.post(
    "/{upload_id}/chunks:batch",
    response_model=ChunkBatchStored,
    # One request of the chunk limit, whatever it carries: its bytes are bounded by
    # Content-Length (RELAYPACS_CHUNK_SIZE + 64 KiB) and the body budget.
    dependencies=[Depends(_chunk_limit)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                batches.MEDIA_TYPE: {
                    "schema": {"type": "string", "format": "binary"},
                }
            },
            "description": "4 bytes (big-endian) the header's length, the header (JSON: "
            '{"parts": [{"file_index", "chunk_index", "size", "sha256"}]}), then the parts\' '
            "bytes back to back (docs/api.md, Chunk batches).",
        }
    },
)
async def put_chunk_batch(
    upload_id: uuid.UUID, request: Request, user: CurrentUser
) -> ChunkBatchStored:
    """Several chunks (whole small files) in one request: each part stored durably or
    refused on its own (`parts[i].status`, `code`)."""
    state = get_app_state(request)
    return await service.put_chunk_batch(
        state.chunk_intake,
        state.storage,
        user=user,
        upload_id=upload_id,
        content_length=parse_content_length(request.headers.get("content-length")),
        read_body=functools.partial(
            read_body_into, request, idle_seconds=state.chunk_intake.body_idle_seconds
        ),
    )


@router.post(
    "/{upload_id}/complete", response_model=UploadRead, status_code=status.HTTP_202_ACCEPTED
)
async def complete_upload(
    upload_id: uuid.UUID, request: Request, user: CurrentUser, context: CompleteContextDep
) -> UploadRead:
    return await completion.complete_upload(
        context, user=user, upload_id=upload_id, client_ip=client_ip(request)
    )


@router.delete("/{upload_id}", response_model=UploadRead)
async def cancel_upload(
    upload_id: uuid.UUID,
    request: Request,
    user: CurrentUser,
    db: DatabaseDep,
    storage: StorageDep,
    early: EarlyVerifierDep,
) -> UploadRead:
    return await service.cancel_upload(
        db, storage, early, user=user, upload_id=upload_id, client_ip=client_ip(request)
    )
