"""Entry point of model evaluation; the job itself is :mod:`colorize_core.evaluate`.

    python -m jobs.evaluate --manifest URI --output URI --models NAME[,NAME|URI|label=URI...] [--config YAML]
"""

from __future__ import annotations

import sys

from colorize_core.evaluate import EvaluateConfig, build_parser, config_from_args, main, model_specs, run

__all__ = ["EvaluateConfig", "build_parser", "config_from_args", "main", "model_specs", "run"]

if __name__ == "__main__":
    sys.exit(main())
