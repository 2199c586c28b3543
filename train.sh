#!/usr/bin/env bash
# The whole dmforge pipeline in one command: scenarios → dataset → (training, evaluation, GGUF, deploy).
# Any options are passed to `dmforge pipeline`; see `./train.sh --help`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/bootstrap.sh
source scripts/allocator.sh
dmforge_bootstrap ""
dmforge_allocator
exec .venv/bin/dmforge pipeline "$@"
