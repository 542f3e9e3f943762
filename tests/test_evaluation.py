"""Raw-text scoring and confidence calibration, on the tiny trained CNN pipeline."""
import pytest
from spacy.tokens import DocBin

from conftest import TRAIN_DATA, make_examples
from spacy_secner.evaluation import bio_of, calibration, raw_text_scores


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
