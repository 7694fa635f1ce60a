"""The command line: its parser and :func:`main`, the console script ``kubectl-pipeline`` (and
``pipeline-operator kubectl``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import urllib3

from .commands import ACTIONS, cmd_action, cmd_events, cmd_status
from .completion import cmd_completion
from .connection import API_ENV, PluginError, connect

# -- the command line ---------------------------------------------------------------------------------


def connection_options(default: Any) -> argparse.ArgumentParser:
    """``-n``, ``--context`` and ``--kubeconfig``, accepted before and after the command."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("-n", "--namespace", default=default, help="The Pipeline's namespace (default: the "
                                                                     "context's).")
    options.add_argument("--context", default=default, help="The kubeconfig context to use (default: the current "
                                                            "context).")
    options.add_argument("--kubeconfig", default=default, help="Path to the kubeconfig (default: $KUBECONFIG, "
                                                               "~/.kube/config).")
    return options


def parser() -> argparse.ArgumentParser:
    # A command's own default must not undo an option given before the command.
    common = connection_options(argparse.SUPPRESS)
    top = argparse.ArgumentParser(
        prog="kubectl pipeline", parents=[connection_options(None)],
        description="Monitor events, lifecycle actions and status of Pipelines (dataflow.dev), as the user "
                    "of the kubeconfig: RBAC applies.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    events = commands.add_parser("events", parents=[common], help="A pipeline's monitor events, newest first.")
    events.add_argument("name", metavar="NAME")
    events.add_argument("--selector", choices=("all", "status"), default="all",
                        help="Feldera's selector: all (with the error text, from the API) or status.")
    events.add_argument("--follow", "-f", action="store_true", help="Print new events as they are recorded "
                                                                    "(until Ctrl-C).")
    events.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    events.add_argument("--api", help=f"The operator's HTTP API (https://, or http:// to a loopback address such as "
                                      f"http://127.0.0.1:8080; also ${API_ENV}) for the full retained history "
                                      "instead of status.history. The kubeconfig's token is sent to it; a redirect "
                                      "is not followed.")

    status = commands.add_parser("status", parents=[common], help="A pipeline on one screen.")
    status.add_argument("name", metavar="NAME")

    helps = {"start": "Start (desiredStatus Provisioned and the start annotation).",
             "stop": "Stop (desiredStatus Stopped), gracefully unless --force.",
             "pause": "Pause the runtime (runtimeDesiredStatus Paused).",
             "resume": "Resume the runtime (runtimeDesiredStatus Running).",
             "clear": "Clear the storage (the clear-storage annotation; only when Stopped).",
             "dismiss-error": "Dismiss the latched error (the dismiss-error annotation).",
             "approve": "Approve a pipeline that is AwaitingApproval (the approve annotation)."}
    for action in ACTIONS:
        sub = commands.add_parser(action, parents=[common], help=helps[action])
        sub.add_argument("name", metavar="NAME")
        if action == "stop":
            sub.add_argument("--force", action="store_true", help="Stop without a checkpoint (stopMode Force).")
        sub.add_argument("--wait", action="store_true", help="Wait until the status shows the action done.")
        sub.add_argument("--timeout", type=float, default=300.0, help="Seconds --wait waits (default 300).")

    completion = commands.add_parser("completion", help="Print a shell completion script.")
    completion.add_argument("shell", choices=("bash", "zsh"))
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "completion":
            return cmd_completion(args)
        connection = connect(args.kubeconfig, args.context, args.namespace)
        if args.command == "events":
            return cmd_events(args, connection)
        if args.command == "status":
            return cmd_status(args, connection)
        return cmd_action(args, connection)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except urllib3.exceptions.HTTPError as exc:
        reason = getattr(exc, "reason", exc)
        print(f"error: the Kubernetes API server cannot be reached: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C ends --follow and --wait: nothing went wrong
        return 0
    except BrokenPipeError:  # `kubectl pipeline events x | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0

