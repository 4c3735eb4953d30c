#!/usr/bin/env bash
# The GPU report on a lent, offline GPU host (see README, "GPU figures").
#
#   bash scripts/gpu_host.sh prepare      # here: wheels into .whl/, data and reference into .gpu/ (git-ignored)
#   bash scripts/gpu_host.sh run OUT      # there, with .whl and .gpu carried: writes OUT/report.md
#
# The device tool's call:  run(command="bash scripts/gpu_host.sh run $OUT", carry=[".whl", ".gpu"],
#                               timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    for p in /.whl/ /.gpu/; do grep -qxF "$p" .git/info/exclude 2>/dev/null || echo "$p" >> .git/info/exclude; done
    rm -rf .whl .gpu
    bash ../shared/gpu-host/wheels.sh .whl >/dev/null
    mkdir -p .gpu
    cp -r ../shared/data/tfds .gpu/tfds
    cp -r ../shared/reference .gpu/reference
    du -sh .whl .gpu
    echo "carried: $(du -scm .whl .gpu | tail -1 | cut -f1) MiB of the 64 MiB a call may carry (with the working tree)"
    ;;
  run)
    out=${2:?usage: gpu_host.sh run OUT}
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    export SIMCLR_JAX_CACHE=/tmp/simclr_jax_cache
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    python3 scripts/gpu_report.py "$out" --data_dir=.gpu/tfds --reference=.gpu/reference/simclr_torch.py \
        --workdir=/tmp/gpu_report_run --budget=540
    ;;
  *)
    echo "usage: bash scripts/gpu_host.sh prepare | run OUT" >&2
    exit 2
    ;;
esac
