"""``colorize review``: a local page over a finished run to inspect it and place colour hints (see server.py)."""
