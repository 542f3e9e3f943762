"""The plateau schedule, the curve logger and seqeval-vs-spaCy agreement, on a tiny CNN model."""
import json

import pytest
import spacy
from spacy.cli.train import train
from spacy.tokens import Doc, DocBin
from spacy.training import Corpus, Example

from conftest import make_examples

from spacy_secner.evaluation import predict_corpus, read_curves, seqeval_report
from spacy_secner.training import dev_scores, plateau

SENTENCES = [
    (["APT28", "used", "X-Agent", "against", "NATO", "in", "2016", "."],
     ["B-HackOrg", "O", "B-Tool", "O", "B-Org", "O", "B-Time", "O"]),
    (["Lazarus", "Group", "targeted", "banks", "in", "South", "Korea", "."],
     ["B-HackOrg", "I-HackOrg", "O", "B-Idus", "O", "B-Area", "I-Area", "O"]),
    (["FireEye", "found", "Poison", "Ivy", "on", "the", "hosts", "."],
     ["B-SecTeam", "O", "B-Tool", "I-Tool", "O", "O", "O", "O"]),
    (["They", "exploited", "CVE-2012-0158", "via", "spear-phishing", "."],
     ["O", "O", "B-Exp", "O", "B-Way", "O"]),
]

CONFIG = """
[paths]
train = null
dev = null
curves = "curves.jsonl"

[nlp]
lang = "en"
pipeline = ["ner_crf"]

[components]

[components.ner_crf]
factory = "ner_crf"
head_learn_rate_factor = 10.0

[components.ner_crf.model]
@architectures = "spacy-secner.TransformerBiLSTMCRF.v1"
hidden_size = 16

[components.ner_crf.model.tok2vec]
@architectures = "spacy.HashEmbedCNN.v2"
width = 32
depth = 1
embed_size = 300
window_size = 1
maxout_pieces = 2
subword_features = true
pretrained_vectors = null

[corpora]

[corpora.train]
@readers = "spacy.Corpus.v1"
path = ${paths.train}
gold_preproc = true

[corpora.dev]
@readers = "spacy.Corpus.v1"
path = ${paths.dev}
gold_preproc = true

[training]
eval_frequency = 2
max_steps = 12
patience = 0
seed = 1

[training.batcher]
@batchers = "spacy.batch_by_sequence.v1"
size = 2

[training.logger]
@loggers = "spacy-secner.curve_logger.v1"
path = ${paths.curves}
dev_path = ${paths.dev}
progress_bar = null

[training.optimizer]
@optimizers = "Adam.v1"

[training.optimizer.learn_rate]
@schedules = "spacy-secner.plateau.v1"
base_rate = 0.001
factor = 0.5
patience = 1
"""


def test_plateau_halves_after_patience_without_improvement():
    dev_scores.reset()
    rates = plateau(1.0, factor=0.5, patience=2)
    assert next(rates) == 1.0
    for score, expected in [(0.5, 1.0), (0.6, 1.0), (0.6, 1.0), (0.59, 0.5), (0.7, 0.5),
                            (0.1, 0.5), (0.1, 0.25), (0.1, 0.25), (0.1, 0.125)]:
        dev_scores.scores.append(score)
        assert next(rates) == expected, (score, dev_scores.scores)
    dev_scores.reset()


def test_plateau_respects_min_rate():
    dev_scores.reset()
    rates = plateau(1.0, factor=0.1, patience=1, min_rate=0.05)
    next(rates)
    dev_scores.scores.extend([0.5, 0.4, 0.3, 0.2])
    assert next(rates) == 0.05
    dev_scores.reset()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    nlp = spacy.blank("en")
    docs = [Doc(nlp.vocab, words=w, ents=tags) for w, tags in SENTENCES]
    DocBin(docs=docs).to_disk(root / "train.spacy")
    DocBin(docs=docs[:3]).to_disk(root / "dev.spacy")
    # Fill in spaCy's defaults and validate, as `spacy init fill-config` would.
    filled = spacy.util.load_model_from_config(
        spacy.util.load_config_from_str(CONFIG), auto_fill=True, validate=True
    ).config
    filled.to_disk(root / "config.cfg")
    overrides = {
        "paths.train": str(root / "train.spacy"),
        "paths.dev": str(root / "dev.spacy"),
        "paths.curves": str(root / "curves.jsonl"),
    }
    train(root / "config.cfg", root / "out", overrides=overrides)
    return root


def test_curve_logger_writes_losses_and_scores(trained):
    records = read_curves(trained / "curves.jsonl")
    assert [r["step"] for r in records] == [0, 2, 4, 6, 8, 10, 12]
    for record in records:
        assert {"train_loss", "dev_loss", "ents_p", "ents_r", "ents_f", "learn_rate"} <= set(record)
        assert record["dev_loss"] > 0
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert records[-1]["dev_loss"] < records[0]["dev_loss"]
    # The learning rate only ever goes down, and only by the plateau factor.
    rates = [r["learn_rate"] for r in records]
    assert all(b in (a, a * 0.5) for a, b in zip(rates, rates[1:]))


def test_seqeval_agrees_with_spacy_scorer(trained):
    # model-best: this tiny model's last steps find nothing on dev, where both scorers give 0.
    nlp = spacy.load(trained / "out" / "model-best")
    dev = trained / "dev.spacy"
    report = seqeval_report(*predict_corpus(nlp, dev))
    examples = list(Corpus(str(dev), gold_preproc=True)(nlp))
    scores = nlp.evaluate(examples)
    assert abs(scores["ents_f"] - report["f1"]) < 1e-4
    assert abs(scores["ents_p"] - report["precision"]) < 1e-4
    assert abs(scores["ents_r"] - report["recall"]) < 1e-4
    assert report["support"] == 9
    # The model finds entities, so the scorers agree on something other than zero.
    assert report["precision"] > 0 and report["recall"] > 0
    # Types of the gold dev entities, and of any the model predicts: the training labels.
    assert set(report["per_type"]) <= {tag[2:] for _, tags in SENTENCES for tag in tags if tag != "O"}
    json.dumps(report)  # serializable as written by scripts/evaluate.py


def test_dev_loss_comes_from_the_evaluation_pass(trained_trf_nlp, monkeypatch):
    """`nlp.evaluate` scores the CRF loss on the docs it has just annotated: the transformer
    reads the dev set once, and the loss is the pipe's NLL of the gold entities."""
    nlp = trained_trf_nlp
    transformer = nlp.get_pipe("transformer")
    seen = []
    predict = transformer.predict
    monkeypatch.setattr(transformer, "predict", lambda docs: seen.extend(docs) or predict(docs))
    examples = make_examples(nlp)
    scores = nlp.evaluate(examples)
    assert len(seen) == len(examples)
    texts = [eg.reference.text for eg in examples]
    annotated = [Example(doc, eg.reference) for doc, eg in zip(nlp.pipe(texts), examples)]
    assert scores["ner_crf_loss"] == pytest.approx(nlp.get_pipe("ner_crf").nll(annotated), rel=1e-4)
    assert 0 < scores["ner_crf_loss"] < 10 and scores["ents_f"] == 1.0


def test_dev_set_with_a_label_training_lacked_is_scored(trained, tmp_path):
    """spaCy's training loop evaluates on dev as `nlp.evaluate` does: a dev label the model
    never learned counts as missed entities, in the scores and the dev loss."""
    nlp = spacy.load(trained / "out" / "model-best")
    words, tags = SENTENCES[0]
    docs = [Doc(nlp.vocab, words=words, ents=["B-Malware" if t == "B-Tool" else t for t in tags])]
    DocBin(docs=docs).to_disk(tmp_path / "dev.spacy")
    scores = nlp.evaluate(list(Corpus(str(tmp_path / "dev.spacy"), gold_preproc=True)(nlp)))
    assert scores["ents_per_type"]["Malware"]["r"] == 0.0
    assert scores["ner_crf_loss"] > 0
