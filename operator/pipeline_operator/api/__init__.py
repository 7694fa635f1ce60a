"""The operator's HTTP API: Feldera-compatible pipelines, monitor events and lifecycle actions.

- :mod:`.server`: the aiohttp application, assembled from the rooms below, its errors and its audit log;
- :mod:`.deps`: what the API uses of the rest of the operator (:class:`ApiDeps`) and the protocols it sees it
  through;
- :mod:`.auth`: authentication, authorization and the fair request slots;
- :mod:`.errors`: errors answered as Feldera's ErrorResponse;
- :mod:`.health`: probes, ``/metrics``, the configuration and Feldera's cluster health;
- :mod:`.monitor_events`: the monitor events, listed, read and followed (:mod:`.follow`);
- :mod:`.pipeline_shape`: Feldera's pipeline shape, read from a Pipeline and read into its spec;
- :mod:`.pipelines`: pipeline CRUD (server-side apply of the Pipeline resource);
- :mod:`.writes`: writing as the API's field manager and waiting for the monitoring loop;
- :mod:`.actions`: the lifecycle actions (``/start``, ``/stop``, ``/pause``, ...), checked by the
  pure core's guards and forwarded to the pipeline where Feldera forwards them.
- :mod:`.interaction`: the routes passed through to the pipeline, its logs, and the ad-hoc query's WebSocket;
- :mod:`.manager`: the routes Feldera's manager answers itself, and the ones Kubernetes rules out;
- :mod:`.support_bundle`: Feldera's support bundle, assembled by the operator;
- :mod:`.ui`: ``/ui``, a read-only HTML page of the tenant's pipelines and one pipeline's status
  timeline (server-rendered SVG, no scripts).
"""

from ..metrics import Metrics
from .deps import ApiDeps
from .errors import ApiError
from .server import ApiServer

__all__ = ["ApiDeps", "ApiError", "ApiServer", "Metrics"]
