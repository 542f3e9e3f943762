"""bench/gpu_check.py, the GPU check, runs on CPU too: test it here."""
import json
import subprocess
import sys
from pathlib import Path

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
