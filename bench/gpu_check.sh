#!/usr/bin/env bash
# The GPU check: one prepared run for a GPU machine that has PyTorch and CuPy but no spaCy and no
# network, within 10 minutes. Build its files first, where PyPI and DNRTI are at hand:
#   DNRTI_DIR=... bash bench/gpu_prepare.sh      -> .gpu/ (56 MB, never committed)
# .gpu/ then travels with the working tree. Stages, each with its own time limit; a failed stage
# is reported and the next one still runs:
#   setup  unpack .gpu/site312.tar.xz in front of the machine's own packages, give spacy-secner its
#          entry points, unpack the MiniLM encoder (float16 -> float32), convert DNRTI to DocBins
#   1      tiny: `bench_speed.py tiny` on the GPU, the pipeline's own overhead beside the same
#          model in plain PyTorch and an HF token classifier
#   2      train: `spacy train configs/minilm_cpu.cfg` (the default config) on the GPU for $EPOCHS
#          epochs; seconds per epoch and words/s from its curves
#   3      evaluate: `scripts/evaluate.py` on the test set with stage 2's best model
#   4      speed: `bench_speed.py run` on the GPU with stage 2's model: en_secner beside HF token
#          classification and the bare encoder, sentences and documents
#   5      training step: `bench_train_step.py` on the GPU, the fused Adam update beside thinc's
#          per-parameter loop, in one process
#   6      tests: the GPU tests and the tests that outputs did not change
# Settings (environment variables, with defaults):
#   STAGES="1 2 3 4 5 6"  GPU_ID=0  EPOCHS=2  MAX_STEPS=0 (EPOCHS x EVAL_FREQ)  EVAL_FREQ=329  BATCHES=1,64  REPEATS=5
#   THREADS=8  LIMIT=0 (test sentences; 0: all)  DOCS=50  STEPS=10  ROUNDS=2  PYTHON=python3
#   SITE=.gpu/site312.tar.xz (empty: the interpreter has spaCy already)
#   ENCODER_ARCHIVE=.gpu/minilm-f16.tar.xz  DNRTI=.gpu/dnrti  OUT=/tmp/gpu-check  WORK=/tmp/gpu-work
#   LIMIT_TINY=120  LIMIT_TRAIN=200  LIMIT_EVAL=60  LIMIT_SPEED=180  LIMIT_STEP=60  LIMIT_TESTS=90
#   (seconds)
# With GPU_ID=-1 every stage runs on the CPU (bench/tests/test_gpu_check.py does, on tiny inputs).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
WORK=${WORK:-/tmp/gpu-work}
STAGES=${STAGES:-1 2 3 4 5 6}
GPU_ID=${GPU_ID:-0}
EPOCHS=${EPOCHS:-2}
EVAL_FREQ=${EVAL_FREQ:-329}
MAX_STEPS=${MAX_STEPS:-0}
# The budget in steps, so that the last epoch ends with an evaluation (spaCy evaluates every
# EVAL_FREQ steps, not at the end).
[ "$MAX_STEPS" -gt 0 ] || MAX_STEPS=$((EPOCHS * EVAL_FREQ))
BATCHES=${BATCHES:-1,64}
REPEATS=${REPEATS:-5}
THREADS=${THREADS:-8}
LIMIT=${LIMIT:-0}
DOCS=${DOCS:-50}
STEPS=${STEPS:-10}
ROUNDS=${ROUNDS:-2}
PYTHON=${PYTHON:-python3}
SITE=${SITE-.gpu/site312.tar.xz}
ENCODER_ARCHIVE=${ENCODER_ARCHIVE:-.gpu/minilm-f16.tar.xz}
DNRTI=${DNRTI:-.gpu/dnrti}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
stage() { [[ " $STAGES " == *" $1 "* ]]; }
started=$(date +%s)
elapsed() { echo "$(( $(date +%s) - started )) s"; }

echo "== setup"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
if [ -n "$SITE" ]; then
  mkdir -p "$WORK/site" && tar xJf "$SITE" -C "$WORK/site" || exit 1
  # spacy-secner's entry points (how spaCy finds its registered names) from this checkout.
  "$PYTHON" -m pip install -q --no-deps --no-index --no-build-isolation --no-compile \
    --target "$WORK/secner" . > "$OUT/setup.log" 2>&1 || { tail "$OUT/setup.log"; exit 1; }
  rm -rf "$WORK/secner/spacy_secner"  # the code itself comes from this checkout
  export PYTHONPATH="$PWD:$WORK/site:$WORK/secner"
fi
"$PYTHON" -c "import torch, spacy, thinc, transformers; print('torch', torch.__version__, 'spacy', spacy.__version__, 'thinc', thinc.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
ENCODER="$WORK/encoder"
"$PYTHON" bench/gpu_check.py unpack-encoder "$ENCODER_ARCHIVE" "$ENCODER" || exit 1
"$PYTHON" scripts/convert.py "$WORK/corpus" --dnrti-dir "$DNRTI" > "$OUT/convert.log" 2>&1 \
  || { tail "$OUT/convert.log"; exit 1; }
echo "setup done after $(elapsed)"

if stage 1; then
  echo "== 1. tiny-encoder check"
  timeout "${LIMIT_TINY:-120}" "$PYTHON" bench/bench_speed.py tiny --gpu-id "$GPU_ID" --threads "$THREADS" \
    --dnrti-dir "$DNRTI" --limit "$LIMIT" --docs "$DOCS" --repeats "$REPEATS" --batch-sizes 64 \
    --output "$OUT/tiny.json" > "$OUT/tiny.md" 2> "$OUT/tiny.log" || echo "stage 1 failed: $(tail -5 "$OUT/tiny.log")"
  cat "$OUT/tiny.md"; echo "after $(elapsed)"
fi

MODEL="$WORK/train/model-best"
if stage 2; then
  echo "== 2. spacy train configs/minilm_cpu.cfg"
  rm -rf "$WORK/train"
  timeout "${LIMIT_TRAIN:-200}" "$PYTHON" -m spacy train configs/minilm_cpu.cfg --output "$WORK/train" \
    --gpu-id "$GPU_ID" --paths.train "$WORK/corpus/train.spacy" --paths.dev "$WORK/corpus/dev.spacy" \
    --paths.curves "$OUT/curves.jsonl" --components.transformer.model.name "$ENCODER" \
    --training.max_epochs 0 --training.max_steps "$MAX_STEPS" --training.eval_frequency "$EVAL_FREQ" \
    > "$OUT/train.log" 2>&1 || echo "stage 2 failed or stopped at its limit: $(tail -3 "$OUT/train.log")"
  tail -12 "$OUT/train.log"
  "$PYTHON" bench/gpu_check.py train-summary "$OUT/curves.jsonl" | tee "$OUT/train_summary.txt"
  echo "after $(elapsed)"
fi
[ -d "$MODEL" ] || MODEL="$WORK/train/model-last"

if stage 3 && [ -d "$MODEL" ]; then
  echo "== 3. evaluate on the test set"
  timeout "${LIMIT_EVAL:-60}" "$PYTHON" scripts/evaluate.py "$MODEL" "$WORK/corpus/test.spacy" "$OUT/metrics" \
    --gpu-id "$GPU_ID" > "$OUT/evaluate.log" 2>&1 || echo "stage 3 failed: $(tail -5 "$OUT/evaluate.log")"
  tail -4 "$OUT/evaluate.log"; echo "after $(elapsed)"
fi

if stage 4 && [ -d "$MODEL" ]; then
  echo "== 4. speed: en_secner, HF token classification, bare encoder"
  timeout "${LIMIT_SPEED:-180}" "$PYTHON" bench/bench_speed.py run --model "$MODEL" --encoder "$ENCODER" \
    --gpu-id "$GPU_ID" --threads "$THREADS" --dnrti-dir "$DNRTI" --limit "$LIMIT" --docs "$DOCS" \
    --batch-sizes "$BATCHES" --repeats "$REPEATS" --load-runs 1 --curves "$OUT/curves.jsonl" \
    --output "$OUT/speed.json" > "$OUT/speed.md" 2> "$OUT/speed.log" || echo "stage 4 failed: $(tail -5 "$OUT/speed.log")"
  cat "$OUT/speed.md"; echo "after $(elapsed)"
fi

if stage 5; then
  echo "== 5. training step: fused Adam update beside thinc's loop"
  timeout "${LIMIT_STEP:-60}" "$PYTHON" bench/bench_train_step.py "$WORK/corpus/train.spacy" \
    --encoder "$ENCODER" --gpu-id "$GPU_ID" --steps "$STEPS" --rounds "$ROUNDS" \
    > "$OUT/train_step.txt" 2> "$OUT/train_step.log" || echo "stage 5 failed: $(tail -5 "$OUT/train_step.log")"
  cat "$OUT/train_step.txt"; echo "after $(elapsed)"
fi

if stage 6; then
  echo "== 6. tests"
  timeout "${LIMIT_TESTS:-90}" "$PYTHON" -m pytest -q -x -p no:cacheprovider -rs tests/test_gpu.py \
    tests/test_recorded_outputs.py tests/test_alignment.py tests/test_crf.py tests/test_adam_step.py > "$OUT/pytest.log" 2>&1 \
    || echo "stage 6 failed"
  tail -5 "$OUT/pytest.log"; echo "after $(elapsed)"
fi
