#!/usr/bin/env bash
# Paired rounds of `mv2mae bench loader`, before and after a change, alternating which runs first.
# usage: bench_loader_pairs.sh BEFORE_CHECKOUT AFTER_CHECKOUT OUT [EXTRA_BEFORE_ARGS]
# (each checkout with its own .venv; issue 23 ran 56fd118 with EXTRA_BEFORE_ARGS="--ring-rounds 0")
set -euo pipefail
before=$1; after=$2; out=$3; extra=${4:-}
mkdir -p "$out"
args="--workers 2 --seconds 10 --raw-size 640x360 --groups 3"
for r in 0 1 2; do
  if [ $((r % 2)) = 0 ]; then order="before after"; else order="after before"; fi
  for side in $order; do
    if [ "$side" = before ]; then dir=$before; more=$extra; else dir=$after; more=""; fi
    # shellcheck disable=SC2086
    (cd "$dir" && HF_HUB_OFFLINE=1 .venv/bin/mv2mae bench loader $args $more --work "/tmp/bl-$side" \
        --json "$out/$side-$r.json" > "$out/$side-$r.log" 2>&1)
    echo "$side round $r done $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  done
done
