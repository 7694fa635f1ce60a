"""Prometheus metrics of the operator (served at ``/metrics``).

Labels stay bounded: statuses, kinds, error codes, API route templates and namespaces, never a
pipeline's name or a raw request path (a fleet of thousands of pipelines must not become thousands
of series per metric). Per-pipeline facts that alerts need (the oldest provisioning, the longest
Unavailable) are folded into one value per namespace at scrape time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .core.lifecycle import PipelineState
from .models import ResourcesStatus, combined_status

# Lifecycle phases last from well under a second (a local pipeline) to the provisioning timeout and
# beyond (a pod waiting for a node); status times reach days.
_PHASE_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_STATUS_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600)
_HAND_OFF_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5)


@dataclasses.dataclass(frozen=True)
class PipelineSample:
    """What ``/metrics`` shows of one pipeline at a scrape (folded into per-namespace series)."""
    namespace: str
    status: str  # Feldera's combined status
    stalled: bool  # the Stalled condition is True
    provisioning_fraction: float  # time spent Provisioning / its timeout (0 unless Provisioning)
    unavailable_seconds: float  # time the runtime has been Unavailable (0 unless it is)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("pipeline_operator_api_requests", "HTTP API requests", ["route", "code"],
                                registry=self.registry)
        self.request_seconds = Histogram("pipeline_operator_api_request_seconds", "HTTP API request duration",
                                         ["route"], registry=self.registry)
        self.in_flight = Gauge("pipeline_operator_api_requests_in_flight", "HTTP API requests holding one of the "
                               "shared request slots (probes, metrics, streams and uploads hold none)",
                               registry=self.registry)
        self.busy = Counter("pipeline_operator_api_busy", "Requests refused with 503 ApiBusy: no slot within the "
                            "wait bound, by pool (requests, uploads) and by the scope that had none (identity, "
                            "namespace, long, all)", ["pool", "scope"], registry=self.registry)
        self.auth_in_flight = Gauge("pipeline_operator_api_auth_checks_in_flight", "TokenReviews and "
                                    "SubjectAccessReviews under way for the HTTP API", registry=self.registry)
        self.auth_refused = Counter("pipeline_operator_api_auth_refused", "Requests refused before a token "
                                    "check: over the per-client rate (429) or with all check slots busy (503)",
                                    ["reason"], registry=self.registry)
        self.reconcile_seconds = Histogram("pipeline_operator_monitoring_pass_seconds",
                                           "Duration of one monitoring pass (observe, decide, record, act)",
                                           registry=self.registry)
        self.events = Counter("pipeline_operator_monitor_events", "Monitor events recorded", ["kind"],
                              registry=self.registry)
        self.pipelines = Gauge("pipeline_operator_pipelines", "Pipelines by resources status",
                               ["resources_status"], registry=self.registry)
        self.store_events = Gauge("pipeline_operator_event_store_events", "Events in the event store",
                                  registry=self.registry)
        self.status_seconds = Histogram("pipeline_operator_status_seconds", "Time a pipeline spent in a "
                                        "resources or runtime status, observed when it leaves it",
                                        ["kind", "status"], buckets=_STATUS_BUCKETS, registry=self.registry)
        self.provisioning_seconds = Histogram("pipeline_operator_provisioning_seconds", "Time from Provisioning "
                                              "to the next resources status (outcome: Provisioned, or Stopping "
                                              "when it failed, timed out or was stopped)", ["outcome"],
                                              buckets=_PHASE_BUCKETS, registry=self.registry)
        self.stopping_seconds = Histogram("pipeline_operator_stopping_seconds", "Time from Stopping to Stopped",
                                          buckets=_PHASE_BUCKETS, registry=self.registry)
        self.transitions = Counter("pipeline_operator_transitions", "Changes of a pipeline's combined status",
                                   ["from_status", "to_status"], registry=self.registry)
        self.errors = Counter("pipeline_operator_errors_latched", "Errors latched on a pipeline (deployment_error)",
                              ["error_code"], registry=self.registry)
        self.conflicts = Counter("pipeline_operator_status_write_conflicts", "Status writes refused because the "
                                 "Pipeline changed meanwhile (the pass decides again from the fresh object)",
                                 registry=self.registry)
        self.recording_seconds = Histogram("pipeline_operator_event_recording_seconds", "Time a monitoring pass "
                                           "spends handing its monitor events to the event store's queue and the "
                                           "Kubernetes Event poster (neither waits for a write)",
                                           buckets=_HAND_OFF_BUCKETS, registry=self.registry)
        self._samples: list[PipelineSample] = []
        self.registry.register(_PipelineCollector(lambda: self._samples))

    def sample_pipelines(self, samples: Iterable[PipelineSample]) -> None:
        """The pipelines as they are now (set just before each scrape is rendered)."""
        self._samples = list(samples)

    def observe_steps(self, before: PipelineState, steps: Sequence[PipelineState], now: dt.datetime) -> None:
        """Transitions, time in status, phase durations and latched errors of one recorded pass.

        ``steps`` are the states a decision went through at ``now``; each one that changed a status
        closes the previous status, which began at its ``*_since`` stamp (kept in the Pipeline's
        status, so a restarted operator measures what began before it)."""
        prev = before
        for cur in steps:
            old = combined_status(prev.deployment_resources_status, prev.deployment_runtime_status)
            new = combined_status(cur.deployment_resources_status, cur.deployment_runtime_status)
            if old != new:
                self.transitions.labels(old.value, new.value).inc()
            resources, since = prev.deployment_resources_status, prev.deployment_resources_status_since
            if resources != cur.deployment_resources_status and since is not None:
                took = max(0.0, (now - since).total_seconds())
                self.status_seconds.labels("resources", resources.value).observe(took)
                if resources is ResourcesStatus.PROVISIONING:
                    self.provisioning_seconds.labels(cur.deployment_resources_status.value).observe(took)
                elif resources is ResourcesStatus.STOPPING:
                    self.stopping_seconds.observe(took)
            runtime, since = prev.deployment_runtime_status, prev.deployment_runtime_status_since
            if runtime is not None and runtime != cur.deployment_runtime_status and since is not None:
                self.status_seconds.labels("runtime", runtime.value).observe(max(0.0, (now - since).total_seconds()))
            error, was = cur.deployment_error, prev.deployment_error
            if error is not None and (was is None or was.error_code != error.error_code):
                self.errors.labels(error.error_code).inc()
            prev = cur

    def count_kubernetes_events(self, counts: Callable[[], tuple[int, int, int]]) -> None:
        """Kubernetes Events posted, dropped and waiting to be posted (``counts`` returns them), read at each
        scrape."""
        self.registry.register(_KubernetesEvents(counts))

    def watch_event_store(self, stats: Callable[[], dict[str, int]],
                          commits: Callable[[], tuple[list[tuple[float, int]], float]]) -> None:
        """The event store's writer (``stats`` and ``commits`` are :meth:`store.EventStorage.stats` and
        :meth:`~store.EventStorage.commit_seconds`), read at each scrape."""
        self.registry.register(_EventStoreWriter(stats, commits))


class _PipelineCollector(Collector):
    """Per-namespace series computed from the latest :class:`PipelineSample` list: a namespace
    without pipelines disappears rather than lingering at its last value."""

    def __init__(self, samples: Callable[[], Sequence[PipelineSample]]) -> None:
        self.samples = samples

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_status: dict[tuple[str, str], int] = {}
        stalled: dict[str, int] = {}
        provisioning: dict[str, float] = {}
        unavailable: dict[str, float] = {}
        for s in self.samples():
            by_status[(s.namespace, s.status)] = by_status.get((s.namespace, s.status), 0) + 1
            stalled[s.namespace] = stalled.get(s.namespace, 0) + s.stalled
            provisioning[s.namespace] = max(provisioning.get(s.namespace, 0.0), s.provisioning_fraction)
            unavailable[s.namespace] = max(unavailable.get(s.namespace, 0.0), s.unavailable_seconds)
        family = GaugeMetricFamily("pipeline_operator_pipelines_by_status", "Pipelines by namespace and "
                                   "combined status (Feldera's deployment_status)", labels=["namespace", "status"])
        for (namespace, status), count in sorted(by_status.items()):
            family.add_metric([namespace, status], count)
        yield family
        for name, doc, values in (
                ("pipeline_operator_pipelines_stalled", "Pipelines whose Stalled condition is True (an error is "
                 "latched or the program failed)", stalled),
                ("pipeline_operator_provisioning_timeout_ratio", "Longest time a pipeline of the namespace has "
                 "been Provisioning, as a fraction of its provisioning timeout (1 = it times out)", provisioning),
                ("pipeline_operator_runtime_unavailable_seconds", "Longest time a pipeline of the namespace has "
                 "had its runtime status Unavailable", unavailable)):
            family = GaugeMetricFamily(name, doc, labels=["namespace"])
            for namespace, value in sorted(values.items()):
                family.add_metric([namespace], value)
            yield family


class _EventStoreWriter(Collector):
    def __init__(self, stats: Callable[[], dict[str, int]],
                 commits: Callable[[], tuple[list[tuple[float, int]], float]]) -> None:
        self.stats = stats
        self.commits = commits

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        buckets, total = self.commits()
        yield HistogramMetricFamily("pipeline_operator_event_store_commit_seconds", "Duration of the event store "
                                    "writer's transactions (each writes what was queued, up to 5,000 events)",
                                    buckets=[("+Inf" if math.isinf(bound) else str(bound), count)
                                             for bound, count in buckets],
                                    sum_value=total)
        stats = self.stats()
        yield CounterMetricFamily("pipeline_operator_event_store_dropped", "Monitor events not written to the "
                                  "event store because its queue was full (the store could not keep up or "
                                  "could not write)", value=stats["dropped"])
        yield CounterMetricFamily("pipeline_operator_event_store_write_failures", "Failed commits of the event "
                                  "store (retried)", value=stats["write_failures"])
        yield CounterMetricFamily("pipeline_operator_event_store_appended", "Monitor events written to the "
                                  "event store", value=stats["appended"])
        yield GaugeMetricFamily("pipeline_operator_event_store_queued", "Monitor events waiting to be written "
                                "to the event store", value=stats["queued"])
        yield CounterMetricFamily("pipeline_operator_event_store_recoveries", "Times the event store was found "
                                  "corrupt, deleted or replaced and started afresh",
                                  value=stats["generation"])


class _KubernetesEvents(Collector):
    def __init__(self, counts: Callable[[], tuple[int, int, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        posted, dropped, queued = self.counts()
        yield CounterMetricFamily("pipeline_operator_kubernetes_events_posted", "Kubernetes Events posted",
                                  value=posted)
        yield CounterMetricFamily("pipeline_operator_kubernetes_events_dropped", "Kubernetes Events dropped "
                                  "(the API server refused them, or too many were waiting)", value=dropped)
        yield GaugeMetricFamily("pipeline_operator_kubernetes_events_queued", "Kubernetes Events waiting to be "
                                "posted", value=queued)
