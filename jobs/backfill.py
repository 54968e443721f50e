"""Entry point of scheduled backfills; the job itself is :mod:`colorize_core.backfill`.

    python -m jobs.backfill --source URI_PREFIX --output URI [--config YAML] [--dry-run] [--wait] [colorize flags]
"""

from __future__ import annotations

import sys

from colorize_core.backfill import BackfillConfig, backfill, build_parser, config_from_args, main

__all__ = ["BackfillConfig", "backfill", "build_parser", "config_from_args", "main"]

if __name__ == "__main__":
    sys.exit(main())
