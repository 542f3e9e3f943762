#!/usr/bin/env bash
# Builds .gpu/, what bench/gpu_check.sh needs on a GPU machine that has no network, on a machine
# that has PyPI, the project's .venv and DNRTI ($DNRTI_DIR). .gpu/ is never committed (it holds
# DNRTI); it travels with the working tree to the GPU machine, 64 MiB at most:
#   site312.tar.xz      what the GPU machine lacks, or has at versions the pipeline cannot use
#                       (its transformers 5 and huggingface_hub 1), as pinned in
#                       constraints.txt: CPython 3.12 wheels installed into one folder with
#                       `pip install --target`, debug symbols and test suites left out, xz (the
#                       wheels themselves are over 70 MB). gpu_check.sh unpacks it in front of
#                       the machine's own packages.
#   minilm-f16.tar.xz   the embedded MiniLM encoder with float16 weights (39 MB instead of 87 MB);
#                       `gpu_check.py unpack-encoder` turns them back into float32 there.
#   dnrti/*.txt         DNRTI's three files: the corpus is converted there, and the speed
#                       benchmark reads its texts from test.txt.
# Usage: DNRTI_DIR=/path/to/dnrti bash bench/gpu_prepare.sh   (about a minute and 75 MB of
# downloads; PY=.venv/bin/python and GPU_DIR=.gpu by default)
set -euo pipefail
PY=${PY:-.venv/bin/python}
GPU_DIR=${GPU_DIR:-.gpu}
: "${DNRTI_DIR:?set DNRTI_DIR to the folder of the DNRTI files train.txt, valid.txt and test.txt}"
PACKAGES="spacy spacy-legacy spacy-loggers thinc blis cymem preshed murmurhash srsly wasabi
  weasel confection catalogue cloudpathlib smart_open typer click spacy-transformers
  spacy-alignments transformers tokenizers huggingface_hub pydantic pydantic_core
  annotated-types typing-inspection typing_extensions pytorch-crf seqeval"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"

mkdir -p "$GPU_DIR/dnrti"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pins=()
for name in $PACKAGES; do
  pin=$(grep -i -E "^${name//[-_]/[-_]}==" constraints.txt) || { echo "no pin for $name in constraints.txt"; exit 1; }
  pins+=("$pin")
done
# seqeval has no wheel: build one here (pure Python).
$PY -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/wheels" "$(grep -i '^seqeval==' constraints.txt)"
binary=()
for pin in "${pins[@]}"; do [[ $pin == seqeval==* ]] || binary+=("$pin"); done
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  $PLATFORMS -d "$tmp/wheels" "${binary[@]}"
# shellcheck disable=SC2086
$PY -m pip install -q --no-deps --no-index --no-compile --only-binary=:all: --python-version 3.12 \
  --implementation cp $PLATFORMS --target "$tmp/site" "$tmp"/wheels/*.whl
find "$tmp/site" -name '*.so' -exec strip --strip-debug {} +
find "$tmp/site" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
tar -C "$tmp/site" -cf - . | xz -9e -T0 > "$GPU_DIR/site312.tar.xz"
$PY bench/gpu_check.py pack-encoder \
  "$($PY -c 'from spacy_secner.encoders import embedded_encoder; print(embedded_encoder())')" \
  "$GPU_DIR/minilm-f16.tar.xz"
cp "$DNRTI_DIR"/train.txt "$DNRTI_DIR"/valid.txt "$DNRTI_DIR"/test.txt "$GPU_DIR/dnrti/"
du -ch "$GPU_DIR"/site312.tar.xz "$GPU_DIR"/minilm-f16.tar.xz "$GPU_DIR"/dnrti
