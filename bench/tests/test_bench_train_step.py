"""bench_train_step.py end to end on the tiny encoder and a few training sentences.

No timing is asserted: both settings have to run and report their step and update times.
"""
import re
import subprocess
import sys
from pathlib import Path

import spacy
from conftest import make_examples
from spacy.tokens import DocBin

SCRIPT = Path(__file__).parents[1] / "bench_train_step.py"
ROOT = Path(__file__).parents[2]


def test_both_updates_run_and_report(tmp_path):
    nlp = spacy.blank("en")
    docs = [eg.reference for eg in make_examples(nlp)] * 4
    DocBin(docs=docs).to_disk(tmp_path / "train.spacy")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "train.spacy"), "--tiny", "--steps", "2",
         "--rounds", "1", "--config", str(ROOT / "configs" / "minilm_cpu.cfg")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = dict(re.findall(r"^(fused|thinc): ([0-9.]+) ms per step", proc.stdout, re.M))
    assert set(rows) == {"fused", "thinc"}, proc.stdout
    assert all(float(ms) > 0 for ms in rows.values())
    updates = re.findall(r"optimizer's update ([0-9.]+) ms", proc.stdout)
    assert len(updates) == 2 and all(float(ms) > 0 for ms in updates)


def test_packed_and_padded_training_run_and_report(tmp_path):
    nlp = spacy.blank("en")
    docs = [eg.reference for eg in make_examples(nlp)] * 4
    DocBin(docs=docs).to_disk(tmp_path / "train.spacy")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "train.spacy"), "--tiny", "--steps", "2",
         "--rounds", "1", "--compare", "packing",
         "--config", str(ROOT / "configs" / "minilm_cpu.cfg")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = dict(re.findall(r"^(packed \(128\)|padded): ([0-9.]+) ms per step", proc.stdout, re.M))
    assert set(rows) == {"packed (128)", "padded"}, proc.stdout
    assert all(float(ms) > 0 for ms in rows.values())
