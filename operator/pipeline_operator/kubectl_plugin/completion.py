"""Shell completion: the scripts for bash and zsh (``kubectl pipeline completion``) and the completion
kubectl 1.26+ asks of ``kubectl_complete-pipeline`` (:func:`complete_main`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import urllib3
from kubernetes.client.exceptions import ApiException

from .commands import COMMANDS
from .connection import PluginError, connect

# -- shell completion ---------------------------------------------------------------------------------


BASH_COMPLETION = """\
# kubectl pipeline / kubectl-pipeline completion (bash): source <(kubectl-pipeline completion bash)
_kubectl_pipeline() {
    local cur=${COMP_WORDS[COMP_CWORD]} i=1 ns=()
    [[ ${COMP_WORDS[0]} == kubectl ]] && i=2
    for ((j = 1; j < COMP_CWORD; j++)); do
        case ${COMP_WORDS[j]} in -n|--namespace) ns=(-n "${COMP_WORDS[j+1]}");; esac
    done
    if ((COMP_CWORD == i)); then
        COMPREPLY=($(compgen -W "%(commands)s" -- "$cur"))
    elif [[ ${COMP_WORDS[i]} == completion ]]; then
        COMPREPLY=($(compgen -W "bash zsh" -- "$cur"))
    else
        local names=$(kubectl get pipelines "${ns[@]}" -o name 2>/dev/null | sed 's|.*/||')
        COMPREPLY=($(compgen -W "$names" -- "$cur"))
    fi
}
complete -F _kubectl_pipeline kubectl-pipeline
"""

ZSH_COMPLETION = """\
#compdef kubectl-pipeline
# kubectl pipeline / kubectl-pipeline completion (zsh): source <(kubectl-pipeline completion zsh)
_kubectl_pipeline() {
    local -a ns names
    local i=${words[(I)-n]}
    (( i > 0 )) && ns=(-n ${words[i+1]})
    if (( CURRENT == 2 )); then
        compadd -- %(commands)s
    elif [[ ${words[2]} == completion ]]; then
        compadd -- bash zsh
    else
        names=(${(f)"$(kubectl get pipelines $ns -o name 2>/dev/null | sed 's|.*/||')"})
        compadd -- $names
    fi
}
compdef _kubectl_pipeline kubectl-pipeline
"""


def cmd_completion(args: argparse.Namespace) -> int:
    script = BASH_COMPLETION if args.shell == "bash" else ZSH_COMPLETION
    print(script % {"commands": " ".join(COMMANDS)}, end="")
    return 0


def complete_main(argv: Sequence[str] | None = None) -> int:
    """``kubectl_complete-pipeline``: kubectl (1.26+) runs it to complete ``kubectl pipeline ...``,
    with the words typed after ``pipeline``, the last one being completed; it answers one candidate
    a line and Cobra's directive line (``:4``: no file names)."""
    words = list(sys.argv[1:] if argv is None else argv) or [""]
    typed, current = words[:-1], words[-1]
    positional = [w for i, w in enumerate(typed) if not w.startswith("-")
                  and not (i > 0 and typed[i - 1] in ("-n", "--namespace", "--context", "--kubeconfig"))]
    candidates: list[str] = []
    if not positional:
        candidates = list(COMMANDS)
    elif positional[0] == "completion":
        candidates = ["bash", "zsh"] if len(positional) == 1 else []
    elif positional[0] in COMMANDS and len(positional) == 1:
        options = {typed[i - 1]: w for i, w in enumerate(typed) if i > 0}
        try:
            connection = connect(options.get("--kubeconfig"), options.get("--context"),
                                 options.get("-n") or options.get("--namespace"))
            candidates = connection.names()
        except (PluginError, ApiException, urllib3.exceptions.HTTPError):
            candidates = []
    for candidate in candidates:
        if candidate.startswith(current):
            print(candidate)
    print(":4")
    return 0
