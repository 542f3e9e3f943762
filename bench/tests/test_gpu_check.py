"""bench/gpu_check.py, the GPU check, runs on CPU too: test it here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spacy_secner.bio import bio_tags

import gpu_check

SCRIPT = Path(gpu_check.__file__)


def test_entity_rows_are_the_span_rows_the_pipe_builds():
    tags = bio_tags([f"T{i}" for i in range(13)])  # O, B-T0, I-T0, B-T1, I-T1, ...
    paths = torch.tensor([[1, 2, 2, 0, 3, 0], [5, 6, 3, 4, 0, -1], [0, 0, 0, -1, -1, -1]])
    rows = gpu_check._entity_rows(paths, paths >= 0, tags).tolist()
    # (sequence, start, end, the I- tag that would extend the entity)
    assert rows == [[0, 0, 3, 2], [0, 4, 5, 4], [1, 0, 2, 6], [1, 2, 4, 4]]


def test_core_timing_runs_on_cpu(tiny_bert_dir, tmp_path):
    test_txt = tmp_path / "test.txt"
    test_txt.write_text(
        "APT28 B-HackOrg\nused O\nX-Agent B-Tool\n. O\n\nTurla B-HackOrg\nstruck O\n. O\n\n",
        encoding="utf8",
    )
    out = tmp_path / "core.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "core", str(tiny_bert_dir), str(test_txt), str(out),
         "--device", "cpu", "--train-steps", "3", "--repeats", "1", "--infer-batch", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["training"]["steps"] == 3
    assert report["inference"]["sentences"] == 2 and report["inference"]["words"] == 7
    assert report["inference"]["pipe_core_s"] > 0


def test_encoder_packs_to_float16_and_back(tiny_bert_dir, tmp_path):
    from safetensors.torch import load_file

    archive = tmp_path / "encoder.tar.xz"
    gpu_check.pack_encoder(tiny_bert_dir, archive)
    gpu_check.unpack_encoder(archive, tmp_path / "encoder")
    before = load_file(str(tiny_bert_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "encoder" / "model.safetensors"))
    assert set(before) == set(after)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype == torch.float32
        torch.testing.assert_close(after[name], tensor.half().float(), rtol=0, atol=0)
    assert (tmp_path / "encoder" / "tokenizer.json").is_file()
    assert not (tmp_path / "encoder" / "model.f16.safetensors").exists()


SENTENCE = "APT28 B-HackOrg\nused O\nX-Agent B-Tool\nagainst O\nNATO B-Org\nin O\n2016 B-Time\n. O\n\n"


@pytest.mark.slow
def test_gpu_check_runs_on_cpu(tiny_bert_dir, tmp_path):
    """Every stage but the tests, on the CPU (GPU_ID=-1), on a tiny encoder and a tiny DNRTI:
    setup, the tiny check, training the default config, evaluation, the speed table and the
    training step's two updates."""
    dnrti = tmp_path / "dnrti"
    dnrti.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        (dnrti / name).write_text(SENTENCE * 8, encoding="utf8")
    archive = tmp_path / "encoder.tar.xz"
    gpu_check.pack_encoder(tiny_bert_dir, archive)
    out, work = tmp_path / "out", tmp_path / "work"
    env = {
        **os.environ,
        "GPU_ID": "-1", "SITE": "", "PYTHON": sys.executable, "STAGES": "1 2 3 4 5",
        "ENCODER_ARCHIVE": str(archive), "DNRTI": str(dnrti), "OUT": str(out), "WORK": str(work),
        # No MAX_STEPS: the script's own budget, EPOCHS x EVAL_FREQ steps.
        "EPOCHS": "2", "EVAL_FREQ": "1", "BATCHES": "4", "REPEATS": "1",
        "THREADS": "1", "LIMIT": "6", "DOCS": "2", "STEPS": "1", "ROUNDS": "1",
        "LIMIT_TINY": "600", "LIMIT_TRAIN": "600", "LIMIT_EVAL": "600", "LIMIT_SPEED": "600",
        "LIMIT_STEP": "600",
    }
    root = SCRIPT.parents[1]
    proc = subprocess.run(["bash", str(root / "bench" / "gpu_check.sh")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "failed" not in proc.stdout, proc.stdout[-3000:]
    tiny = json.loads((out / "tiny.json").read_text())
    assert {"pipeline/plain", "pipeline/hf_spans"} <= set(tiny["throughput"][0]["ratios"])
    assert "epoch 1 step 1" in (out / "train_summary.txt").read_text()  # seconds: whole ones
    assert (work / "train" / "model-last").is_dir()
    assert (out / "metrics" / "seqeval_test.json").is_file()
    speed = json.loads((out / "speed.json").read_text())
    assert {r["texts"] for r in speed["throughput"]} == {"sentences", "documents"}
    assert speed["training"]["words"] > 0
    step = (out / "train_step.txt").read_text()
    assert "fused:" in step and "thinc:" in step, step
