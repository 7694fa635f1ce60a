"""Prometheus metrics of the operator (served at ``/metrics``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("pipeline_operator_api_requests", "HTTP API requests", ["route", "code"],
                                registry=self.registry)
        self.request_seconds = Histogram("pipeline_operator_api_request_seconds", "HTTP API request duration",
                                         ["route"], registry=self.registry)
        self.in_flight = Gauge("pipeline_operator_api_requests_in_flight", "HTTP API requests being served "
                               "(probes and metrics are not counted)", registry=self.registry)
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

    def count_kubernetes_events(self, counts: Callable[[], tuple[int, int]]) -> None:
        """Kubernetes Events posted and dropped (``counts`` returns them), read at each scrape."""
        self.registry.register(_KubernetesEvents(counts))

    def watch_event_store(self, stats: Callable[[], dict[str, int]]) -> None:
        """The event store's writer (``stats`` is :meth:`store.EventStorage.stats`), read at each scrape."""
        self.registry.register(_EventStoreWriter(stats))


class _EventStoreWriter(Collector):
    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self.stats()
        yield CounterMetricFamily("pipeline_operator_event_store_dropped", "Monitor events not written to the "
                                  "event store because its queue was full (the store could not keep up or "
                                  "could not write)", value=stats["dropped"])
        yield CounterMetricFamily("pipeline_operator_event_store_write_failures", "Failed commits of the event "
                                  "store (retried)", value=stats["write_failures"])
        yield GaugeMetricFamily("pipeline_operator_event_store_queued", "Monitor events waiting to be written "
                                "to the event store", value=stats["queued"])
        yield CounterMetricFamily("pipeline_operator_event_store_recoveries", "Times the event store was found "
                                  "corrupt, deleted or replaced and started afresh",
                                  value=stats["generation"])


class _KubernetesEvents(Collector):
    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        posted, dropped = self.counts()
        yield CounterMetricFamily("pipeline_operator_kubernetes_events_posted", "Kubernetes Events posted",
                                  value=posted)
        yield CounterMetricFamily("pipeline_operator_kubernetes_events_dropped", "Kubernetes Events dropped "
                                  "(the API server refused them, or too many were waiting)", value=dropped)
