"""Raw-text scoring and confidence calibration, on the tiny trained CNN pipeline."""
import pytest
import spacy
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
