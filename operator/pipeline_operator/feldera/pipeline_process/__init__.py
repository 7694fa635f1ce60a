"""The reference pipeline process: the pipeline side of Feldera's runtime HTTP contract.

It is the default workload of both backends. It does not process data; it behaves, over
HTTP and on disk, as a Feldera pipeline does through its lifecycle:

- ``GET /status`` answers Feldera's ExtendedRuntimeStatus (``runtime_status``,
  ``runtime_desired_status``, ``runtime_status_details``, ``storage_status_details``);
- it starts in Initializing, goes through Replaying when its storage holds a checkpoint, then
  to its initial status (Running, Paused or Standby);
- when its program differs from the one its newest checkpoint was written by, its views must be
  bootstrapped, and it follows ``--bootstrap-policy`` as Feldera's pipeline does: ``allow``
  bootstraps (Bootstrapping), ``await_approval`` waits in AwaitingApproval (with the
  ``approval_diff``) for ``POST /approve``, ``reject`` fails with ``BootstrapRejected``;
- ``GET /pause``, ``GET /start``, ``POST /activate``, ``POST /approve`` and ``POST /suspend``
  change its desired status as Feldera's pipeline does (``state_transition``,
  ``may_transition_to``), with Feldera's answers and errors;
- on suspend it writes a checkpoint into its storage directory, then reports Suspended;
- ``POST /checkpoint`` writes one too and answers Feldera c44's ``{"checkpoint_sequence_number": N}`` once
  it is written; ``GET /checkpoint_status`` answers Feldera's
  ``{"success": N, "failure": ...}`` (c44's takes no parameter: an ``incarnation_uuid`` is ignored);
  ``GET /checkpoint/sync_status`` says that nothing was synced, and
  ``POST /checkpoint/sync`` answers ``NotSupported`` (there is no object store to sync to);
- ``GET /stats`` answers Feldera's ``ControllerStatus`` with what the process really has: its
  state, whether it bootstraps, its uptime, start time, incarnation, time spent Running, its
  memory, CPU time and storage, and no connectors. It processes no data, so its record and step
  counters are zero, as a Feldera pipeline's are before its first input. ``GET /metrics`` answers
  the same figures in Prometheus' text format (``?format=json``: Feldera's JSON format), named as
  Feldera names them where Feldera has them, plus the checkpoints written and the runtime status.
  Both answer Feldera's ``Initializing``, ``AwaitingApproval`` or ``Suspended`` (503) while a
  Feldera pipeline would have no controller to ask, and the panic's error after a panic; in fleet
  mode the process figures (memory, CPU) are the fleet process's, shared by its pipelines;
- the data routes answer Feldera's errors: ``POST /ingress/{table}`` and ``POST /egress/{view}``
  ``ConfigError.UnknownInputStream`` and ``ConfigError.UnknownOutputStream`` (404) for a name the
  program does not declare, ``NotSupported`` (400) for one it does (the process takes no input and
  produces no output), and ``GET /query`` ``AdHocQueryError`` (400: it holds no data to query);
- the control routes (``/start``, ``/pause``, ``/activate``, ``/suspend``, ``/approve``,
  ``POST /checkpoint``, ``POST /checkpoint/sync``, ``/debug/*``) and the data routes
  (``/ingress/*``, ``/egress/*``, ``/query``) require ``Authorization: Bearer <token>`` when the
  environment variable ``PIPELINE_CONTROL_TOKEN`` is set (the backends set it; 401
  ``AuthenticationFailed`` otherwise). Without it they are open, for a process run by hand, and the
  process warns so at start. The reads (``/status``, ``/stats``, ``/metrics``, the checkpoint
  statuses) stay open (a NetworkPolicy limits who reaches the process);
- with ``--debug-routes``, a path no route serves (and a WebSocket ``/query``) echoes the request it got
  (:meth:`ReferencePipeline.handle_echo`), for tests of what a proxy passes on;
- it can be told to fail, for tests and demos, when started with ``--debug-routes`` (or
  ``PIPELINE_DEBUG_ROUTES=1``; otherwise ``/debug/*`` answers 404). ``POST /debug/fail?mode=``:

  - ``panic`` (the default): ``/status`` answers 500 with an ErrorResponse, as a panicked Feldera
    pipeline does, and so do the actions;
  - ``exit``: the process exits with code 70;
  - ``unavailable``: ``/status`` answers 503 ``PipelineBusy``;
  - ``garbage``: ``/status`` answers 200 with bytes that are not JSON (nor even UTF-8);
  - ``nested``: ``/status`` answers 200 with JSON nested 100,000 levels deep;
  - ``endless-header``: ``/status`` answers a status line and then one header field whose value never
    ends: bytes are sent, as fast as the client reads them, until it closes the connection (or the
    fault ends);
  - ``available``: ends ``panic``, ``unavailable``, ``garbage``, ``nested``, ``endless-header`` and
    ``broken``;
  - ``hang``: from the answer to this request on, the process answers nothing at all (it still
    accepts connections; requests on them, and on connections already open, wait forever) until
    it is stopped or killed;
  - ``broken``: every route but ``/debug/*`` answers bytes that are not HTTP, then closes the
    connection, as a process that lost its mind (or something else on its port) does.

Environment knobs (set them in ``spec.deployment.env``): ``PIPELINE_INIT_SECONDS``
(default 1), ``PIPELINE_REPLAY_SECONDS`` (1), ``PIPELINE_SUSPEND_SECONDS`` (0.5),
``PIPELINE_REQUIRE_APPROVAL`` (``1`` to wait in AwaitingApproval), ``PIPELINE_BIND_DELAY_SECONDS``
(0: how long the process takes before it listens, like a slow container start),
``PIPELINE_STOP_DELAY_SECONDS`` (0: how long it takes to stop after SIGTERM),
``PIPELINE_DETAILS_TICK_SECONDS`` (0: off; else a counter in the runtime details advances that
often, so details change without any status change), ``PIPELINE_DETAILS_BYTES`` (0: padding
added to the runtime details, to test the size cap), ``PIPELINE_EXIT_AFTER_SECONDS`` (off: the
process exits with code 70 that long after it starts, to show a crash-looping pod).

In fleet mode (``bench/fleet_process.py``, benchmark tooling) one process serves many such pipelines,
each at a loopback address of its own.

The package's rooms: ``state`` (what the pipeline is and does: :class:`ReferenceState`), ``routes`` (its HTTP
routes: :class:`ReferencePipeline`) and ``main`` (the process: :func:`serve`).
"""

from __future__ import annotations

from .main import pipeline_from_env, read_pipeline_config, serve
from .routes import DEBUG_ROUTES_ENV, TOKEN_ENV, ReferencePipeline
from .state import CHECKPOINT_DIR, ReferenceState, checkpoint_metadata

__all__ = ["CHECKPOINT_DIR", "DEBUG_ROUTES_ENV", "TOKEN_ENV", "ReferencePipeline", "ReferenceState",
           "checkpoint_metadata", "pipeline_from_env", "read_pipeline_config", "serve"]
