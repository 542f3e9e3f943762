"""Raw-text scoring and confidence calibration, on the tiny trained CNN pipeline."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin

from conftest import TRAIN_DATA, make_examples
from spacy_secner.evaluation import bio_of, calibration, raw_text_scores

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def gold_docs(trained_cnn_nlp):
    return [eg.reference for eg in make_examples(trained_cnn_nlp, TRAIN_DATA)]


def test_raw_text_scores_rebuild_text_and_match_char_spans(trained_cnn_nlp, gold_docs):
    sentences = [([t.text for t in doc], bio_of(doc)) for doc in gold_docs]
    scores = raw_text_scores(trained_cnn_nlp, sentences)
    assert scores["gold"] == sum(len(ents) for _, ents in TRAIN_DATA)
    # The pipeline reproduces its training data, and its tokenizer finds the same tokens.
    assert scores["f1"] == pytest.approx(1.0)
    # A sentence whose gold entity the model cannot find lowers recall, not precision.
    extra = (["Nobody", "knows", "Zyxwv", "."], ["O", "O", "B-Tool", "O"])
    worse = raw_text_scores(trained_cnn_nlp, sentences + [extra])
    assert worse["gold"] == scores["gold"] + 1
    assert worse["recall"] < 1.0


def test_raw_text_scores_on_documents_shift_gold_offsets(gold_docs):
    """Sentences joined into documents: same gold entities, at shifted character offsets. An
    entity ruler that knows every gold phrase finds them all only if the offsets are right."""
    ruler_nlp = spacy.blank("en")
    ruler = ruler_nlp.add_pipe("entity_ruler")
    ruler.add_patterns(
        [{"label": e.label_, "pattern": [{"ORTH": t.text} for t in e]} for d in gold_docs for e in d.ents]
    )
    sentences = [([t.text for t in doc], bio_of(doc)) for doc in gold_docs]
    single = raw_text_scores(ruler_nlp, sentences)
    joined = raw_text_scores(ruler_nlp, sentences, sentences_per_doc=2)
    assert single["f1"] == pytest.approx(1.0)
    assert joined["gold"] == single["gold"] == joined["true_positives"]
    assert joined["f1"] == pytest.approx(1.0)
    # An offset off by one character would have missed every entity after the first text.
    shifted = raw_text_scores(ruler_nlp, sentences[1:] + sentences[:1], sentences_per_doc=2)
    assert shifted["f1"] == pytest.approx(1.0)


def test_calibration_table(trained_cnn_nlp, gold_docs, tmp_path):
    path = tmp_path / "dev.spacy"
    DocBin(docs=gold_docs).to_disk(path)
    report = calibration(trained_cnn_nlp, path, n_bins=10)
    assert report["entities"] == sum(len(ents) for _, ents in TRAIN_DATA)
    assert report["precision"] == 1.0
    assert sum(b["count"] for b in report["bins"]) == report["entities"]
    # All correct: the error is the gap between 1 and the mean confidence.
    mean_conf = sum(b["count"] * b["confidence"] for b in report["bins"]) / report["entities"]
    assert report["ece"] == pytest.approx(1.0 - mean_conf)
    assert report["above_0.5"]["precision"] == 1.0


def _run_evaluate_script(nlp, tmp_path, extra=()):
    """scripts/evaluate.py on the shared pipeline and a test DocBin of the gold docs (and
    `extra` sentences), writing into tmp_path / "metrics"."""
    script = ROOT / "scripts" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("evaluate_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not (tmp_path / "model").exists():
        nlp.to_disk(tmp_path / "model")
    docs = [eg.reference for eg in make_examples(nlp, TRAIN_DATA + list(extra))]
    DocBin(docs=docs).to_disk(tmp_path / "test.spacy")
    module.main(tmp_path / "model", tmp_path / "test.spacy", tmp_path / "metrics", "test", -1)
    return tmp_path / "metrics"


def test_evaluate_script_plots_a_gold_label_the_model_lacks(trained_cnn_nlp, tmp_path):
    extra = [("They wanted Zyxwv money .", [("Zyxwv money", "Purp")])]
    assert "Purp" not in trained_cnn_nlp.get_pipe("ner_crf").labels
    metrics = _run_evaluate_script(trained_cnn_nlp, tmp_path, extra)
    report = json.loads((metrics / "seqeval_test.json").read_text())
    assert report["per_type"]["Purp"]["recall"] == 0.0
    assert (metrics / "confusion.png").stat().st_size > 0
    assert sorted(p.name for p in metrics.iterdir()) == [
        "confusion.png", "heatmap.png", "seqeval_test.json", "seqeval_test.txt"
    ]


def test_evaluate_script_failure_leaves_the_previous_outputs(trained_cnn_nlp, tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    for name in ("seqeval_test.txt", "seqeval_test.json", "heatmap.png"):
        (metrics / name).write_text("old")
    (metrics / "confusion.png").mkdir()  # the last output cannot be written
    with pytest.raises(OSError):
        _run_evaluate_script(trained_cnn_nlp, tmp_path)
    assert sorted(p.name for p in metrics.iterdir()) == [
        "confusion.png", "heatmap.png", "seqeval_test.json", "seqeval_test.txt"
    ]
    assert all((metrics / n).read_text() == "old" for n in ("seqeval_test.txt", "heatmap.png"))


def test_plot_curves_script_has_help():
    script = ROOT / "scripts" / "plot_curves.py"
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1"}
    shown = subprocess.run([sys.executable, str(script), "--help"], env=env, capture_output=True,
                           text=True, check=True).stdout
    assert "Plot training loss, dev loss and dev entity F1" in shown
    assert "JSON-lines file of spacy-secner.curve_logger.v1" in shown
    assert "Where the PNG goes" in shown
