#!/usr/bin/env bash
# System packages the test suite needs beyond the Python ones: headless Chromium, which
# tests/test_evaluate_job.py uses to render report.html and check that every image loads.
# Idempotent: does nothing when chromium is already installed. Needs root (apt-get).
set -euo pipefail
command -v chromium >/dev/null 2>&1 || {
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
}
chromium --version
