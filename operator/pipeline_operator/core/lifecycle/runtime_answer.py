"""A pipeline's ``/status`` answer parsed as Feldera's ``parse_status_result`` does (legacy answers
included, ``Unavailable`` as Feldera sets it)."""

from __future__ import annotations

from typing import Any

from ...models import ErrorResponse, RuntimeDesiredStatus, RuntimeStatus
from .bounds import _short
from .model import RDS, RS, RuntimeObservation, RuntimeProbe

# --------------------------------------------------------------------------------------
# Parsing the pipeline's /status answer (Feldera's parse_status_result)
# --------------------------------------------------------------------------------------

# Feldera's parse_status_result: legacy answers map to (runtime status, runtime desired status).
_LEGACY_STRINGS = {"Paused": (RS.PAUSED, RDS.PAUSED), "Running": (RS.RUNNING, RDS.RUNNING),
                   "Initializing": (RS.INITIALIZING, RDS.PAUSED)}
_LEGACY_503 = {"Initializing": (RS.INITIALIZING, RDS.PAUSED), "Suspended": (RS.SUSPENDED, RDS.SUSPENDED)}


def _unavailable(reason: str) -> RuntimeObservation:
    """Feldera's answer for a pipeline that answered but whose status is unknown: runtime status and
    runtime desired status both Unavailable, the reason in the details."""
    return RuntimeObservation(probe=RuntimeProbe.UNAVAILABLE, runtime_status=RS.UNAVAILABLE,
                              runtime_desired_status=RDS.UNAVAILABLE, reason=_short(reason))


def _invalid_response(error: str) -> ErrorResponse:
    return ErrorResponse(message=_short(f"Pipeline interaction received an invalid response: {error}"),
                         error_code="PipelineInteractionInvalidResponse", details={"error": _short(error, 1024)})


def parse_status_response(http_status: int | None, body: Any, failure: str = "") -> RuntimeObservation:
    """Interpret one ``GET /status`` exchange exactly as Feldera's runner (``parse_status_result``).

    ``http_status`` is None when no HTTP answer came (timeout, refused); ``body`` is the
    decoded JSON body, or ``NOT_JSON`` when it did not decode; ``failure`` says why.
    """
    if http_status is None:
        return RuntimeObservation(probe=RuntimeProbe.UNREACHABLE, reason=_short(failure or "no answer"))
    if 300 <= http_status < 400:
        # Redirects are never followed (they could send the operator's token, or its requests, anywhere);
        # what the redirect answer itself says is not shown either.
        return RuntimeObservation(probe=RuntimeProbe.FATAL, error=_invalid_response(
            f"Pipeline status response is a redirect (HTTP {http_status}), which is not followed"))
    if body is NOT_JSON:
        return RuntimeObservation(probe=RuntimeProbe.UNREACHABLE,
                                  reason=_short(failure or f"HTTP {http_status} with a body that is not JSON"))
    if http_status == 200:
        if isinstance(body, str):
            if body in _LEGACY_STRINGS:
                status, desired = _LEGACY_STRINGS[body]
                return RuntimeObservation(probe=RuntimeProbe.OK, runtime_status=status,
                                          runtime_desired_status=desired, runtime_status_details={})
            if body == "Terminated":
                return RuntimeObservation(probe=RuntimeProbe.FATAL,
                                          error=_invalid_response("Pipeline responded that it is Terminated"))
            return _unavailable(f"Pipeline status response (200 OK) is an unexpected JSON string: '{body}'")
        if isinstance(body, dict):
            try:
                return RuntimeObservation(
                    probe=RuntimeProbe.OK,
                    runtime_status=RuntimeStatus(body["runtime_status"]),
                    runtime_desired_status=RuntimeDesiredStatus(body["runtime_desired_status"]),
                    runtime_status_details=body.get("runtime_status_details"),
                    storage_status_details=body.get("storage_status_details"))
            except (KeyError, ValueError, TypeError) as exc:
                return _unavailable(f"Pipeline status response (200 OK) cannot be deserialized due to: {exc!r}")
        return _unavailable(f"Pipeline status response (200 OK) is not a string or an object: {_short(body, 200)}")
    if http_status == 503:
        if isinstance(body, dict) and isinstance(body.get("message"), str) and isinstance(body.get("error_code"), str):
            legacy = _LEGACY_503.get(body["error_code"])
            if legacy is not None:
                return RuntimeObservation(probe=RuntimeProbe.UNAVAILABLE, runtime_status=legacy[0],
                                          runtime_desired_status=legacy[1], reason=_short(body["message"]))
            return _unavailable(f"Pipeline status response (503 Service Unavailable) is an error: "
                                f"{body['error_code']}: {body['message']}")
        return _unavailable(f"Pipeline status response (503 Service Unavailable) cannot be deserialized. "
                            f"Response was: {_short(body, 200)}")
    if isinstance(body, dict) and isinstance(body.get("message"), str) and isinstance(body.get("error_code"), str):
        error = ErrorResponse(message=body["message"], error_code=body["error_code"], details=body.get("details"))
    else:
        error = _invalid_response(f"Error response (HTTP {http_status}) cannot be deserialized. "
                                  f"Response was: {_short(body, 500)}")
    return RuntimeObservation(probe=RuntimeProbe.FATAL, error=error)


class _NotJson:
    def __repr__(self) -> str:
        return "NOT_JSON"


NOT_JSON: Any = _NotJson()
