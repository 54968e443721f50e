"""Entry point of the colorize job; the job itself is :mod:`colorize_core.pipeline` (``colorize run`` too).

    python -m jobs.colorize --manifest URI --output URI --model NAME [--weights URI] [--config YAML]
"""

from __future__ import annotations

import sys

from colorize_core.launch import EXIT_FAILED, EXIT_OK, EXIT_TOO_MANY_ERRORS, EXIT_UNFINISHED, Progress
from colorize_core.pipeline import build_parser, config_from_args, drain, main, run, samples_manifest

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_TOO_MANY_ERRORS", "EXIT_UNFINISHED", "Progress", "build_parser",
           "config_from_args", "drain", "main", "run", "samples_manifest"]

if __name__ == "__main__":
    sys.exit(main())
