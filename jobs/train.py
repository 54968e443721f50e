"""Entry point of training; the job itself is :mod:`colorize_core.train`.

    python -m jobs.train --config configs/train-compact.yaml [--set max_steps=200 --set output=out/x]
"""

from __future__ import annotations

import sys

from colorize_core.train import TrainConfig, build_parser, config_from_args, main, run

__all__ = ["TrainConfig", "build_parser", "config_from_args", "main", "run"]

if __name__ == "__main__":
    sys.exit(main())
