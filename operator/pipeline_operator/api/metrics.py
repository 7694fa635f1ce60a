"""Prometheus metrics of the operator (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("pipeline_operator_api_requests", "HTTP API requests", ["route", "code"],
                                registry=self.registry)
        self.request_seconds = Histogram("pipeline_operator_api_request_seconds", "HTTP API request duration",
                                         ["route"], registry=self.registry)
        self.reconcile_seconds = Histogram("pipeline_operator_monitoring_pass_seconds",
                                           "Duration of one monitoring pass (observe, decide, record, act)",
                                           registry=self.registry)
        self.events = Counter("pipeline_operator_monitor_events", "Monitor events recorded", ["kind"],
                              registry=self.registry)
        self.pipelines = Gauge("pipeline_operator_pipelines", "Pipelines by resources status",
                               ["resources_status"], registry=self.registry)
        self.store_events = Gauge("pipeline_operator_event_store_events", "Events in the event store",
                                  registry=self.registry)
