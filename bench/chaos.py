"""Chaos benchmark: the real operator under repeated faults, with the invariants checked after each.

    .venv/bin/python bench/chaos.py --iterations 50 --seed 1

It starts its own control plane (etcd + kube-apiserver), the operator (local backend, real
pipeline processes) and a few Pipelines, then injects, each at a random moment of a random
lifecycle step (start, pause, stop, clear, spec change, delete):

- ``--iterations`` SIGKILLs of the operator, each followed by a restart;
- a kube-apiserver outage of ``--apiserver-outage`` seconds (60 by default) and an etcd restart;
- pipeline processes killed (SIGKILL), stopped (SIGSTOP), hung and answering garbage;
- the event store deleted, truncated and made read-only;
- a storm of 10,000 unauthenticated and malformed API requests (concurrency 100) while a
  pipeline is paused and resumed, measuring the reconciliation latency (spec change to status).

It prints one line per fault kind (``kind runs converged workloads_duplicated events_lost
events_duplicated seconds``), and exits 1 if any invariant broke. The seed makes a run
reproducible (``--seed``, or ``$PIPELINE_FAULTS_SEED``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import Cluster  # noqa: E402
from tests.faults.chaos import (  # noqa: E402
    Chaos,
    Outcome,
    Tally,
    can_make_immutable,
    seed_from_env,
    start_storm,
    storm_requests,
)

from pipeline_operator_dev import controlplane  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def storm(chaos: Chaos, tally: Tally, requests: int) -> tuple[list[float], dict[int, int], list[str]]:
    """The request storm; meanwhile, pause and resume one pipeline and time each change to its status."""
    target = next(t for t in chaos.targets.values() if t.state != "Deleted")
    if target.state not in ("Running", "Paused"):
        chaos.apply_step(target, "start")
        chaos.wait_settled()
    before = chaos.snapshot()
    started = time.monotonic()
    thread, result = start_storm(chaos.op.api_url, storm_requests(chaos.rng, chaos.cluster.plane.users["admin"].token,
                                                                  requests), concurrency=100)
    latencies: list[float] = []
    while thread.is_alive():
        step = "pause" if target.state == "Running" else "start"
        changed = time.monotonic()
        chaos.apply_step(target, step)
        problems = chaos.wait_settled()
        if problems:
            break
        latencies.append(time.monotonic() - changed)
    thread.join()
    outcome = chaos.check("request storm", before, started, chaos.wait_settled())
    if result.server_errors or 500 in result.statuses:
        outcome.converged = False
        outcome.problems.append(f"server errors: {result.server_errors[:5]}")
    tally.add(outcome)
    return latencies, result.statuses, outcome.problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=50, help="operator SIGKILLs (default 50)")
    parser.add_argument("--seed", type=int, default=None,
                        help="replay a run (default: $PIPELINE_FAULTS_SEED or random)")
    parser.add_argument("--pipelines", type=int, default=3)
    parser.add_argument("--apiserver-outage", type=float, default=60.0, help="seconds the API server is away")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each fault kind other than SIGKILL")
    parser.add_argument("--requests", type=int, default=10_000, help="requests of the storm")
    parser.add_argument("--keep", action="store_true", help="keep the state folder (operator logs, event store)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else seed_from_env()
    print(f"chaos seed {seed} (replay: bench/chaos.py --seed {seed} --iterations {args.iterations})", flush=True)

    binaries = controlplane.ensure_binaries()
    work = Path(tempfile.mkdtemp(prefix="pipeline-operator-chaos-"))
    tallies: dict[str, Tally] = {}
    failures: list[str] = []

    def record(o: Outcome) -> None:
        tallies.setdefault(o.kind, Tally(o.kind)).add(o)
        if not o.ok:
            failures.append(f"{o.kind}: {'; '.join(o.problems)}")

    with controlplane.ControlPlane(binaries) as plane:
        cluster = Cluster(binaries, plane)
        plane.kubectl("apply", "-f", str(REPO / "crds" / "pipelines.dataflow.dev.yaml"))
        controlplane.wait_established(plane.kubectl)
        plane.kubectl("create", "namespace", "chaos")
        chaos = Chaos(cluster, "chaos", work / "state", seed, say=lambda m: print(m, flush=True))
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        try:
            chaos.start(args.pipelines)
            for _ in range(args.iterations):
                record(chaos.run("operator SIGKILL", chaos.kill_operator))

            def outage() -> None:
                chaos._fault_delay(1.0)
                plane.stop_apiserver()
                try:
                    time.sleep(args.apiserver_outage)  # the outage is the fault
                finally:
                    plane.start_apiserver()

            def etcd() -> None:
                chaos._fault_delay(1.0)
                plane.restart_etcd(kill=True)

            for _ in range(args.repeats):
                record(chaos.run("apiserver outage", outage))
                record(chaos.run("etcd restart", etcd))
                for mode in ("kill", "sigstop", "hang", "garbage", "nested"):
                    record(chaos.pipeline_fault(mode))
                for mode in ("delete", "truncate", "read-only"):
                    if mode == "read-only" and (why := can_make_immutable(work)):
                        print(f"store read-only: not run ({why})")
                        continue
                    record(chaos.store_fault(mode))
            storm_tally = tallies.setdefault("request storm", Tally("request storm"))
            latencies, statuses, problems = storm(chaos, storm_tally, args.requests)
            if problems:
                failures.append(f"request storm: {'; '.join(problems)}")
        finally:
            chaos.close()
            if args.keep:
                print(f"state kept in {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)

    print()
    print(Tally.header())
    for t in tallies.values():
        print(t.line())
    if chaos.operator_crashes:
        failures.append(f"the operator exited on its own {chaos.operator_crashes} times")
    if latencies:
        print(f"reconciliation latency during the storm (spec change -> status settled, {len(latencies)} changes): "
              f"p50 {percentile(latencies, 50):.2f} s, max {max(latencies):.2f} s")
    print(f"storm answers: {dict(sorted(statuses.items()))}")
    if failures:
        print(f"\n{len(failures)} fault runs broke an invariant (seed {seed}):")
        for f in failures:
            print(f"  {f[:500]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
