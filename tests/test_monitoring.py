"""deploy/monitoring/: the alerts pass ``promtool check rules`` and their unit tests, every dashboard query
parses, and the chart and kustomize render the same objects from one source."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline_operator_dev import promtool as promtool_build

from .test_metrics import dashboard_queries

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "deploy" / "monitoring"
CHART = REPO / "charts" / "pipeline-operator"
IMAGE = ("--set", "image.repository=localhost/pipeline-operator")
ENABLED = ("--set", "monitoring.prometheusRule.enabled=true", "--set", "monitoring.dashboard.enabled=true",
           "--set", "monitoring.serviceMonitor.enabled=true")
MONITORING_KINDS = {"PrometheusRule", "ServiceMonitor"}
# Grafana's variables, as Grafana substitutes them before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$namespace": ".*"}


@pytest.fixture(scope="session")
def promtool() -> Path:
    """promtool built from the Prometheus Go module (cached with the control plane's binaries). Without Go
    and without a cached build the tests that need it are skipped, except in CI (``CI=true``): there
    that is a failure, not a silent skip."""
    if not os.environ.get("PROMTOOL") and not promtool_build.cached_path().exists() \
            and not promtool_build.go_available():
        reason = "promtool is not built and there is no Go toolchain on the PATH to build it"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    return promtool_build.ensure_promtool()


def run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, cwd=cwd)


def rule_spec() -> dict:
    return yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]


def test_chart_files_are_the_monitoring_sources():
    for name in ("prometheusrule.yaml", "grafana-dashboard.json"):
        assert (CHART / "files" / name).read_text() == (MONITORING / name).read_text(), \
            f"copy deploy/monitoring/{name} to charts/pipeline-operator/files/"


def test_promtool_checks_the_alert_rules(promtool, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_spec()))
    res = run(promtool, "check", "rules", rules)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 4 rules found" in res.stdout, res.stdout


def test_promtool_parses_every_dashboard_query(promtool, tmp_path):
    """Each panel's query, as Grafana sends it, checked as a recording rule: a typo fails here, not in Grafana."""
    exprs = []
    for expr in dashboard_queries():
        if expr.startswith("label_values("):  # Grafana's own function: the metric is checked in test_metrics
            continue
        for variable, replacement in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, replacement)
        assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
        exprs.append(expr)
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query{i}", "expr": e}
                                                         for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard.yaml"
    path.write_text(yaml.safe_dump(rules))
    res = run(promtool, "check", "rules", path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in res.stdout


ALERT_TESTS = """
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # Unavailable for 4 minutes at 3m, 6 at 5m: the alert fires from the first sample above 300 s.
      - series: 'pipeline_operator_runtime_unavailable_seconds{namespace="analytics"}'
        values: '60+60x10'
      - series: 'pipeline_operator_runtime_unavailable_seconds{namespace="quiet"}'
        values: '0x10'
      - series: 'pipeline_operator_provisioning_timeout_ratio{namespace="analytics"}'
        values: '0.1 0.3 0.6 0.9'
      - series: 'pipeline_operator_event_store_dropped_total{job="pipeline-operator"}'
        values: '0 0 0 5 5'
      - series: 'pipeline_operator_pipelines_stalled{namespace="analytics"}'
        values: '0 1 1 1 1'
    alert_rule_test:
      - eval_time: 3m
        alertname: PipelineRuntimeUnavailable
        exp_alerts: []
      - eval_time: 5m
        alertname: PipelineRuntimeUnavailable
        exp_alerts:
          - exp_labels: {severity: critical, namespace: analytics}
            exp_annotations:
              summary: "A pipeline in analytics has been Unavailable for 6m 0s"
              description: >-
                A provisioned pipeline's runtime has not answered for more than 5 minutes (its process
                or pod is down, restarting or unreachable). Its monitor events and the pod's status
                say why.
      - eval_time: 1m
        alertname: PipelineProvisioningSlow
        exp_alerts: []
      - eval_time: 2m
        alertname: PipelineProvisioningSlow
        exp_alerts:
          - exp_labels: {severity: warning, namespace: analytics}
            exp_annotations:
              summary: "A pipeline in analytics has used 60% of its provisioning timeout"
              description: >-
                A pipeline has been Provisioning for more than half of its provisioning timeout
                (spec.deployment.provisioningTimeoutSeconds, else --provisioning-timeout). Its pod's
                events usually say what it waits for: scheduling, an image pull, a volume.
      - eval_time: 2m
        alertname: PipelineEventStoreDropping
        exp_alerts: []
      - eval_time: 4m
        alertname: PipelineEventStoreDropping
        exp_alerts:
          - exp_labels: {severity: warning, job: pipeline-operator}
            exp_annotations:
              summary: "The pipeline operator's event store is dropping monitor events"
              description: >-
                The event store could not keep up or could not write (a full or read-only volume, an
                unreachable PostgreSQL server), and its queue reached --event-store-queue-limit. The
                operator's log says why; pipeline_operator_event_store_write_failures_total counts the
                failed commits.
      - eval_time: 2m
        alertname: PipelineStalled
        exp_alerts: []
      - eval_time: 3m
        alertname: PipelineStalled
        exp_alerts:
          - exp_labels: {severity: warning, namespace: analytics}
            exp_annotations:
              summary: "1 pipeline(s) in analytics are Stalled"
              description: >-
                A pipeline's Stalled condition is True (an error is latched or its program failed).
                `kubectl get pipelines -n analytics` shows which, and status.deploymentError why.
"""


def test_promtool_unit_tests_of_the_alerts(promtool, tmp_path):
    """Each alert fires when it should and not before, with the labels and text a receiver gets."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_spec()))
    (tmp_path / "alerts_test.yaml").write_text(ALERT_TESTS)
    res = run(promtool, "test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def helm_template(binaries, tmp_path: Path, *values: str) -> list[dict]:
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([str(binaries.helm), "template", "pipeline-operator", str(CHART), "-n", "ops", *IMAGE,
                          *values], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


@pytest.mark.apiserver  # the control-plane binaries (helm, kubectl)
def test_chart_lints_with_monitoring_enabled_and_refuses_a_typo(binaries, tmp_path):
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([str(binaries.helm), "lint", "--strict", str(CHART), *IMAGE, *ENABLED], capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 0 and "0 chart(s) failed" in res.stdout, res.stdout + res.stderr
    res = subprocess.run([str(binaries.helm), "template", "x", str(CHART), *IMAGE, "--set",
                          "monitoring.serviceMonitor.intervl=1m"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode != 0 and "intervl" in res.stderr


@pytest.mark.apiserver  # the control-plane binaries (helm, kubectl)
def test_chart_renders_monitoring_only_when_enabled(binaries, tmp_path):
    default = helm_template(binaries, tmp_path)
    assert not {o["kind"] for o in default} & MONITORING_KINDS
    assert not [o for o in default if "grafana_dashboard" in o["metadata"].get("labels", {})]

    objects = helm_template(binaries, tmp_path, *ENABLED, "--set", "monitoring.prometheusRule.labels.release=prom")
    by_kind = {o["kind"]: o for o in objects if o["kind"] in MONITORING_KINDS}
    rule = by_kind["PrometheusRule"]
    assert rule["spec"] == rule_spec() and rule["metadata"]["labels"]["release"] == "prom"
    assert rule["metadata"]["namespace"] == "ops"
    board = next(o for o in objects
                 if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "pipeline-operator-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["grafana-dashboard.json"]) == \
        json.loads((MONITORING / "grafana-dashboard.json").read_text())
    monitor = by_kind["ServiceMonitor"]
    service = next(o for o in objects if o["kind"] == "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["honorLabels"] is True and "scheme" not in endpoint
    # /metrics needs a token (--metrics-auth kubernetes): Prometheus's own, allowed by the metrics reader role.
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    reader = next(o for o in objects if o["kind"] == "ClusterRole" and "metrics-reader" in o["metadata"]["name"])
    assert reader["metadata"]["name"] == "pipeline-operator-metrics-reader-ops"
    assert reader["rules"] == yaml.safe_load((MONITORING / "metrics-reader.yaml").read_text())["rules"] == [
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    assert not [o for o in objects if o["kind"] == "ClusterRoleBinding" and "metrics-reader" in o["metadata"]["name"]]
    subject = {"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"}
    bound = helm_template(binaries, tmp_path, *ENABLED,
                          "--set", "monitoring.metricsReader.subjects[0].kind=ServiceAccount",
                          "--set", "monitoring.metricsReader.subjects[0].name=prometheus-k8s",
                          "--set", "monitoring.metricsReader.subjects[0].namespace=monitoring",
                          "--set", "monitoring.serviceMonitor.authorization.credentials.name=prom-token",
                          "--set", "monitoring.serviceMonitor.authorization.credentials.key=token")
    binding = next(o for o in bound if o["kind"] == "ClusterRoleBinding" and "metrics-reader" in o["metadata"]["name"])
    assert binding["subjects"] == [subject] and binding["roleRef"]["name"] == reader["metadata"]["name"]
    (endpoint,) = next(o for o in bound if o["kind"] == "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"] == {"credentials": {"name": "prom-token", "key": "token"}}
    assert "bearerTokenFile" not in endpoint
    # Served to anyone (--metrics-auth none): no token sent, no role rendered.
    plain = helm_template(binaries, tmp_path, *ENABLED, "--set", "api.metricsAuth=none")
    (endpoint,) = next(o for o in plain if o["kind"] == "ServiceMonitor")["spec"]["endpoints"]
    assert "bearerTokenFile" not in endpoint and "authorization" not in endpoint
    assert not [o for o in plain if "metrics-reader" in o["metadata"]["name"]]
    assert "--metrics-auth=none" in next(o for o in plain if o["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"][0]["args"]

    tls = helm_template(binaries, tmp_path, *ENABLED, "--set", "api.tls.secretName=operator-tls",
                        "--set", "monitoring.serviceMonitor.tlsConfig.insecureSkipVerify=true")
    (endpoint,) = next(o for o in tls if o["kind"] == "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"] == {"insecureSkipVerify": True}


@pytest.mark.apiserver  # the control-plane binaries (helm, kubectl)
def test_kustomize_renders_the_same_monitoring_objects(binaries):
    res = run(binaries.kubectl, "kustomize", MONITORING)
    assert res.returncode == 0, res.stderr
    objects = {o["kind"]: o for o in yaml.safe_load_all(res.stdout) if o}
    assert set(objects) == {"PrometheusRule", "ServiceMonitor", "ConfigMap", "ClusterRole"}
    assert objects["ClusterRole"]["metadata"]["name"] == "pipeline-operator-metrics-reader"
    assert objects["ServiceMonitor"]["spec"]["endpoints"][0]["bearerTokenFile"] == \
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert objects["PrometheusRule"]["spec"] == rule_spec()
    board = objects["ConfigMap"]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["grafana-dashboard.json"]) == \
        json.loads((MONITORING / "grafana-dashboard.json").read_text())
    service = yaml.safe_load((REPO / "deploy" / "base" / "service.yaml").read_text())
    monitor = objects["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["honorLabels"] is True
