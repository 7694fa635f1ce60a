"""Development tooling of pipeline-operator: the local control plane and the demo.

Not part of the operator. It ships in the same distribution but its dependencies
(``cryptography`` for the control plane's TLS material, ``PyYAML`` for the demo) come with the
``dev`` extra: ``pip install 'pipeline-operator[dev]'`` (the ``test`` extra includes it). The
``pipeline-operator control-plane`` and ``pipeline-operator demo`` commands import it lazily.
The runtime package, :mod:`pipeline_operator`, never imports it (an import-linter contract).
"""
