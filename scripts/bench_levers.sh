#!/usr/bin/env bash
# What each speed change of issue 4 bought: the pipeline beside the bare encoder (batch 64,
# sentences and documents, median of 5), one bench_speed run per state, one after the other on
# the same machine. Compare the pipeline / encoder ratios: each is measured side by side in its
# own run, so machine noise between runs cancels out of it.
#
#   scripts/bench_levers.sh OLD_TREE OLD_MODEL OLD_MODEL_MBI512 NEW_MODEL OUT_DIR
#
# OLD_TREE: a checkout of the code before the changes (git worktree add /tmp/old 92f673c);
# OLD_MODEL: the trained pipeline with its old settings; OLD_MODEL_MBI512: the same with the
# transformer's max_batch_items set to 512; NEW_MODEL: the same weights with the final
# settings (sentencizer, sentence-bounded windows, max_batch_items 512).
set -euo pipefail
OLD_TREE=$1 OLD_MODEL=$2 OLD_MBI=$3 NEW_MODEL=$4 OUT=$5
mkdir -p "$OUT"
ARGS=(run --systems pipeline,floor --batch-sizes 64 --repeats 5 --load-runs 0 --curves /dev/null)
# 1. The code at the start (its own bench script), old settings.
(cd "$OLD_TREE" && PYTHONPATH="$OLD_TREE" python scripts/bench_speed.py "${ARGS[@]}" \
  --model "$OLD_MODEL" --output "$OUT/1-start.json" > "$OUT/1-start.md")
# 2. Batched Viterbi and one host copy of the tags per batch.
python scripts/bench_speed.py "${ARGS[@]}" --model "$OLD_MODEL" --output "$OUT/2-viterbi.json" > "$OUT/2-viterbi.md"
# 3. + max_batch_items 512.
python scripts/bench_speed.py "${ARGS[@]}" --model "$OLD_MBI" --output "$OUT/3-batch512.json" > "$OUT/3-batch512.md"
# 4. + sentencizer and sentence-bounded windows (the shipped settings).
python scripts/bench_speed.py "${ARGS[@]}" --model "$NEW_MODEL" --output "$OUT/4-final.json" > "$OUT/4-final.md"
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
print("| state | texts | pipeline words/s | encoder words/s | pipeline / encoder |")
print("|---|---|---:|---:|---:|")
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    for row in json.loads(path.read_text())["throughput"]:
        p, f = row["systems"]["pipeline"], row["systems"]["floor"]
        print(f"| {path.stem} | {row['texts']} | {p['wps_median']:,.0f} | {f['wps_median']:,.0f} "
              f"| {row['ratios']['pipeline/floor']:.2f} |")
PY
