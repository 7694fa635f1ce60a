"""A real PostgreSQL server for the event store's tests, started once per test session from the
PostgreSQL binaries on the machine (``/usr/lib/postgresql/<version>/bin``, the newest version there,
else ``pg_config --bindir``).

PostgreSQL refuses to run as root, so as root the server runs as the unprivileged user ``postgres``
(``runuser``), in a temporary folder that user owns. It listens on 127.0.0.1 only, on a free port, and
every connection authenticates with a password (SCRAM): the tests reach it as the operator does in
production, with a URL that holds no password and the password in ``PGPASSWORD``.

Why not pytest-postgresql's ``postgresql_proc``: it runs ``initdb`` and ``pg_ctl`` as the current
user, which PostgreSQL refuses for root, the user these tests run as in CI containers. The server is
started here instead; each test's fresh database comes from pytest-postgresql's ``DatabaseJanitor``
(see ``postgres_url`` in conftest.py).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

RUN_AS = "postgres"  # the unprivileged user the server runs as when the tests run as root
ROLE = "pipeline_operator"  # the tests' login role: not a superuser, may create databases
SEARCH = Path("/usr/lib/postgresql")


class Unavailable(Exception):
    """PostgreSQL cannot be run here (the reason says what is missing)."""


def find_bindir() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``: the newest version under /usr/lib/postgresql, else the
    one ``pg_config`` names."""
    versions = sorted((p for p in SEARCH.glob("*/bin") if (p / "pg_ctl").is_file() and (p / "initdb").is_file()),
                      key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)] or [0])
    if versions:
        return versions[-1]
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (bindir / "pg_ctl").is_file() and (bindir / "initdb").is_file():
            return bindir
    raise Unavailable(f"no PostgreSQL server binaries (initdb, pg_ctl) under {SEARCH}/<version>/bin or from "
                      "pg_config: install them (apt-get install postgresql) to run the PostgreSQL event store's tests")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL server (initdb, then pg_ctl start/stop), owned by the test session."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.host = "127.0.0.1"
        self.port = free_port()
        self.password = secrets.token_urlsafe(16)  # the tests' role's
        self._superuser_password = secrets.token_urlsafe(16)
        self._prefix: list[str] = []
        self._owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._owner = pwd.getpwnam(RUN_AS)
            except KeyError:
                raise Unavailable(f"PostgreSQL refuses to run as root and there is no user '{RUN_AS}' to run it "
                                  f"as: create one (useradd --system {RUN_AS}) or run the tests as an unprivileged "
                                  "user") from None
            self._prefix = ["runuser", "-u", RUN_AS, "--"]
        self.folder = Path(tempfile.mkdtemp(prefix="pipeline-operator-postgres-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"

    def url(self, dbname: str) -> str:
        """How the operator is told about the database: no password in it (PGPASSWORD has it)."""
        return f"postgresql://{ROLE}@{self.host}:{self.port}/{dbname}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run([*self._prefix, *args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "LC_ALL": "C", "LANG": "C"})
        if done.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")

    def _give(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    def create(self) -> PostgresServer:
        """initdb (password authentication for every connection), start, and the tests' role."""
        self.folder.chmod(0o700)
        self._give(self.folder)
        pwfile = self.folder / "superuser-password"
        pwfile.write_text(self._superuser_password + "\n")
        self._give(pwfile)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
        pwfile.unlink()
        self.start()
        import psycopg
        with psycopg.connect(host=self.host, port=self.port, user="postgres", password=self._superuser_password,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{self.password}'")
        return self

    def start(self) -> None:
        """Start (again) on the same port, with the same data; returns once it accepts connections."""
        options = (f"-c listen_addresses={self.host} -c port={self.port} -c unix_socket_directories='' "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run(str(self.bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
                  "-o", options)

    def stop(self) -> None:
        """Stop at once (``fast``: open connections are cut, as when a server restarts under a client)."""
        self._run(str(self.bindir / "pg_ctl"), "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))

    def running(self) -> bool:
        return subprocess.run([*self._prefix, str(self.bindir / "pg_ctl"), "status", "-D", str(self.data)],
                              capture_output=True).returncode == 0

    def remove(self) -> None:
        """Stop (if running) and delete the data."""
        try:
            if self.data.exists() and self.running():
                self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def start() -> PostgresServer:
    """A running server (raises :class:`Unavailable` when PostgreSQL cannot be run here)."""
    began = time.monotonic()
    server = PostgresServer(find_bindir())
    try:
        server.create()
    except BaseException:
        server.remove()
        raise
    print(f"PostgreSQL from {server.bindir} on {server.host}:{server.port} ({time.monotonic() - began:.1f}s)")
    return server
