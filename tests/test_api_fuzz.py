"""schemathesis against the HTTP API's own OpenAPI document: no answer is a server error.

A file of its own: the fuzzing takes minutes of CPU, and the suite's workers take one file each at a time.
"""

from __future__ import annotations

import json
import re

import pytest

from .test_api import call
from .test_operator_lifecycle import FAST_PIPELINE, SQL

pytestmark = pytest.mark.apiserver


def test_fuzzing_the_api_finds_no_server_error(operators, pipelines, namespace, kstatus, tmp_path):
    """schemathesis against the API's own OpenAPI document (which the server serves)."""
    import shutil
    import subprocess
    import sys
    op = operators(namespace, "--api-auth", "none", "--api-default-namespace", namespace)
    pipelines.create("orders", {"desiredStatus": "Provisioned", "program": {"sql": SQL},
                                "deployment": {"env": FAST_PIPELINE}})
    pipelines.wait_status("orders", op, deploymentStatus="Running")
    document = call(f"{op.api_url}/v0/openapi.json")[1]
    assert "/v0/pipelines/{pipeline_name}/events" in document["paths"]
    # API keys are Feldera's, and a 501 by design (Kubernetes' tokens are the keys): not fuzzed.
    document["paths"] = {p: item for p, item in document["paths"].items() if not p.startswith("/v0/api_keys")}
    # Aim the generated names at the pipeline that exists (and one that does not), so that the
    # examples reach the handlers' logic rather than stopping at 404.
    for item in document["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "pipeline_name":
                    parameter["schema"] = {"type": "string", "enum": ["orders", "missing"]}
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(document))
    exe = shutil.which("schemathesis", path=str(__import__("pathlib").Path(sys.executable).parent))
    res = subprocess.run([exe, "run", str(schema), "--url", op.api_url, "--checks", "not_a_server_error",
                          "--max-examples", "25", "--request-timeout", "10", "--no-color"],
                         capture_output=True, text=True, timeout=900)
    # A documented 503 (e.g. PipelineInteractionNotDeployed once a fuzzed /stop stopped it) is an
    # answer; a 500 is a bug.
    assert "Fuzzing" in res.stdout and "Stateful" in res.stdout, res.stdout[-4000:] + res.stderr[-2000:]
    server_errors = re.findall(r"\[(5\d\d)\]", res.stdout)
    assert set(server_errors) <= {"503"}, res.stdout[-6000:]
    op.assert_alive()
    assert "Traceback" not in op.log()
