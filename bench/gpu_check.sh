#!/usr/bin/env bash
# The GPU check, as one script for a GPU machine that has PyTorch but no spaCy and no
# network. It needs, in the working tree (never committed):
#   .gpu/site312.tar.xz  spaCy, thinc, spacy-transformers, transformers 4.53.2 ... installed for
#                        CPython 3.12 with `pip install --target`, then tarred (see BENCHMARKS.md)
#   .gpu/vocab.txt       a BERT vocab (the embedded MiniLM's), padded to SecBERT's 52,000 entries
#   .gpu/dnrti/test.txt  DNRTI's test set, for the benchmark texts
#   corpus/*.spacy       the converted corpus (`spacy project run convert`)
# Stages, each with its own time limit; a failed stage is reported and the next one still runs:
#   1. the pipe's torch core (encoder, BiLSTM, CRF) without spaCy: training steps and inference
#   2. `spacy train` on the GPU for 400 steps of 8 sentences, SecBERT-shaped encoder
#   3. bench/bench_speed.py on the GPU with the model from stage 2
#   4. the GPU tests (pytest tests/test_gpu.py tests/test_transformer_model.py; the tarball
#      carries pytest 8.3.3, pluggy, iniconfig and packaging too)
#   5. `bench_speed.py grouping`: the transformer's batching settings side by side, stage 2's model
# Results go to $OUT (default /tmp/gpu-check). Settings (environment variables, with defaults):
#   STAGES="1 2 3 4 5"  TRAIN_STEPS=400  EVAL_FREQ=200  BATCHES=1,8,64  LOAD_RUNS=3
#   GROUPING=4096:0,4096:8192,4096:2048,16384:8192,16384:32768,16384:0
#   LIMIT_CORE=90  LIMIT_TRAIN=180  LIMIT_BENCH=290  LIMIT_TESTS=120  LIMIT_GROUPING=120
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
STAGES=${STAGES:-1 2 3 4 5}
GROUPING=${GROUPING:-4096:0,4096:8192,4096:2048,16384:8192,16384:32768,16384:0}
TRAIN_STEPS=${TRAIN_STEPS:-400}
EVAL_FREQ=${EVAL_FREQ:-200}
BATCHES=${BATCHES:-1,8,64}
LOAD_RUNS=${LOAD_RUNS:-3}
mkdir -p "$OUT" /tmp/site
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
tar xJf .gpu/site312.tar.xz -C /tmp/site || exit 1
# The repository's own spacy_secner first; its entry points come from the dist-info in /tmp/site.
export PYTHONPATH="$PWD:/tmp/site"
python3 -c "import torch, spacy, thinc, transformers, cupy; print('torch', torch.__version__, 'spacy', spacy.__version__, 'thinc', thinc.__version__, 'transformers', transformers.__version__, 'cupy', cupy.__version__)" 2>&1 | tail -3 | tee -a "$OUT/gpu.txt"
ENCODER=/tmp/secbert-shaped
python3 bench/gpu_check.py make-encoder .gpu/vocab.txt $ENCODER || exit 1

if [[ " $STAGES " == *" 1 "* ]]; then
echo "== 1. torch core"
timeout ${LIMIT_CORE:-90} python3 bench/gpu_check.py core $ENCODER .gpu/dnrti/test.txt "$OUT/core_gpu.json" \
  --device cuda --train-steps 300 > "$OUT/core.log" 2>&1 || echo "stage 1 failed: $(tail -5 "$OUT/core.log")"
tail -25 "$OUT/core.log"
fi

if [[ " $STAGES " == *" 2 "* ]]; then
echo "== 2. spacy train on the GPU"
timeout ${LIMIT_TRAIN:-180} python3 -m spacy train configs/secbert_gpu.cfg --output /tmp/gpu-train --gpu-id 0 \
  --paths.train corpus/train.spacy --paths.dev corpus/dev.spacy --paths.curves "$OUT/curves_gpu.jsonl" \
  --components.transformer.model.name $ENCODER --training.max_steps $TRAIN_STEPS --training.eval_frequency $EVAL_FREQ \
  > "$OUT/train.log" 2>&1 || echo "stage 2 failed"
tail -12 "$OUT/train.log"
fi

if [[ " $STAGES " == *" 3 "* ]] && [ -d /tmp/gpu-train/model-last ]; then
  echo "== 3. bench_speed on the GPU"
  timeout ${LIMIT_BENCH:-290} python3 bench/bench_speed.py run --model /tmp/gpu-train/model-last --encoder $ENCODER \
    --gpu-id 0 --threads 4 --dnrti-dir .gpu/dnrti --output "$OUT/bench_speed_gpu.json" \
    --curves "$OUT/curves_gpu.jsonl" --spacy-benchmark --corpus corpus/test.spacy --load-runs $LOAD_RUNS --batch-sizes $BATCHES \
    > "$OUT/bench.md" 2> >(tee "$OUT/bench.log" >&2) || echo "stage 3 failed: $(tail -20 "$OUT/bench.log")"
  cat "$OUT/bench.md"
fi

if [[ " $STAGES " == *" 4 "* ]]; then
  echo "== 4. GPU tests"
  timeout ${LIMIT_TESTS:-120} python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py \
    tests/test_transformer_model.py > "$OUT/pytest_gpu.log" 2>&1 || echo "stage 4 failed"
  tail -15 "$OUT/pytest_gpu.log"
fi

if [[ " $STAGES " == *" 5 "* ]] && [ -d /tmp/gpu-train/model-last ]; then
  echo "== 5. transformer batching settings on the GPU"
  timeout ${LIMIT_GROUPING:-120} python3 bench/bench_speed.py grouping --model /tmp/gpu-train/model-last \
    --gpu-id 0 --threads 4 --dnrti-dir .gpu/dnrti --settings "$GROUPING" \
    --output "$OUT/grouping_gpu.json" > "$OUT/grouping.md" 2> "$OUT/grouping.log" \
    || echo "stage 5 failed: $(tail -20 "$OUT/grouping.log")"
  cat "$OUT/grouping.md"
fi
