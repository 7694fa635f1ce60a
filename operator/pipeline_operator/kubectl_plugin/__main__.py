"""``python -m pipeline_operator.kubectl_plugin``: the command line, as ``kubectl-pipeline``."""

from __future__ import annotations

import sys

from .main import main

sys.exit(main())
