"""Errors answered as Feldera's ``ErrorResponse`` (``message``, ``error_code``, ``details``)."""

from __future__ import annotations

from typing import Any

import pydantic
from aiohttp import web
from kubernetes.client.exceptions import ApiException

from .. import jsondepth
from ..core.lifecycle import Refusal
from ..models import ErrorResponse, PipelineSpec


class ApiError(Exception):
    """An error answered as Feldera's ErrorResponse (with ``Retry-After: 5`` on a 503, as Feldera, or
    the given ``retry_after`` seconds, e.g. on a 429)."""

    def __init__(self, status: int, error_code: str, message: str, details: Any = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message, self.details = status, error_code, message, details
        self.retry_after = retry_after if retry_after is not None else (5 if status == 503 else None)

    @classmethod
    def refused(cls, refusal: Refusal) -> ApiError:
        return cls(refusal.http_status, refusal.error_code, refusal.message, refusal.details)

    def response(self) -> web.Response:
        body = ErrorResponse(message=self.message, error_code=self.error_code, details=self.details)
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return web.json_response(body.model_dump(mode="json"), status=self.status, headers=headers)


def unknown_pipeline(name: str) -> ApiError:
    return ApiError(404, "UnknownPipelineName", f"Unknown pipeline name '{name[:253]}'",
                    {"pipeline_name": name[:253]})


def unreadable_pipeline(obj: Any) -> ApiError | None:
    """409 ``InvalidPipeline`` for a Pipeline the operator cannot read (nested deeper than it decodes, or a spec
    stored before its CRD bounded every field that its schema now refuses), which its monitoring loop reports
    and leaves alone: nothing can be shown or done with it but replacing or deleting it."""
    meta = (obj.get("metadata") if isinstance(obj, dict) else None) or {}
    problem = jsondepth.undecodable(obj)
    if problem is None:
        try:
            PipelineSpec.model_validate(obj.get("spec") or {})
        except pydantic.ValidationError as exc:
            problem = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
    if problem is None:
        return None
    name = str(meta.get("name") or "")[:253]
    return ApiError(409, "InvalidPipeline", f"Pipeline '{name}' cannot be read: {problem[:1000]}; correct it "
                                            "(PUT, PATCH or kubectl) or delete it", {"pipeline_name": name})


def bool_param(query: Any, name: str, default: bool) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise ApiError(400, "InvalidQueryParameter", f"{name} must be true or false, not '{raw[:20]}'",
                   {"parameter": name})


def describe(exc: BaseException) -> str:
    """A failure of a call to the Kubernetes API server, for the log: an API server's answer by its status and
    reason, anything else by its type and (bounded) message."""
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {str(exc)[:300]}"
