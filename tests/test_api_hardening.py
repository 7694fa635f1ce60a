"""The HTTP API under abuse and failure: probes that never wait, bounded and rate-limited token
checks, token audiences, per-pipeline RBAC, TLS, the audit trail, and bad requests.

The operator and the API server are real; where a test needs the API server to be slow or away,
the operator's own Kubernetes client talks to a socket that never answers or to a closed port.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import kubernetes
import pytest
from aiohttp.test_utils import TestClient, TestServer
from feldera import FelderaClient
from feldera.enums import PipelineFieldSelector
from feldera.rest.pipeline import Pipeline as InnerPipeline

from pipeline_operator.api import ApiDeps, ApiServer, Metrics
from pipeline_operator.kube.client import KubeClient
from pipeline_operator_dev.controlplane import free_port

from .operator_harness import wait_for
from .test_api import call, feldera_client, grant
from .test_operator_lifecycle import FAST_PIPELINE, SQL

# -- helpers -----------------------------------------------------------------------------------------


def ready(op) -> None:
    def probe() -> bool:
        try:
            return call(f"{op.api_url}/readyz")[0] == 200
        except OSError:  # not listening yet
            return False
    wait_for("the API", probe, 60, operator=op)


async def until(condition, what: str) -> None:
    """Wait for a condition of another thread or task, with a generous deadline."""
    deadline = asyncio.get_running_loop().time() + 60.0
    while True:
        if condition():
            return
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def raw_request(port: int, data: bytes) -> tuple[int, dict, bytes]:
    """Send bytes as they are (no client library would send these) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n")
                               if h.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    break
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.strip().lower().decode(): v.strip().decode()
               for k, _, v in (h.partition(b":") for h in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def feldera_error(body: bytes) -> dict:
    parsed = json.loads(body)
    assert set(parsed) >= {"message", "error_code"}, parsed
    return parsed


@pytest.fixture
def api(operators, namespace, cluster):
    """An operator whose API alice may use for everything in the namespace."""
    op = operators(namespace, "--log-format", "json")
    grant(cluster, namespace, "alice", "get,list,patch,create,update,delete")
    ready(op)
    return op


# -- 1. one user cannot hang the others; probes never wait -------------------------------------------------


@pytest.mark.apiserver
def test_a_user_holding_requests_cannot_hang_others_and_probes_answer(operators, cluster, namespace):
    op = operators(namespace, "--log-format", "json", "--api-max-concurrency-per-identity", "4",
                   "--api-queue-timeout", "1")
    grant(cluster, namespace, "alice", "get,list,patch,create,update,delete")
    grant(cluster, namespace, "bob", "get,list")
    ready(op)
    alice, bob = cluster.plane.users["alice"].token, cluster.plane.users["bob"].token
    url = f"{op.api_url}/v0/pipelines"
    held = []
    try:
        # Authenticated creates whose bodies never arrive: alice's whole share (the old limit was one pool of
        # 64 for everyone, with a queue without end behind it).
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", op.api_port), timeout=30)
            s.sendall(f"POST /v0/pipelines HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\n"
                      f"Feldera-Tenant: {namespace}\r\nContent-Type: application/json\r\n"
                      "Content-Length: 1000\r\n\r\n{".encode())
            held.append(s)
        # Her next request waits for one of hers, at most a second, then 503 ApiBusy.
        status, headers, body = wait_for("alice's share to be taken", lambda: (
            answer := raw_request(op.api_port, f"GET /v0/pipelines HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                                                f"{alice}\r\nFeldera-Tenant: {namespace}\r\nConnection: close\r\n"
                                                "\r\n".encode()))[0] == 503 and answer, 60, operator=op)
        error = feldera_error(body)
        assert error["error_code"] == "ApiBusy" and error["details"]["scope"] == "identity", error
        assert int(headers["retry-after"]) >= 1
        # Everyone else is served at once, and so are the probes.
        started = time.monotonic()
        assert call(url, bob, namespace) == (200, [])
        assert time.monotonic() - started < 1
        assert call(f"{op.api_url}/healthz") == (200, {"status": "ok"})
        assert call(f"{op.api_url}/readyz")[0] == 200
    finally:
        for s in held:
            s.close()
    wait_for("alice to be served again", lambda: call(url, alice, namespace)[0] == 200, 60, operator=op)
    op.assert_alive()


# -- 2. authentication cannot starve reconciliation ----------------------------------------------------


@pytest.mark.apiserver
def test_unknown_tokens_are_rate_limited_per_client_address(api, cluster, namespace):
    url = f"{api.api_url}/v0/pipelines"

    def attempt(i: int) -> tuple[int, dict, str | None]:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer not-a-token-{i}",
                                                       "Feldera-Tenant": namespace})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, {}, None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read()), exc.headers.get("Retry-After")

    answers = []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        # The default rate is 10 per second with bursts of 20: 400 unknown tokens sent as fast as
        # 8 clients can cannot all be checked.
        for answer in pool.map(attempt, range(400)):
            answers.append(answer)
    limited = [a for a in answers if a[0] == 429]
    assert limited, sorted({a[0] for a in answers})
    status, body, retry_after = limited[0]
    assert body["error_code"] == "TooManyRequests" and "per second" in body["message"]
    assert retry_after is not None and int(retry_after) >= 1
    assert {a[0] for a in answers} <= {401, 429}
    # The limit passes: a valid token is accepted again once the bucket refilled.
    alice = cluster.plane.users["alice"].token
    wait_for("alice to be served again", lambda: call(url, alice, namespace)[0] == 200, 30, operator=api)
    api.assert_alive()


class Silent:
    """A TCP listener that accepts connections and never answers: an API server that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)
            if self.closed:
                conn.close()

    def close(self) -> None:
        """Refuse and reset everything from now on (shutdown wakes the thread blocked in accept)."""
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def kube_at(port: int) -> KubeClient:
    configuration = kubernetes.client.Configuration()
    configuration.host = f"https://127.0.0.1:{port}"
    configuration.verify_ssl = False
    configuration.retries = 0
    return KubeClient(configuration)


def server_with(kube: KubeClient, **kwargs) -> ApiServer:
    class Nothing:
        def get(self, namespace, name):
            return None

        def in_namespace(self, namespace):
            return []

        def all(self):
            return []
    deps = ApiDeps(pipelines=Nothing(), events=None, kube=kube, endpoint=lambda key: None,  # type: ignore[arg-type]
                   runtime=None, artifact=lambda digest: None, metrics=Metrics())  # type: ignore[arg-type]
    return ApiServer(deps, default_namespace="ns", **kwargs)


def test_token_checks_have_bounded_capacity_and_answer_busy():
    silent = Silent()
    kube = kube_at(silent.port)
    server = server_with(kube, auth_concurrency=1, review_timeout=120)

    async def scenario():
        async with TestClient(TestServer(server.app())) as client:
            def get(token):
                return asyncio.ensure_future(client.get("/v0/pipelines",
                                                        headers={"Authorization": f"Bearer {token}"}))
            first = get("token-1")  # its TokenReview hangs in the one slot
            await until(lambda: silent.accepted, "the TokenReview to reach the API server")
            second = get("token-2")  # waits for the slot (the queue is as long as the capacity)
            await until(lambda: server.gate._auth_waiting >= 1, "the second check to wait for the slot")
            third = await client.get("/v0/pipelines", headers={"Authorization": "Bearer token-3"})
            busy = third.status, await third.json(), third.headers.get("Retry-After")
            health = await client.get("/healthz")
            silent.close()  # the API server goes away: the waiting checks fail, as 503
            answers = [await first, await second]
            return busy, health.status, [(r.status, (await r.json())["error_code"]) for r in answers]
    try:
        (status, body, retry_after), health, answers = asyncio.run(scenario())
    finally:
        silent.close()
        asyncio.run(kube.close())
    assert status == 503 and body["error_code"] == "AuthenticationBusy" and retry_after == "1"
    assert health == 200
    assert answers == [(503, "AuthenticationUnavailable")] * 2


def test_failed_reviews_and_kubernetes_calls_are_503_never_500():
    """Connection refused is not an ApiException; it is still "cannot check now", not a bug."""
    kube = kube_at(free_port())
    authenticated = server_with(kube)
    open_api = server_with(kube, auth="none")

    async def scenario():
        answers = []
        async with TestClient(TestServer(authenticated.app())) as client:
            for _ in range(2):  # a failure is not remembered: the second request asks again
                r = await client.get("/v0/pipelines", headers={"Authorization": "Bearer some-token"})
                answers.append((r.status, (await r.json())["error_code"], r.headers.get("Retry-After")))
        async with TestClient(TestServer(open_api.app())) as client:
            r = await client.patch("/v0/pipelines/orders", json={"description": "x"})
            answers.append((r.status, (await r.json())["error_code"], r.headers.get("Retry-After")))
        return answers
    try:
        answers = asyncio.run(scenario())
    finally:
        asyncio.run(kube.close())
    assert answers == [(503, "AuthenticationUnavailable", "5")] * 2 + [(503, "KubernetesUnavailable", "5")]


# -- 3. tokens ----------------------------------------------------------------------------------------------


@pytest.mark.apiserver
def test_tokens_must_be_minted_for_the_operators_audience(api, cluster, namespace):
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    cluster.kubectl("create", "role", "read-pipelines", "-n", namespace, "--verb=get,list",
                    "--resource=pipelines.dataflow.dev")
    cluster.kubectl("create", "rolebinding", "read-pipelines", "-n", namespace, "--role=read-pipelines",
                    f"--serviceaccount={namespace}:reader")
    # A token for the Kubernetes API itself (the audience of a pod's own service-account token) is
    # valid for the API server, but not here. (The test API server lists `pipeline-operator` among
    # its default audiences, so a token minted without --audience would be valid for both.)
    for_kubernetes = cluster.kubectl("create", "token", "reader", "-n", namespace, "--audience",
                                     cluster.plane.server).stdout.strip()
    minted = cluster.kubectl("create", "token", "reader", "-n", namespace, "--audience",
                             "pipeline-operator").stdout.strip()
    reader = kubernetes_reads(cluster, for_kubernetes, namespace)
    assert reader == 200  # the token is good, for its audience
    status, body = call(f"{api.api_url}/v0/pipelines", for_kubernetes, namespace)
    assert status == 401 and body["error_code"] == "Unauthorized"
    assert "kubectl create token NAME --audience pipeline-operator" in body["message"]
    client = feldera_client(api.api_url, minted, namespace)
    assert client.pipelines() == []


def kubernetes_reads(cluster, token: str, namespace: str) -> int:
    """The API server's answer to listing pipelines with ``token``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(f"{cluster.plane.server}/apis/dataflow.dev/v1alpha1/namespaces/{namespace}/"
                                     "pipelines", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.apiserver
def test_rbac_resource_names_limit_access_to_one_pipeline(api, cluster, namespace, pipelines):
    for name in ("orders", "payroll"):
        pipelines.create(name, {"desiredStatus": "Stopped", "program": {"sql": SQL}})
    cluster.kubectl("create", "role", "orders-only", "-n", namespace, "--verb=get",
                    "--resource=pipelines.dataflow.dev", "--resource-name=orders")
    cluster.kubectl("create", "rolebinding", "orders-only", "-n", namespace, "--role=orders-only", "--user=bob")
    bob = cluster.plane.users["bob"].token
    wait_for("orders to be served to bob",
             lambda: call(f"{api.api_url}/v0/pipelines/orders", bob, namespace)[0] == 200, 30, operator=api)
    status, body = call(f"{api.api_url}/v0/pipelines/payroll", bob, namespace)
    assert status == 403 and "payroll" in body["message"]
    assert call(f"{api.api_url}/v0/pipelines", bob, namespace)[0] == 403  # listing is not getting one
    client = feldera_client(api.api_url, bob, namespace)
    assert client.get_pipeline("orders", PipelineFieldSelector.STATUS).name == "orders"


@pytest.mark.apiserver
def test_a_service_account_without_a_tenant_header_works_in_its_own_namespace(api, cluster, namespace, pipelines):
    """Feldera's clients of v0.306 send no ``Feldera-Tenant`` unless told to (``fda`` cannot; a script in a pod):
    a service account's token then means its own namespace, for reads and writes; any other user keeps the
    default namespace, and the header, when sent, wins."""
    pipelines.create("orders", {"desiredStatus": "Stopped", "program": {"sql": SQL}})
    cluster.kubectl("create", "serviceaccount", "etl", "-n", namespace)
    cluster.kubectl("create", "role", "etl", "-n", namespace, "--verb=get,list,create,update,patch,delete",
                    "--resource=pipelines.dataflow.dev")
    cluster.kubectl("create", "rolebinding", "etl", "-n", namespace, "--role=etl", f"--serviceaccount={namespace}:etl")
    token = cluster.kubectl("create", "token", "etl", "-n", namespace, "--audience", "pipeline-operator").stdout.strip()
    client = FelderaClient(api.api_url, api_key=token)  # the SDK as its users write it: no tenant header
    assert "Feldera-Tenant" not in client.http.headers
    assert wait_for("orders to be listed", lambda: [p.name for p in client.pipelines()], 30, operator=api) == ["orders"]
    assert client.get_pipeline("orders", PipelineFieldSelector.STATUS).name == "orders"
    client.create_pipeline(InnerPipeline("loads", sql=SQL, udf_rust="", udf_toml="", program_config={},
                                         runtime_config={}), wait=False)
    assert json.loads(cluster.kubectl("get", "pipeline", "loads", "-n", namespace, "-o", "json").stdout)[
        "spec"]["program"]["sql"] == SQL
    # Anyone else without the header: the default namespace, where alice may do nothing.
    status, body = call(f"{api.api_url}/v0/pipelines", cluster.plane.users["alice"].token)
    assert status == 403 and "namespace 'default'" in body["message"], body
    # The header wins over the service account's namespace.
    status, body = call(f"{api.api_url}/v0/pipelines", token, "default")
    assert status == 403 and "namespace 'default'" in body["message"], body
    assert call(f"{api.api_url}/v0/pipelines")[0] == 401  # no token, no namespace to guess


def self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pipeline-operator")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.apiserver
def test_tls_serves_https_with_the_given_certificate(operators, cluster, namespace, tmp_path):
    cert, key = self_signed(tmp_path)
    op = operators(namespace, "--api-tls-cert", str(cert), "--api-tls-key", str(key))
    grant(cluster, namespace, "alice", "get,list")
    url = f"https://127.0.0.1:{op.api_port}"
    context = ssl.create_default_context(cafile=str(cert))

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=10, context=context) as r:
                return r.status == 200
        except OSError:
            return False
    wait_for("the API over TLS", healthy, 30, operator=op)
    client = feldera_client(url, cluster.plane.users["alice"].token, namespace,
                           requests_verify=str(cert))
    assert client.pipelines() == []
    with pytest.raises(ssl.SSLError), warnings.catch_warnings():  # TLS 1.2 at least
        warnings.simplefilter("ignore", DeprecationWarning)  # asking for TLS 1.1 is the point
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(str(cert))
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection(("127.0.0.1", op.api_port), timeout=10) as s:
            old.wrap_socket(s, server_hostname="127.0.0.1")


# -- 4. audit -----------------------------------------------------------------------------------------------


@pytest.mark.apiserver
def test_a_start_is_audited_and_its_events_name_the_requester(api, cluster, namespace, pipelines, kstatus):
    pipelines.create("orders", {"desiredStatus": "Stopped", "program": {"sql": SQL},
                                "deployment": {"env": FAST_PIPELINE}})
    kstatus.track(namespace, "orders")
    pipelines.wait_status("orders", api, deploymentStatus="Stopped", programStatus="Success")
    client = feldera_client(api.api_url, cluster.plane.users["alice"].token, namespace)
    client.start_pipeline("orders", timeout_s=60)
    annotation = pipelines.get("orders")["metadata"]["annotations"]["dataflow.dev/requested-by"]
    user, action, at = annotation.split(" ")
    assert (user, action) == ("alice", "start") and dt.datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ")

    def attributed() -> list[dict]:
        events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
        return [e for e in events if (e["metadata"].get("annotations") or {}).get("dataflow.dev/requested-by")
                == annotation and e["message"].endswith("(requested by alice)")]
    found = wait_for("an Event of the start that names alice", attributed, 60, operator=api)
    assert all(e["involvedObject"]["name"] == "orders" for e in found)
    described = cluster.kubectl("describe", "pipeline", "orders", "-n", namespace).stdout
    assert "(requested by alice)" in described

    def audit_lines() -> list[dict]:
        lines = []
        for line in api.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("name") == "pipeline_operator.audit":
                lines.append(record)
        return lines
    lines = wait_for("the audit line of the start", lambda: [r for r in audit_lines() if r["action"] == "start"],
                     30, operator=api)
    assert len(lines) == 1
    assert {k: lines[0][k] for k in ("user", "verb", "namespace", "pipeline", "status", "outcome")} == {
        "user": "alice", "verb": "patch", "namespace": namespace, "pipeline": "orders", "status": 202,
        "outcome": "success"}
    assert "dev" in lines[0]["groups"]
    # A refused attempt is audited too, as who tried and what was answered.
    status, _ = call(f"{api.api_url}/v0/pipelines/orders/clear", cluster.plane.users["bob"].token, namespace,
                     "POST")
    assert status == 403
    denied = wait_for("the audit line of bob's attempt",
                      lambda: [r for r in audit_lines() if r["action"] == "clear"], 30, operator=api)
    assert (denied[0]["user"], denied[0]["status"], denied[0]["outcome"]) == ("bob", 403, "denied")


# -- 5. bad requests ------------------------------------------------------------------------------------------


@pytest.mark.apiserver
def test_bad_requests_answer_feldera_errors_never_500(api, cluster, namespace, pipelines):
    token = cluster.plane.users["alice"].token
    auth = f"Authorization: Bearer {token}\r\nFeldera-Tenant: {namespace}\r\n"
    port = api.api_port

    status, headers, body = raw_request(port, f"GET /v0/pipelines HTTP/1.1\r\nHost: x\r\n{auth}"
                                              f"X-Huge: {'a' * 20000}\r\n\r\n".encode())
    assert status in (400, 431) and headers["content-type"].startswith("application/json")
    assert feldera_error(body)["error_code"] in ("InvalidRequest", "RequestHeaderFieldsTooLarge")

    for path in (b"/v0/pipelines/%FF%FE/events", b"/v0/pipelines/\xff\xfe/events"):
        status, headers, body = raw_request(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + auth.encode()
                                            + b"Connection: close\r\n\r\n")
        assert 400 <= status < 500 and feldera_error(body)["error_code"], (path, status, body)

    status, _, body = raw_request(port, f"GET /v0/pipelines?selector=status&color=blue HTTP/1.1\r\nHost: x\r\n"
                                        f"{auth}Connection: close\r\n\r\n".encode())
    assert status == 200, body  # unknown query parameters are ignored, as Feldera's

    for payload in (b"not json", b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000, b'"a string"',
                    b'{"name": "x", "program_code": 5}'):
        status, _, body = raw_request(port, b"POST /v0/pipelines HTTP/1.1\r\nHost: x\r\n" + auth.encode()
                                      + b"Content-Type: application/json\r\nConnection: close\r\n"
                                      + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        assert (status, feldera_error(body)["error_code"]) == (400, "InvalidRequestBody"), (payload[:20], body)
    api.assert_alive()
    assert "Traceback" not in api.log()
