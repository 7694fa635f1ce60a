"""Status poll benchmark: the operator's CPU per ``GET /status``, its own client against aiohttp's.

    .venv/bin/python bench/status_poll_bench.py [--pipelines 500] [--rounds 40]

The reference pipeline process in fleet mode serves ``--pipelines`` pipelines, each at an address of its
own (as pods are). Every round polls all of them at once, as the operator's monitors do, once with
``RuntimeClient.status`` (feldera/status_http.py: a kept-alive connection per pipeline, httptools) and once with
aiohttp's ``ClientSession.get`` read as the operator read it before (the same connection reuse, body
bounded, JSON decoded). The figure is this process's CPU time (user + system) per request, so the
pipelines' own work, in the fleet process, is not in it; each client runs twice, alternately.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop

from pipeline_operator.feldera.runtime_client import MAX_STATUS_BODY, RuntimeClient, decode_json

FLEET_MAIN = [sys.executable, str(Path(__file__).resolve().parent / "fleet_process.py")]
TOKEN = "bench-token"


def start_fleet(workdir: Path, pipelines: int) -> tuple[subprocess.Popen[bytes], list[str]]:
    port_file = workdir / "port"
    log = open(workdir / "fleet.log", "wb")  # noqa: SIM115 (open while the process runs)
    fleet = subprocess.Popen([*FLEET_MAIN, str(port_file)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        if time.monotonic() > deadline or fleet.poll() is not None:
            raise SystemExit(f"the fleet process did not start: see {workdir / 'fleet.log'}")
        time.sleep(0.1)
    url = f"http://127.0.0.1:{port_file.read_text().strip()}"
    addresses = []
    for n in range(pipelines):
        body = json.dumps({"storage": str(workdir / f"p{n}"), "program": {"digest": "d1"}, "initial": "running",
                           "bootstrap_policy": "allow", "debug_routes": False,
                           "env": {"PIPELINE_CONTROL_TOKEN": TOKEN, "PIPELINE_INIT_SECONDS": "0"}}).encode()
        request = urllib.request.Request(f"{url}/fleet/pipelines/bench/p{n}", body, method="PUT",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            addresses.append(json.load(answer)["address"])
        if (n + 1) % 100 == 0 or n + 1 == pipelines:
            print(f"  registered {n + 1}/{pipelines} pipelines", flush=True)
    return fleet, addresses


async def through_aiohttp(session: aiohttp.ClientSession, endpoint: str) -> object:
    """A status poll as the operator made it with aiohttp (its read path for an announced body)."""
    async with session.get(f"{endpoint}/status", timeout=aiohttp.ClientTimeout(total=5.0),
                           headers={"Authorization": f"Bearer {TOKEN}"}, allow_redirects=False) as response:
        raw = await response.read() if (response.content_length or 0) <= MAX_STATUS_BODY else b""
        return response.status, decode_json(raw)


async def measure(poll: Callable[[str], Awaitable[object]], endpoints: list[str], rounds: int) -> float:
    """CPU seconds per request over ``rounds`` rounds of all ``endpoints`` at once (after one to connect)."""
    await asyncio.gather(*(poll(e) for e in endpoints))
    started = time.process_time()
    for _ in range(rounds):
        await asyncio.gather(*(poll(e) for e in endpoints))
        await asyncio.sleep(0.05)
    return (time.process_time() - started) / (rounds * len(endpoints))


async def compare(endpoints: list[str], rounds: int) -> dict[str, list[float]]:
    client = RuntimeClient(token_for=lambda _: TOKEN)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, limit_per_host=4),
                                    cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
    figures: dict[str, list[float]] = {"RuntimeClient.status": [], "aiohttp ClientSession.get": []}
    try:
        first = await client.status(endpoints[0])
        if first.probe.value != "Ok":
            raise SystemExit(f"the pipelines do not answer: {first}")
        for _ in range(2):
            figures["RuntimeClient.status"].append(await measure(client.status, endpoints, rounds))
            figures["aiohttp ClientSession.get"].append(
                await measure(lambda e: through_aiohttp(session, e), endpoints, rounds))
    finally:
        await client.close()
        await session.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipelines", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="status-poll-bench-") as folder:
        print(f"starting the fleet process with {args.pipelines} pipelines", flush=True)
        fleet, endpoints = start_fleet(Path(folder), args.pipelines)
        try:
            figures = uvloop.run(compare(endpoints, args.rounds))
        finally:
            fleet.terminate()
            fleet.wait(30)
    requests = args.pipelines * args.rounds
    print(f"\nCPU per status poll (this process only; {requests} requests per run, uvloop):")
    best = {name: min(runs) for name, runs in figures.items()}
    for name, runs in figures.items():
        print(f"  {name:28s} {best[name] * 1e6:6.0f} µs  (runs: {', '.join(f'{r * 1e6:.0f}' for r in runs)})")
    ratio = best["aiohttp ClientSession.get"] / best["RuntimeClient.status"]
    print(f"  aiohttp / RuntimeClient: {ratio:.2f}x")
    at_fleet = 1000 / 2.5
    saved = (best["aiohttp ClientSession.get"] - best["RuntimeClient.status"]) * at_fleet * 60
    print(f"  at 1,000 pipelines polled every 2.5 s ({at_fleet:.0f}/s): {saved:.1f} CPU seconds a minute less")


if __name__ == "__main__":
    main()
