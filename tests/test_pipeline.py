"""The `ner_crf` pipe end to end: config, initialization, overfitting, batching, edge cases."""
import math

import numpy
import pytest
import spacy
from conftest import (
    GOLD_ENTS,
    LABELS,
    TRAIN_DATA,
    TRAIN_TEXTS,
    ents_of,
    make_cnn_nlp,
    make_example,
    make_examples,
    make_trf_nlp,
    offsets_of,
    train_until_gold,
    trf_config_str,
)
from spacy.language import Language
from spacy.training import Example
from thinc.api import ConfigValidationError

from spacy_secner import CRFEntityRecognizer
from spacy_secner.layers import crf_decode, crf_span_confidence, decode_by_sentence

# Sentences the pipelines were not trained on.
NEW_TEXTS = [
    "Turla used Snake against the Foreign Office in 2019 .",
    "APT29 deployed WellMess .",
    "Nothing to see here .",
]
LONG_TEXT = " ".join(TRAIN_TEXTS * 20)  # ~1000 tokens, ~1300 wordpieces


def emissions(nlp: Language, docs):
    """The emission scores of processed docs (their transformer output is on the docs)."""
    return nlp.get_pipe("ner_crf").model.predict(list(docs))


# --- configuration -------------------------------------------------------------------------


def test_add_pipe_with_default_config():
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("ner_crf")
    assert isinstance(ner, CRFEntityRecognizer)
    assert nlp.pipe_names == ["ner_crf"]
    cfg = nlp.config["components"]["ner_crf"]
    assert cfg["overwrite"] is False
    assert cfg["scorer"] == {"@scorers": "spacy.ner_scorer.v1"}
    assert cfg["model"]["@architectures"] == "spacy-secner.TransformerBiLSTMCRF.v1"
    assert cfg["model"]["constrained"] is True
    tok2vec = cfg["model"]["tok2vec"]
    assert tok2vec["@architectures"] == "spacy-transformers.TransformerListener.v1"
    assert tok2vec["upstream"] == "*"
    assert tok2vec["pooling"] == {"@layers": "spacy-secner.reduce_first.v1"}
    meta = Language.get_factory_meta("ner_crf")
    assert "doc.ents" in meta.assigns
    assert meta.default_score_weights["ents_f"] == 1.0
    assert ner.labels == ()


def test_full_transformer_config_resolves_with_validation(tiny_bert_dir):
    config = spacy.util.load_config_from_str(trf_config_str(tiny_bert_dir))
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    assert nlp.pipe_names == ["transformer", "ner_crf"]
    assert nlp.get_pipe("transformer").listening_components == ["ner_crf"]
    assert isinstance(nlp.get_pipe("ner_crf"), CRFEntityRecognizer)
    # The filled config is complete: it round-trips and resolves again.
    filled = spacy.util.load_config_from_str(nlp.config.to_str())
    spacy.util.load_model_from_config(filled, validate=True)
    # ... and validation is real: a wrong type in the ner_crf model block is rejected.
    config["components"]["ner_crf"]["model"]["hidden_size"] = "wide"
    with pytest.raises(ConfigValidationError, match="hidden_size"):
        spacy.util.load_model_from_config(config, auto_fill=True, validate=True)


# --- initialization ------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["default", "cnn"])
def test_use_before_initialize_raises(config):
    if config == "default":
        nlp = spacy.blank("en")
        nlp.add_pipe("ner_crf")
    else:
        nlp = make_cnn_nlp()
    ner = nlp.get_pipe("ner_crf")
    doc = nlp.make_doc(TRAIN_TEXTS[0])
    with pytest.raises(ValueError, match="'ner_crf' pipe is not initialized"):
        nlp(TRAIN_TEXTS[0])
    with pytest.raises(ValueError, match="not initialized"):
        ner.predict([doc])
    with pytest.raises(ValueError, match="not initialized"):
        ner.update(make_examples(nlp))
    with pytest.raises(ValueError, match="not initialized"):
        list(nlp.pipe(TRAIN_TEXTS))


def test_initialize_takes_sorted_labels_from_data():
    nlp = make_cnn_nlp()
    ner = nlp.get_pipe("ner_crf")
    nlp.initialize(lambda: make_examples(nlp))
    assert ner.labels == tuple(LABELS) == ("HackOrg", "Org", "Time", "Tool")
    assert ner.tags == ["O"] + [f"{p}-{label}" for label in LABELS for p in "BI"]
    assert ner.label_data == list(LABELS)
    scores = ner.model.predict([nlp.make_doc(TRAIN_TEXTS[0])])
    assert scores[0].shape == (10, 9)


def test_initialize_with_labels_from_config():
    nlp = make_cnn_nlp()
    nlp.config["initialize"]["components"]["ner_crf"] = {"labels": ["Tool", "HackOrg"]}
    nlp.initialize(lambda: make_examples(nlp))
    assert nlp.get_pipe("ner_crf").labels == ("HackOrg", "Tool")


def test_initialize_without_any_label_raises():
    nlp = make_cnn_nlp()
    no_ents = [make_example(nlp, text, []) for text in TRAIN_TEXTS]
    with pytest.raises(ValueError, match="found no entity labels"):
        nlp.initialize(lambda: no_ents)


def test_gold_label_outside_the_label_set_raises():
    nlp = make_cnn_nlp()
    nlp.config["initialize"]["components"]["ner_crf"] = {"labels": ["HackOrg"]}
    optimizer = nlp.initialize(lambda: make_examples(nlp))
    with pytest.raises(ValueError, match="not among the labels"):
        nlp.update(make_examples(nlp), sgd=optimizer)


def test_add_label_before_initialize_and_not_after():
    nlp = make_cnn_nlp()
    ner = nlp.get_pipe("ner_crf")
    assert ner.add_label("Malware") == 1
    assert ner.add_label("Malware") == 0
    assert ner.add_label("Area") == 1
    assert ner.labels == ("Area", "Malware")
    with pytest.raises(ValueError):
        ner.add_label(42)
    nlp.initialize(lambda: make_examples(nlp))
    # Labels added before initialize are kept next to those from the data.
    assert ner.labels == ("Area", "HackOrg", "Malware", "Org", "Time", "Tool")
    assert ner.model.predict([nlp.make_doc("APT28 used X-Agent .")])[0].shape == (6, 13)
    assert ner.add_label("Tool") == 0  # already there: nothing to resize
    with pytest.raises(ValueError, match="Cannot add label 'Vul'.*before nlp.initialize"):
        ner.add_label("Vul")
    assert "Vul" not in ner.labels


# --- learning ------------------------------------------------------------------------------


def test_overfit_cnn_tok2vec():
    nlp = make_cnn_nlp()
    examples = make_examples(nlp)
    result = train_until_gold(nlp, examples, max_steps=200)
    assert result["predicted"] == GOLD_ENTS
    losses = result["losses"]
    assert losses[-1] < 0.5 * losses[0]
    # Fresh docs, one at a time, give the exact gold entities, multi-token ones included.
    assert [ents_of(nlp(text)) for text in TRAIN_TEXTS] == GOLD_ENTS
    assert ("X-Agent", "Tool") in ents_of(nlp(TRAIN_TEXTS[0]))
    assert ("Iranian nuclear facilities", "Org") in ents_of(nlp(TRAIN_TEXTS[2]))
    # The gradient-free loss agrees: the gold tags are now likely.
    assert nlp.get_pipe("ner_crf").nll(examples) < losses[0] / 4


@pytest.mark.parametrize("pooling", ["spacy-secner.reduce_first.v1", "reduce_mean.v1"])
def test_overfit_tiny_bert(tiny_bert_dir, pooling):
    nlp = make_trf_nlp(tiny_bert_dir, pooling=pooling)
    assert nlp.config["components"]["ner_crf"]["model"]["tok2vec"]["pooling"]["@layers"] == pooling
    result = train_until_gold(nlp, make_examples(nlp), max_steps=300)
    assert result["predicted"] == GOLD_ENTS
    assert result["losses"][-1] < 0.5 * result["losses"][0]
    assert [ents_of(doc) for doc in nlp.pipe(TRAIN_TEXTS)] == GOLD_ENTS


def test_update_adds_to_the_losses_dict():
    nlp = make_cnn_nlp()
    examples = make_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    losses = {"ner_crf": 1.0}
    nlp.update(examples, sgd=optimizer, losses=losses, drop=0.1)
    assert math.isfinite(losses["ner_crf"]) and losses["ner_crf"] > 1.0 + 10.0


# --- prediction ----------------------------------------------------------------------------


def test_pipe_equals_call(trained_nlp):
    texts = TRAIN_TEXTS + NEW_TEXTS + ["", "APT28", LONG_TEXT[:2000]]
    piped = list(trained_nlp.pipe(texts, batch_size=4))
    called = [trained_nlp(text) for text in texts]
    for text, a, b in zip(texts, piped, called):
        assert offsets_of(a) == offsets_of(b), text[:60]
    assert [offsets_of(d) for d in piped[:5]] != [[]] * 5


def test_batch_invariance(trained_nlp):
    """A doc's emissions and entities do not depend on the (much longer) docs in its batch."""
    short = TRAIN_TEXTS[0]
    texts = [LONG_TEXT, short, LONG_TEXT[: len(LONG_TEXT) // 2] + " APT28 ."]
    batched = list(trained_nlp.pipe(texts, batch_size=len(texts)))
    alone = trained_nlp(short)
    assert ents_of(batched[1]) == ents_of(alone) == GOLD_ENTS[0]
    scores_batched = emissions(trained_nlp, batched)
    scores_alone = emissions(trained_nlp, [alone])
    assert scores_batched[0].shape[0] > 20 * scores_batched[1].shape[0]
    numpy.testing.assert_allclose(scores_batched[1], scores_alone[0], rtol=0, atol=1e-5)
    # And the CRF decodes it the same whatever else is in the batch.
    ner = trained_nlp.get_pipe("ner_crf")
    assert ner.predict(batched)[0][1].tolist() == ner.predict([alone])[0][0].tolist()


def test_empty_and_one_token_docs(trained_nlp):
    ner = trained_nlp.get_pipe("ner_crf")
    empty = trained_nlp("")
    assert len(empty) == 0 and empty.ents == ()
    one = trained_nlp("APT28")
    assert len(one) == 1
    assert all(label in ner.labels for _, label in ents_of(one))
    # Docs as the pipes before ner_crf leave them (a transformer's output on them).
    with trained_nlp.select_pipes(disable=["ner_crf"]):
        docs = list(trained_nlp.pipe(["APT28", ""]))
    tag_ids, entities, confidences = ner.predict(docs)
    assert [len(ids) for ids in tag_ids] == [1, 0]
    n_entities = sum(ner.tags[i].startswith("B-") for i in tag_ids[0].tolist())
    assert len(entities[0]) == len(confidences[0]) == n_entities
    assert len(entities[1]) == 0 and confidences[1] == []
    assert ner.predict([]) == ([], [], [])
    # A batch of nothing but empty docs (a listener cannot pool one).
    assert [len(d.ents) for d in trained_nlp.pipe(["", "", ""])] == [0, 0, 0]
    # Whitespace-only docs have one token and no entity.
    assert trained_nlp("   ").ents == ()


def test_batch_mixing_empty_and_nonempty_docs(trained_nlp):
    texts = ["", TRAIN_TEXTS[0], "", "APT28", TRAIN_TEXTS[1], ""]
    docs = list(trained_nlp.pipe(texts, batch_size=len(texts)))
    assert ents_of(docs[1]) == GOLD_ENTS[0]
    assert ents_of(docs[4]) == GOLD_ENTS[1]
    assert [len(docs[i].ents) for i in (0, 2, 5)] == [0, 0, 0]
    assert [offsets_of(d) for d in docs] == [offsets_of(trained_nlp(t)) for t in texts]


@pytest.mark.parametrize("kind", ["cnn", "tiny_bert"])
def test_update_with_empty_docs_in_the_batch(kind, tiny_bert_dir):
    nlp = make_cnn_nlp() if kind == "cnn" else make_trf_nlp(tiny_bert_dir)
    empty = make_example(nlp, "", [])
    examples = [empty] + make_examples(nlp) + [make_example(nlp, "APT28", [("APT28", "HackOrg")])]
    # An empty first example must not break initialization either.
    optimizer = nlp.initialize(lambda: examples)
    losses = {}
    nlp.update(examples, sgd=optimizer, losses=losses)
    assert losses["ner_crf"] > 0 and math.isfinite(losses["ner_crf"])
    losses = {}
    nlp.update([empty, empty], sgd=optimizer, losses=losses)
    assert losses["ner_crf"] == 0.0
    assert nlp.get_pipe("ner_crf").nll([empty]) == 0.0
    assert nlp("").ents == ()


def test_doc_longer_than_512_wordpieces(trained_trf_nlp, tiny_bert_dir):
    from transformers import AutoTokenizer

    n_wordpieces = len(AutoTokenizer.from_pretrained(str(tiny_bert_dir))(LONG_TEXT)["input_ids"])
    assert n_wordpieces > 1000
    nlp = trained_trf_nlp
    ner = nlp.get_pipe("ner_crf")
    doc = nlp(LONG_TEXT)
    assert len(doc) == len(nlp.make_doc(LONG_TEXT))
    assert len(doc.ents) > 0
    assert all(ent.label_ in ner.labels for ent in doc.ents)
    # The strided spans cover the whole doc: the last tokens get real vectors, not zeros.
    tokvecs = ner.model.get_ref("tok2vec").predict([doc])[0]
    assert tokvecs.shape[0] == len(doc)
    assert float(numpy.abs(tokvecs[-20:]).sum(axis=1).min()) > 0
    assert emissions(nlp, [doc])[0].shape == (len(doc), len(ner.tags))


def test_update_on_doc_longer_than_512_wordpieces(tiny_bert_dir):
    nlp = make_trf_nlp(tiny_bert_dir)
    long_example = make_example(nlp, LONG_TEXT, TRAIN_DATA[0][1])
    optimizer = nlp.initialize(lambda: make_examples(nlp))
    losses = {}
    nlp.update([long_example, make_example(nlp, "", [])], sgd=optimizer, losses=losses)
    assert math.isfinite(losses["ner_crf"]) and losses["ner_crf"] > 0
    assert math.isfinite(losses["transformer"])


# --- pipeline behaviour --------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_overwrite_existing_entities(overwrite):
    nlp = make_cnn_nlp(overwrite=overwrite)
    assert nlp.config["components"]["ner_crf"]["overwrite"] is overwrite
    result = train_until_gold(nlp, make_examples(nlp))
    assert result["predicted"] == GOLD_ENTS
    ruler = nlp.add_pipe("entity_ruler", before="ner_crf")
    ruler.add_patterns(
        [
            {"label": "Area", "pattern": "NATO"},  # same span as a prediction, other label
            {"label": "Custom", "pattern": [{"LOWER": "used"}, {"LOWER": "x"}]},  # overlaps
            {"label": "Custom", "pattern": "against"},  # no prediction there
        ]
    )
    got = ents_of(nlp(TRAIN_TEXTS[0]))
    if overwrite:
        assert got == GOLD_ENTS[0]
    else:
        assert got == [
            ("APT28", "HackOrg"),
            ("used X", "Custom"),
            ("against", "Custom"),
            ("NATO", "Area"),
            ("2016", "Time"),
        ]


def test_evaluate_with_ner_scorer(trained_cnn_nlp):
    nlp = trained_cnn_nlp
    scores = nlp.evaluate(make_examples(nlp))
    assert scores["ents_p"] == scores["ents_r"] == scores["ents_f"] == 1.0
    assert set(scores["ents_per_type"]) == set(LABELS)
    assert all(s["f"] == 1.0 for s in scores["ents_per_type"].values())
    # The scorer really compares: relabel one gold entity and precision and recall drop.
    wrong = list(TRAIN_DATA)
    wrong[0] = (TRAIN_TEXTS[0], [("APT28", "Tool")] + TRAIN_DATA[0][1][1:])
    scores = nlp.evaluate(make_examples(nlp, wrong))
    n_ents = sum(len(ents) for ents in GOLD_ENTS)
    assert scores["ents_p"] == pytest.approx((n_ents - 1) / n_ents)
    assert scores["ents_per_type"]["Tool"]["r"] < 1.0  # the gold "Tool" APT28 is missed
    assert scores["ents_per_type"]["HackOrg"]["p"] < 1.0  # the predicted HackOrg is wrong


def test_examples_from_reference_only_docs(trained_cnn_nlp):
    """Gold that comes with another tokenization is aligned (Example.get_aligned_ner)."""
    nlp = trained_cnn_nlp
    words = ["APT28", "used", "X-Agent", "against", "NATO", "in", "2016", "."]
    reference = spacy.tokens.Doc(
        nlp.vocab, words=words, ents=["B-HackOrg", "O", "B-Tool", "O", "B-Org", "O", "B-Time", "O"]
    )
    example = Example(nlp.make_doc(TRAIN_TEXTS[0]), reference)
    same_tokens = make_example(nlp, TRAIN_TEXTS[0], GOLD_ENTS[0])
    ner = nlp.get_pipe("ner_crf")
    # "X-Agent" (one gold token) becomes B-Tool I-Tool I-Tool on the three predicted tokens.
    assert ner.nll([example]) == pytest.approx(ner.nll([same_tokens]))
    assert nlp.evaluate([example])["ents_f"] == 1.0


def test_head_learn_rate_factor_scales_only_the_head():
    nlp = make_cnn_nlp(head_learn_rate_factor=0.0)
    ner = nlp.get_pipe("ner_crf")
    optimizer = nlp.initialize(lambda: make_examples(nlp))
    before = {name: ner.model.get_ref(name).to_bytes() for name in ("tok2vec", "emitter", "decoder")}
    nlp.update(make_examples(nlp), sgd=optimizer)
    assert optimizer.learn_rate == 0.001  # restored after the head's update
    assert ner.model.get_ref("tok2vec").to_bytes() != before["tok2vec"]
    assert ner.model.get_ref("emitter").to_bytes() == before["emitter"]
    assert ner.model.get_ref("decoder").to_bytes() == before["decoder"]


def test_whitespace_tokens_have_no_wordpieces_and_do_not_crash(trained_trf_nlp):
    """Raw reports hold line breaks and double spaces: tokens the transformer gives no piece."""
    text = "APT28 used X-Agent .\n\nLazarus Group  deployed WannaCry ransomware in May 2017 .\n"
    doc = trained_trf_nlp(text)
    assert any(t.is_space for t in doc)
    assert all(not ent.text.isspace() for ent in doc.ents)
    compact = trained_trf_nlp("APT28 used X-Agent .")
    assert ents_of(compact) == ents_of(trained_trf_nlp(compact.text + "\n"))


def test_predictions_do_not_depend_on_max_batch_tokens(trained_nlp):
    """The head runs on length-sorted chunks of at most max_batch_tokens tokens; every chunking
    gives the same entities and confidences, in the input order, empty docs included."""
    texts = NEW_TEXTS + ["", "APT28"] + TRAIN_TEXTS + ["", LONG_TEXT[:1500]]
    pipe = trained_nlp.get_pipe("ner_crf")
    saved = pipe.cfg["max_batch_tokens"]
    results = []
    try:
        for size in (1, 7, 100_000):
            pipe.cfg["max_batch_tokens"] = size
            docs = list(trained_nlp.pipe(texts, batch_size=64))
            results.append([[(e.start, e.end, e.label_, e._.confidence) for e in d.ents] for d in docs])
    finally:
        pipe.cfg["max_batch_tokens"] = saved
    one, seven, whole = results
    assert [[e[:3] for e in d] for d in one] == [[e[:3] for e in d] for d in whole]
    assert [[e[:3] for e in d] for d in seven] == [[e[:3] for e in d] for d in whole]
    flat = lambda r: [e[3] for d in r for e in d]  # noqa: E731
    assert flat(one) == pytest.approx(flat(whole), abs=1e-5)
    assert flat(seven) == pytest.approx(flat(whole), abs=1e-5)
    assert any(results[2])


def test_each_sentence_decodes_as_its_own_sequence(trained_cnn_nlp):
    """With sentence boundaries the CRF decodes each sentence alone: no entity runs across a
    boundary, and tags and confidences are those of each sentence's emissions by themselves."""
    nlp = trained_cnn_nlp
    ner = nlp.get_pipe("ner_crf")
    text = "APT28 used X-Agent . Lazarus Group deployed WannaCry ."
    whole, split = nlp.make_doc(text), nlp.make_doc(text)
    for i, token in enumerate(split):
        token.is_sent_start = i in (0, 4)
    # Emissions that want one HackOrg entity over "." and "Lazarus", across the boundary.
    scores = numpy.zeros((len(whole), len(ner.tags)), dtype="float32")
    scores[:, ner.tags.index("O")] = 10.0
    scores[3, ner.tags.index("B-HackOrg")] = 30.0
    scores[4, ner.tags.index("I-HackOrg")] = 30.0
    ids, found = decode_by_sentence(ner.model, [whole, split], [scores, scores], True)
    tags_at = lambda path: [ner.tags[t] for t in path[3:5].tolist()]  # noqa: E731
    assert tags_at(ids[0]) == ["B-HackOrg", "I-HackOrg"]
    # A sentence cannot start inside an entity: "Lazarus" falls back to its next best, O.
    assert tags_at(ids[1]) == ["B-HackOrg", "O"]
    assert len(ids[0]) == len(ids[1]) == len(whole)
    by_sentence = crf_decode(ner.model, [scores[:4], scores[4:]])
    assert ids[1].tolist() == numpy.concatenate(by_sentence).tolist()
    alone = crf_span_confidence(ner.model, [scores[:4], scores[4:]], by_sentence)
    assert len(found[0]) == len(found[1]) == 1
    assert found[1] == pytest.approx(alone[0] + alone[1], abs=1e-6)
    assert all(0.0 < c <= 1.0 for c in found[0] + found[1])
    assert decode_by_sentence(ner.model, [split], [scores], False)[1] == [[]]
    # End to end: the pipe's entities on a doc with sentences stay inside them.
    doc = nlp.make_doc(TRAIN_TEXTS[0] + " " + TRAIN_TEXTS[3])
    for token in doc:
        token.is_sent_start = token.i == 0 or doc[token.i - 1].text == "."
    for _, proc in nlp.pipeline:
        doc = proc(doc)
    sentences = [(s.start, s.end) for s in doc.sents]
    assert len(sentences) == 2 and doc.ents
    assert all(any(a <= e.start and e.end <= b for a, b in sentences) for e in doc.ents)


def test_max_batch_tokens_must_be_positive():
    with pytest.raises(ValueError, match="max_batch_tokens"):
        make_cnn_nlp(max_batch_tokens=0)


def test_doc_cleaner_drops_trf_data_and_keeps_entities(trained_trf_nlp, tmp_path):
    """spaCy's `doc_cleaner` (README) frees each doc's transformer outputs; the entities and
    their confidences, set before it, stay."""
    trained_trf_nlp.to_disk(tmp_path / "pipeline")
    nlp = spacy.load(tmp_path / "pipeline")

    def entities(docs):
        return [[(e.start, e.end, e.label_, e._.confidence) for e in doc.ents] for doc in docs]

    expected = entities(nlp.pipe(TRAIN_TEXTS))
    nlp.add_pipe("doc_cleaner", config={"attrs": {"_.trf_data": None}})
    docs = list(nlp.pipe(TRAIN_TEXTS))
    assert all(doc._.trf_data is None for doc in docs)
    assert entities(docs) == expected and any(expected)


# --- settings, missing and unknown annotation, misuse --------------------------------------


def reloaded(nlp: Language, path, **load_kwargs) -> Language:
    """A copy of `nlp` through disk, loaded with `load_kwargs` (shared pipelines stay as
    they are)."""
    nlp.to_disk(path)
    return spacy.load(path, **load_kwargs)


def test_evaluate_scores_an_unknown_gold_label_as_missed(trained_cnn_nlp):
    """A gold label the pipe never learned (a dev set with a label that training lacked) is a
    missed entity for the scorer and the dev loss; in training it stays an error."""
    nlp = trained_cnn_nlp
    unknown = [("APT28", "ThreatActor")] + TRAIN_DATA[0][1][1:]
    examples = make_examples(nlp, [(TRAIN_TEXTS[0], unknown)] + TRAIN_DATA[1:])
    scores = nlp.evaluate(examples)
    assert scores["ents_per_type"]["ThreatActor"]["r"] == 0.0
    assert scores["ents_p"] < 1.0 and scores["ents_f"] < 1.0
    # The loss reads the unknown entity's tokens as O.
    as_o = make_examples(nlp, [(TRAIN_TEXTS[0], unknown[1:])] + TRAIN_DATA[1:])
    assert math.isfinite(scores["ner_crf_loss"])
    assert scores["ner_crf_loss"] == pytest.approx(nlp.get_pipe("ner_crf").nll(as_o))
    ner = nlp.get_pipe("ner_crf")
    with pytest.raises(ValueError, match="'B-ThreatActor'.* not among the labels"):
        ner.get_loss(examples, ner.model.predict([eg.predicted for eg in examples]))


def test_settings_given_when_loading_win_over_the_saved_ones(trained_cnn_nlp, tmp_path):
    nlp = trained_cnn_nlp
    saved_cfg = dict(nlp.get_pipe("ner_crf").cfg)
    settings = {"confidence": False, "overwrite": True, "max_batch_tokens": 16}
    loaded = reloaded(nlp, tmp_path / "pipeline", config={"components": {"ner_crf": settings}})
    ner = loaded.get_pipe("ner_crf")
    assert {key: ner.cfg[key] for key in settings} == settings
    # The learned state still comes from the saved cfg.
    assert ner.labels == tuple(LABELS) and ner.cfg["width"] == saved_cfg["width"]
    docs = list(loaded.pipe(TRAIN_TEXTS))
    assert [ents_of(doc) for doc in docs] == GOLD_ENTS
    assert all(ent._.confidence is None for doc in docs for ent in doc.ents)
    # Loading from bytes, into a pipe built with other settings, too.
    config = nlp.config.copy()
    config["components"]["ner_crf"]["confidence"] = False
    from_bytes = spacy.util.load_model_from_config(config).from_bytes(nlp.to_bytes())
    assert from_bytes.get_pipe("ner_crf").cfg["confidence"] is False
    assert all(ent._.confidence is None for ent in from_bytes(TRAIN_TEXTS[0]).ents)


def test_calibration_map_comes_from_the_saved_cfg(trained_cnn_nlp, tmp_path):
    nlp = reloaded(trained_cnn_nlp, tmp_path / "copy")
    nlp.get_pipe("ner_crf").cfg["calibration"] = {"method": "temperature", "t": 2.0}
    config = {"components": {"ner_crf": {"confidence": True}}}
    loaded = reloaded(nlp, tmp_path / "calibrated", config=config)
    assert loaded.get_pipe("ner_crf").cfg["calibration"] == {"method": "temperature", "t": 2.0}
    # Weights saved without a map, loaded into a calibrated pipe: its map, fitted to other
    # weights, goes, and the confidences are the raw ones again.
    trained_cnn_nlp.to_disk(tmp_path / "raw")
    loaded.get_pipe("ner_crf").from_disk(tmp_path / "raw" / "ner_crf")
    assert "calibration" not in loaded.get_pipe("ner_crf").cfg
    raw = [[e._.confidence for e in doc.ents] for doc in trained_cnn_nlp.pipe(TRAIN_TEXTS)]
    assert [[e._.confidence for e in doc.ents] for doc in loaded.pipe(TRAIN_TEXTS)] == raw


def test_encoder_settings_given_when_loading_win(tiny_bert_dir, tmp_path):
    """The transformer's grouping settings given when loading reach its encoder layer, not
    those its weights were saved with."""
    from conftest import make_grouped_trf_nlp
    from spacy_secner.layers import grouping_layer

    nlp = make_grouped_trf_nlp(tiny_bert_dir, 16, packed_row_wordpieces=0)
    expected = [offsets_of(doc) for doc in nlp.pipe(TRAIN_TEXTS)]
    overrides = {"max_batch_wordpieces": 0, "packed_row_wordpieces": 32}
    config = {"components": {"transformer": {"model": overrides}}}
    loaded = reloaded(nlp, tmp_path / "pipeline", config=config)
    layer = grouping_layer(loaded.get_pipe("transformer").model)
    assert {key: layer.attrs[key] for key in overrides} == overrides
    assert [offsets_of(doc) for doc in loaded.pipe(TRAIN_TEXTS)] == expected
    # Without overrides, the saved config's settings.
    layer = grouping_layer(spacy.load(tmp_path / "pipeline").get_pipe("transformer").model)
    assert (layer.attrs["max_batch_wordpieces"], layer.attrs["packed_row_wordpieces"]) == (16, 0)


def test_entities_of_other_pipes_get_no_confidence(trained_cnn_nlp, tmp_path):
    nlp = reloaded(trained_cnn_nlp, tmp_path / "pipeline")
    ruler = nlp.add_pipe("entity_ruler", before="ner_crf")
    # The same tokens as a prediction (which is dropped), and a span where none is predicted.
    ruler.add_patterns(
        [{"label": "Actor", "pattern": "APT28"}, {"label": "Custom", "pattern": "against"}]
    )
    doc = nlp(TRAIN_TEXTS[0])
    confidences = {(ent.text, ent.label_): ent._.confidence for ent in doc.ents}
    assert confidences[("APT28", "Actor")] is None and confidences[("against", "Custom")] is None
    assert all(0 < confidences[ent] <= 1 for ent in GOLD_ENTS[0][1:])


def test_examples_without_entity_annotation_teach_nothing(trained_cnn_nlp):
    """As spaCy's pipes read missing annotation: a reference with no entity annotation at all
    adds no loss and no gradient (one annotated with no entities is all O, and does)."""
    nlp = trained_cnn_nlp
    ner = nlp.get_pipe("ner_crf")
    text = TRAIN_TEXTS[0]
    unannotated = Example(nlp.make_doc(text), nlp.make_doc(text))
    assert not unannotated.reference.has_annotation("ENT_IOB")
    annotated = make_examples(nlp)
    scores = ner.model.predict([eg.predicted for eg in annotated + [unannotated]])
    loss, d_scores = ner.get_loss(annotated + [unannotated], scores)
    expected_loss, expected_d = ner.get_loss(annotated, scores[:-1])
    assert loss == pytest.approx(expected_loss)
    for d, expected in zip(d_scores, expected_d):
        numpy.testing.assert_allclose(d, expected, rtol=1e-6)
    assert not d_scores[-1].any() and d_scores[-1].shape == scores[-1].shape
    assert ner.nll(annotated + [unannotated]) == pytest.approx(ner.nll(annotated))
    assert ner.nll([unannotated]) == 0.0
    assert ner.update([unannotated], sgd=None) == {"ner_crf": 0.0}
    no_entities = make_example(nlp, text, [])
    assert no_entities.reference.has_annotation("ENT_IOB") and ner.nll([no_entities]) > 1.0


def test_missing_transformer_is_a_clear_error(trained_trf_nlp):
    nlp = spacy.blank("en")
    nlp.add_pipe("ner_crf")
    with pytest.raises(ValueError, match=r"transformer component .* but there is none.*add_pipe"):
        nlp.initialize(lambda: make_examples(nlp))
    with trained_trf_nlp.select_pipes(disable=["transformer"]):
        with pytest.raises(ValueError, match=r"docs have no transformer output"):
            trained_trf_nlp(TRAIN_TEXTS[0])
        # Empty docs need no transformer output.
        assert not trained_trf_nlp("").ents
    assert ents_of(trained_trf_nlp(TRAIN_TEXTS[0])) == GOLD_ENTS[0]


def test_initialize_again_starts_over():
    """As spaCy's trainable pipes do, initializing again builds the model anew, for the labels
    of the new data, and drops a calibration map fitted to the old weights."""
    nlp = make_cnn_nlp()
    nlp.config["initialize"]["components"]["ner_crf"] = {"labels": ["HackOrg"]}
    nlp.initialize(lambda: make_examples(nlp))
    ner = nlp.get_pipe("ner_crf")
    ner.cfg["calibration"] = {"method": "temperature", "t": 2.0}
    del nlp.config["initialize"]["components"]["ner_crf"]
    nlp.initialize(lambda: make_examples(nlp))
    assert ner.labels == tuple(LABELS) and "calibration" not in ner.cfg
    assert ner.model.predict([nlp.make_doc(TRAIN_TEXTS[0])])[0].shape == (10, 9)
    assert len(ner.model.layers) == 3  # tok2vec, and one emitter and one decoder
    result = train_until_gold(nlp, make_examples(nlp))
    assert result["predicted"] == GOLD_ENTS
