"""bench_train_step.py end to end on the tiny encoder and a few training sentences.

No timing is asserted: both settings of each comparison have to run and report their step
and update times.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
from conftest import make_examples
from spacy.tokens import DocBin

SCRIPT = Path(__file__).parents[1] / "bench_train_step.py"
ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(
    "compare,settings", [("update", {"fused", "thinc"}), ("packing", {"packed (128)", "padded"})]
)
def test_both_settings_run_and_report(tmp_path, compare, settings):
    nlp = spacy.blank("en")
    docs = [eg.reference for eg in make_examples(nlp)] * 4
    DocBin(docs=docs).to_disk(tmp_path / "train.spacy")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "train.spacy"), "--tiny", "--steps", "2",
         "--rounds", "1", "--compare", compare,
         "--config", str(ROOT / "configs" / "minilm_cpu.cfg")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = dict(re.findall(r"^(.+): ([0-9.]+) ms per step", proc.stdout, re.M))
    assert set(rows) == settings, proc.stdout
    assert all(float(ms) > 0 for ms in rows.values())
    updates = re.findall(r"optimizer's update ([0-9.]+) ms", proc.stdout)
    assert len(updates) == 2 and all(float(ms) > 0 for ms in updates)
