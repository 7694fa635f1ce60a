"""Fixtures of the fault-injection suite: a seeded :class:`Chaos` per test, on the session's API server.

The session seed is 1 unless ``PIPELINE_FAULTS_SEED`` says otherwise; it is printed in the report
header and in every test's output: ``PIPELINE_FAULTS_SEED=<seed> pytest -m faults tests/faults``
replays a run.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import Cluster
from .chaos import SEED_ENV, Chaos, seed_from_env

# Fixed unless asked otherwise: a run of the suite is the same run everywhere; explore others with
# PIPELINE_FAULTS_SEED (or bench/chaos.py --seed).
SESSION_SEED = seed_from_env(default=1)


def pytest_report_header(config: pytest.Config) -> str:
    return f"fault-injection seed: {SESSION_SEED} (replay with {SEED_ENV}={SESSION_SEED})"


@pytest.fixture
def chaos_factory(crd_installed: Cluster, namespace: str, tmp_path: Path,
                  request: pytest.FixtureRequest) -> Iterator[object]:
    """``chaos_factory(pipelines=3, *operator_args)``: a started :class:`Chaos`, closed after the test."""
    made: list[Chaos] = []
    # One seed per test, derived from the session's: each test replays alone, whatever ran before it.
    seed = zlib.crc32(f"{SESSION_SEED}:{request.node.name}".encode())

    def make(pipelines: int = 3, *operator_args: str) -> Chaos:
        print(f"{request.node.name}: session seed {SESSION_SEED} ({SEED_ENV}), test seed {seed}")
        chaos = Chaos(crd_installed, namespace, tmp_path / "state", seed, operator_args=operator_args)
        made.append(chaos)
        chaos.start(pipelines)
        return chaos

    yield make
    for chaos in made:
        chaos.close()
