"""The upload domain's parts of the app's state, as FastAPI dependencies for its routes (the
chunk PUT excepted: ChunkRoute resolves no dependency, it reads `chunk_intake` itself).
Coroutines on purpose: FastAPI runs a plain function dependency in a thread."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from relaypacs.state import AppStateDep
from relaypacs.uploads.completion import CompleteContext
from relaypacs.uploads.early import EarlyVerifier
from relaypacs.uploads.service import UploadLimits


async def get_upload_limits(state: AppStateDep) -> UploadLimits:
    return state.upload_limits


async def get_complete_context(state: AppStateDep) -> CompleteContext:
    return state.complete_context


async def get_early_verifier(state: AppStateDep) -> EarlyVerifier:
    return state.early_verifier


UploadLimitsDep = Annotated[UploadLimits, Depends(get_upload_limits)]
CompleteContextDep = Annotated[CompleteContext, Depends(get_complete_context)]
EarlyVerifierDep = Annotated[EarlyVerifier, Depends(get_early_verifier)]
