"""The operator's HTTP API: Feldera-compatible pipelines, monitor events and lifecycle actions.

- :mod:`.server`: the aiohttp application, authentication and authorization, health, metrics,
  and the monitor events;
- :mod:`.pipelines`: Feldera's pipeline shape and pipeline CRUD (server-side apply of the
  Pipeline resource);
- :mod:`.actions`: the lifecycle actions (``/start``, ``/stop``, ``/pause``, ...), checked by the
  pure core's guards and forwarded to the pipeline where Feldera forwards them.
- :mod:`.interaction`: the routes passed through to the pipeline, its logs, and the ad-hoc query's WebSocket;
- :mod:`.manager`: the routes Feldera's manager answers itself, and the ones Kubernetes rules out;
- :mod:`.support_bundle`: Feldera's support bundle, assembled by the operator;
- :mod:`.ui`: ``/ui``, a read-only HTML page of the tenant's pipelines and one pipeline's status
  timeline (server-rendered SVG, no scripts).
"""

from ..metrics import Metrics
from .errors import ApiError
from .server import ApiDeps, ApiServer

__all__ = ["ApiDeps", "ApiError", "ApiServer", "Metrics"]
