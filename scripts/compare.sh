#!/usr/bin/env bash
# The comparison experiment; arguments go to scripts/compare.py (see its --help).
#   bash scripts/compare.sh --workdir=runs/compare --pretrain_epochs=200 --epochs=100 --batch_size=512
set -euo pipefail
exec python "$(dirname "$0")/compare.py" "$@"
