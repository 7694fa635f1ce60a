"""Chaos benchmark: the real operator under repeated faults, with the invariants checked after each.

    .venv/bin/python bench/chaos.py --iterations 20 --apiserver-outage 30 --seeds 7,11,13

For each seed (``--seeds 7,11,13``, or ``--seed`` repeated; default ``$PIPELINE_FAULTS_SEED`` or a
random one) it starts a control plane of its own (etcd + kube-apiserver), the operator (local
backend, real pipeline processes) and a few Pipelines, then injects the faults of :data:`FAULTS`,
each at a random moment of a random lifecycle step (start, pause, stop, clear, spec change, delete):

- ``--iterations`` SIGKILLs of the operator, each followed by a restart;
- then ``--repeats`` rounds of: a kube-apiserver outage of ``--apiserver-outage`` seconds (60 by
  default), an etcd restart, pipeline processes killed (SIGKILL), stopped (SIGSTOP), hung, answering
  garbage, answering too deeply nested JSON and answering a head that never ends (``endless-header``:
  the operator's memory may rise by 50 MB at most meanwhile), a tenant's Pipelines nested 1,200 levels
  deep (``deep spec``: refused, run, or reported and deleted), and the event store deleted, truncated and
  made read-only;
- last, a storm of ``--requests`` unauthenticated and malformed API requests (concurrency 100) while a
  pipeline is paused and resumed, measuring the reconciliation latency (spec change to status), beside a
  hostile tenant's Pipelines (one answering a head that never ends, two nested too deep; not with
  ``--storm-alone``).

After each fault it checks the invariants of ``tests/faults/chaos.py`` (one workload per Pipeline, every
Pipeline at its spec, no event lost or stored twice, no event of a deleted Pipeline left in the store or
served under its name again). It prints one line per fault kind (``kind runs converged
workloads_duplicated events_lost events_duplicated events_of_deleted seconds rss_growth_mb``, the last
the most the operator's resident memory rose during one run of that kind, sampled every 0.1 s), then a
verdict per seed (with the operator's resident memory at the start and at the end, and the duration) and
an overall one, and exits 1 if any invariant broke. What a run finds (a deletion that never finishes, a
fault that could not be injected) is part of its verdict, not a traceback. ``--only`` runs some kinds
(``--only "store read-only"``, ``--only store``).

A new fault kind is one function taking a :class:`Run` and returning the :class:`Outcome` of one
fault, and one row of :data:`FAULTS`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import Cluster  # noqa: E402
from tests.faults.chaos import (  # noqa: E402
    PIPELINE_FAULTS,
    STORE_FAULTS,
    Chaos,
    Finding,
    Outcome,
    Tally,
    can_make_immutable,
    findings,
    seed_from_env,
    start_storm,
    storm_requests,
)

from pipeline_operator_dev import builds, controlplane  # noqa: E402


@dataclasses.dataclass
class Run:
    """What a fault gets: this seed's chaos, its control plane and the command line; the storm's figures."""
    chaos: Chaos
    plane: controlplane.ControlPlane
    args: argparse.Namespace
    latencies: list[float] = dataclasses.field(default_factory=list)
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------------------
# The faults: one function each, returning the outcome of one run
# --------------------------------------------------------------------------------------

def operator_sigkill(run: Run) -> Outcome:
    return run.chaos.run("operator SIGKILL", run.chaos.kill_operator)


def apiserver_outage(run: Run) -> Outcome:
    def inject() -> None:
        run.chaos._fault_delay(1.0)
        run.plane.stop_apiserver()
        try:
            time.sleep(run.args.apiserver_outage)  # the outage is the fault
        finally:
            run.plane.start_apiserver()
    return run.chaos.run("apiserver outage", inject)


def etcd_restart(run: Run) -> Outcome:
    def inject() -> None:
        run.chaos._fault_delay(1.0)
        run.plane.restart_etcd(kill=True)
    return run.chaos.run("etcd restart", inject)


def pipeline_fault(mode: str, run: Run) -> Outcome:
    return run.chaos.pipeline_fault(mode)


def store_fault(mode: str, run: Run) -> Outcome:
    return run.chaos.store_fault(mode)


def deep_spec(run: Run) -> Outcome:
    return run.chaos.deep_spec_fault()


def request_storm(run: Run) -> Outcome:
    """The request storm beside a hostile tenant's Pipelines (:meth:`Chaos.hostile_neighbours`); meanwhile,
    pause and resume one pipeline and time each change to its status."""
    chaos = run.chaos
    started = time.monotonic()
    problems: list[str] = []
    before: dict[str, set[str]] = {}
    with findings(problems):
        target = next(t for t in chaos.targets.values() if t.state != "Deleted")
        if target.state not in ("Running", "Paused"):
            chaos.apply_step(target, "start")
            chaos.wait_settled()
        before = chaos.snapshot()
        neighbours = contextlib.nullcontext([]) if run.args.storm_alone else chaos.hostile_neighbours()
        with neighbours as hostile:
            thread, result = start_storm(chaos.op.api_url, storm_requests(
                chaos.rng, chaos.cluster.plane.users["admin"].token, run.args.requests, also=tuple(hostile)),
                concurrency=100)
            while thread.is_alive():
                step = "pause" if target.state == "Running" else "start"
                changed = time.monotonic()
                chaos.apply_step(target, step)
                if chaos.wait_settled():
                    break
                run.latencies.append(time.monotonic() - changed)
            thread.join()
        run.statuses.update(result.statuses)
        if result.server_errors or 500 in result.statuses:
            problems.append(f"server errors: {result.server_errors[:5]}")
    return chaos.check("request storm", before, started, problems + chaos.wait_settled())


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    run: Callable[[Run], Outcome]
    # Runs in a row at its place in the table; None: once in each of the --repeats rounds, which take
    # every neighbouring row without ``times`` in turn.
    times: Callable[[argparse.Namespace], int] | None = None
    unavailable: Callable[[Path], str | None] = lambda work: None  # why it cannot run on this machine


FAULTS: list[Fault] = [
    Fault("operator SIGKILL", operator_sigkill, times=lambda args: args.iterations),
    Fault("apiserver outage", apiserver_outage),
    Fault("etcd restart", etcd_restart),
    *(Fault(f"pipeline {mode}", functools.partial(pipeline_fault, mode)) for mode in PIPELINE_FAULTS),
    Fault("deep spec", deep_spec),
    *(Fault(f"store {mode}", functools.partial(store_fault, mode),
            unavailable=can_make_immutable if mode == "read-only" else lambda work: None) for mode in STORE_FAULTS),
    Fault("request storm", request_storm, times=lambda args: 1),
]


def schedule(faults: list[Fault], args: argparse.Namespace) -> Iterator[Fault]:
    """The faults in the order they run (see :class:`Fault`)."""
    rounds: list[Fault] = []
    for fault in [*faults, None]:
        if fault is not None and fault.times is None:
            rounds.append(fault)
            continue
        for _ in range(args.repeats if rounds else 0):
            yield from rounds
        rounds = []
        if fault is not None and fault.times is not None:
            for _ in range(fault.times(args)):
                yield fault


def selected(only: str | None) -> list[Fault]:
    """The faults ``--only`` names (a kind, or the first word of kinds: ``store``), all by default."""
    if not only:
        return FAULTS
    names = [n.strip() for n in only.split(",") if n.strip()]
    chosen = [f for f in FAULTS if any(f.kind == n or f.kind.startswith(n + " ") for n in names)]
    if not chosen:
        raise SystemExit(f"--only {only!r} names no fault kind; the kinds: {', '.join(f.kind for f in FAULTS)}")
    return chosen


# --------------------------------------------------------------------------------------
# One seed, and the verdicts
# --------------------------------------------------------------------------------------

@dataclasses.dataclass
class SeedResult:
    seed: int
    tallies: dict[str, Tally] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    stopped: str = ""  # why the run ended before its last fault
    rss_start: float | None = None
    rss_end: float | None = None
    rss_peak: float = 0.0
    seconds: float = 0.0
    latencies: list[float] = dataclasses.field(default_factory=list)
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)
    skipped: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.stopped

    def record(self, o: Outcome) -> None:
        self.tallies.setdefault(o.kind, Tally(o.kind)).add(o)
        if o.rss is not None and o.rss.peak is not None:
            self.rss_peak = max(self.rss_peak, o.rss.peak)
        if not o.ok:
            self.failures.append(f"{o.kind}: {'; '.join(o.problems)}")

    def sample_rss(self, chaos: Chaos) -> None:
        rss = chaos.operator_rss()
        if rss is not None:
            self.rss_peak = max(self.rss_peak, rss)

    def totals(self) -> Tally:
        total = Tally("all")
        for t in self.tallies.values():
            for field in ("runs", "converged", "workloads_duplicated", "events_lost", "events_duplicated",
                          "events_of_deleted", "seconds"):
                setattr(total, field, getattr(total, field) + getattr(t, field))
        return total

    def verdict(self) -> str:
        t = self.totals()
        rss = (f"operator RSS {_mb(self.rss_start)} at the start, {_mb(self.rss_end)} at the end "
               f"(peak {_mb(self.rss_peak or None)})")
        figures = (f"{t.runs} fault runs, {t.converged} converged; {t.workloads_duplicated} workloads duplicated, "
                   f"{t.events_lost} events lost, {t.events_duplicated} duplicated, {t.events_of_deleted} of "
                   f"deleted pipelines left; {rss}; {self.seconds:.0f} s")
        if self.ok:
            return f"seed {self.seed}: PASSED: {figures}"
        why = (f"the run stopped: {self.stopped}" if self.stopped
               else f"{len(self.failures)} fault runs broke an invariant")
        return f"seed {self.seed}: FAILED ({why}): {figures}"


def _mb(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f} MB"


def run_seed(seed: int, args: argparse.Namespace, binaries: builds.Binaries, faults: list[Fault]) -> SeedResult:
    result = SeedResult(seed)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="pipeline-operator-chaos-"))
    print(f"chaos seed {seed} (replay: bench/chaos.py --seed {seed} {' '.join(replay_args())})", flush=True)
    try:
        with controlplane.ControlPlane(binaries) as plane:
            cluster = Cluster(binaries, plane)
            plane.kubectl("apply", "-f", str(REPO / "crds" / "pipelines.dataflow.dev.yaml"))
            controlplane.wait_established(plane.kubectl)
            plane.kubectl("create", "namespace", "chaos")
            chaos = Chaos(cluster, "chaos", work / "state", seed, say=lambda m: print(m, flush=True))
            run = Run(chaos, plane, args)
            try:
                chaos.start(args.pipelines)
                result.rss_start = chaos.operator_rss()
                for fault in schedule(faults, args):
                    if fault.kind in result.skipped:
                        continue
                    if why := fault.unavailable(work):
                        print(f"{fault.kind}: not run ({why})", flush=True)
                        result.skipped.append(fault.kind)
                        continue
                    with chaos.watch_rss() as rss:
                        outcome = fault.run(run)
                    outcome.rss = outcome.rss or rss
                    result.record(outcome)
                    result.sample_rss(chaos)
                result.rss_end = chaos.operator_rss()
                if chaos.operator_crashes:
                    result.failures.append(f"the operator exited on its own {chaos.operator_crashes} times")
            finally:
                result.latencies, result.statuses = run.latencies, run.statuses
                chaos.close()
    except Finding as exc:
        result.stopped = str(exc)
    except Exception as exc:  # noqa: BLE001 - not a fault's effect but the harness's: said, with where
        traceback.print_exc()
        result.stopped = f"{type(exc).__name__}: {exc}"
    finally:
        if args.keep:
            print(f"state kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def report(result: SeedResult) -> None:
    print()
    print(Tally.header())
    for t in result.tallies.values():
        print(t.line())
    if result.latencies:
        print(f"reconciliation latency during the storm (spec change -> status settled, {len(result.latencies)} "
              f"changes): p50 {percentile(result.latencies, 50):.2f} s, max {max(result.latencies):.2f} s")
    if result.statuses:
        print(f"storm answers: {dict(sorted(result.statuses.items()))}")
    for f in result.failures:
        print(f"  {f[:500]}")
    print(result.verdict(), flush=True)


def replay_args(argv: list[str] | None = None) -> list[str]:
    """The command line's arguments other than its seeds (to replay one seed)."""
    argv = sys.argv[1:] if argv is None else argv
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--seed", "--seeds"):
            skip = True
        elif not arg.startswith(("--seed=", "--seeds=")):
            out.append(arg if arg.startswith("-") or " " not in arg else repr(arg))
    return out


def seeds_of(args: argparse.Namespace) -> list[int]:
    seeds = list(args.seed or [])
    for part in (args.seeds or "").split(","):
        if part.strip():
            seeds.append(int(part))
    return seeds or [seed_from_env()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=50, help="operator SIGKILLs (default 50)")
    parser.add_argument("--seed", type=int, action="append",
                        help="replay a run (repeatable; default: $PIPELINE_FAULTS_SEED or random)")
    parser.add_argument("--seeds", help="several seeds, comma-separated: 7,11,13 (one run each)")
    parser.add_argument("--pipelines", type=int, default=3)
    parser.add_argument("--apiserver-outage", type=float, default=60.0, help="seconds the API server is away")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the fault kinds other than SIGKILL")
    parser.add_argument("--requests", type=int, default=10_000, help="requests of the storm")
    parser.add_argument("--storm-alone", action="store_true",
                        help="the storm without the hostile tenant's Pipelines beside it (to compare)")
    parser.add_argument("--only", help="run only these fault kinds (comma-separated; a first word names several)")
    parser.add_argument("--keep", action="store_true", help="keep the state folder (operator logs, event store)")
    args = parser.parse_args()
    seeds = seeds_of(args)
    faults = selected(args.only)
    binaries = builds.ensure_binaries()
    results = []
    for seed in seeds:
        results.append(run_seed(seed, args, binaries, faults))
        report(results[-1])
    print()
    for r in results:
        print(r.verdict())
    failed = [r.seed for r in results if not r.ok]
    seconds = sum(r.seconds for r in results)
    print(f"overall: {'FAILED' if failed else 'PASSED'}: {len(results)} seed{'s' if len(results) != 1 else ''} "
          f"({', '.join(map(str, seeds))}), "
          f"{len(failed)} failed{(' (' + ', '.join(map(str, failed)) + ')') if failed else ''}; {seconds:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
