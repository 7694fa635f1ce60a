"""``kubectl pipeline``: monitor events, lifecycle actions and one-screen status of a Pipeline.

kubectl finds the console script ``kubectl-pipeline`` on the PATH; ``pipeline-operator kubectl``
runs the same. It talks to the Kubernetes API as the user, with the user's kubeconfig, context
and namespace (so RBAC applies exactly as to ``kubectl get`` and ``kubectl patch``), and makes the
same changes a user would make by hand: spec fields and one-shot annotations, as a merge patch
with the field manager ``kubectl-pipeline``. Monitor events come from ``status.history``, or
from the operator's HTTP API (``--api``) for the full retained history, to which the kubeconfig's
token goes only over https, or over plain http to a loopback address, and never on to where a
redirect points (:func:`api_url_refusal`, :func:`api_opener`).

The ``kubernetes`` client is blocking, which suits a command that does one thing at a time.

The package's rooms: ``connection`` (the Kubernetes API and the operator's API, as the user), ``commands``
(events, the lifecycle actions, status), ``output`` (rows, JSON and YAML), ``completion`` (shell completion:
:func:`complete_main`, the console script ``kubectl_complete-pipeline``) and ``main`` (the command line:
:func:`main`, the console script ``kubectl-pipeline``).
"""

from __future__ import annotations

from .completion import complete_main
from .main import main

__all__ = ["complete_main", "main"]
