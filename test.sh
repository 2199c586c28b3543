#!/usr/bin/env bash
# Install dmforge with its test tools into .venv, lint, and run the tests.
# Pass pytest options through, e.g. `./test.sh -m "not slow"` for the fast suite alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/bootstrap.sh
dmforge_bootstrap "dev"
.venv/bin/ruff check src tests bench notebooks
.venv/bin/ruff format --check src tests bench notebooks
.venv/bin/python -m pytest "$@"
