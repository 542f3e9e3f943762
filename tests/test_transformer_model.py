"""`spacy-secner.TransformerModel.v1`: v3's model, predicting on length-sorted groups of windows
(packing them into rows is off here; `test_packing.py` has it)."""
import numpy
import pytest
import spacy
from spacy_transformers.data_classes import WordpieceBatch
from spacy_transformers.layers.transformer_model import huggingface_tokenize
from thinc.api import fix_random_seed

from spacy_secner.batching import padded_batches
from spacy_secner.layers import grouped_encoder
from spacy_secner.layers.grouped_encoder import length_sorted_forward

from conftest import MIXED_TEXTS, make_examples, make_grouped_trf_nlp, offsets_of

# Sentences of very different lengths, so that groups and padding differ from one call; the
# empty text is added where a test wants it.
TEXTS = [text for text in MIXED_TEXTS if text]


def encoder_calls(monkeypatch):
    """Record the shape of every call of the HF encoder itself (inside the grouping)."""
    inner = grouped_encoder.pytorch_forward
    calls = []

    def record(model, wordpieces, is_train):
        calls.append(wordpieces.input_ids.shape)
        return inner(model, wordpieces, is_train)

    monkeypatch.setattr(grouped_encoder, "pytorch_forward", record)
    return calls


def hidden_and_pooled(doc):
    data = doc._.trf_data
    mask = data.wordpieces.attention_mask.astype(bool)
    return data.model_output.last_hidden_state[mask], data.model_output.pooler_output


def test_grouped_predictions_equal_one_call(tiny_bert_dir, monkeypatch):
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 0, packed_row_wordpieces=0)
    calls = encoder_calls(monkeypatch)
    whole = list(nlp.pipe(TEXTS, batch_size=8))
    assert len(calls) == 1
    layer = nlp.get_pipe("transformer").model.layers[0]
    layer.attrs["max_batch_wordpieces"] = 16  # read at each call: a few windows per group
    calls.clear()
    grouped = list(nlp.pipe(TEXTS, batch_size=8))
    assert len(calls) > 2, calls
    assert sum(n for n, _ in calls) == len([s for d in grouped for s in d.sents])
    # The groups are padded to their own longest window, not the batch's.
    assert max(width for _, width in calls) > min(width for _, width in calls)
    for a, b in zip(whole, grouped):
        assert offsets_of(a) == offsets_of(b)
        assert [e._.confidence for e in a.ents] == pytest.approx([e._.confidence for e in b.ents], abs=1e-5)
        # Same wordpieces, alignment and padded shape as v3's single call.
        assert numpy.array_equal(a._.trf_data.wordpieces.input_ids, b._.trf_data.wordpieces.input_ids)
        assert numpy.array_equal(a._.trf_data.align.data, b._.trf_data.align.data)
        (ha, pa), (hb, pb) = hidden_and_pooled(a), hidden_and_pooled(b)
        assert a._.trf_data.model_output.last_hidden_state.shape == b._.trf_data.model_output.last_hidden_state.shape
        numpy.testing.assert_allclose(ha, hb, atol=1e-5)
        numpy.testing.assert_allclose(pa, pb, atol=1e-5)


def test_per_layer_hidden_states_are_regrouped_too(tiny_bert_dir):
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 16, transformer_config={"output_hidden_states": True}, packed_row_wordpieces=0)
    grouped = list(nlp.pipe(TEXTS))
    nlp.get_pipe("transformer").model.layers[0].attrs["max_batch_wordpieces"] = 0
    whole = list(nlp.pipe(TEXTS))
    for a, b in zip(whole, grouped):
        layers_a = a._.trf_data.model_output.hidden_states
        layers_b = b._.trf_data.model_output.hidden_states
        assert len(layers_a) == len(layers_b) > 1
        mask = a._.trf_data.wordpieces.attention_mask.astype(bool)
        for la, lb in zip(layers_a, layers_b):
            numpy.testing.assert_allclose(la[mask], lb[mask], atol=1e-5)


def test_attention_outputs_fall_back_to_one_call(tiny_bert_dir, monkeypatch):
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 16, transformer_config={"output_attentions": True}, packed_row_wordpieces=0)
    calls = encoder_calls(monkeypatch)
    docs = list(nlp.pipe(TEXTS))
    # One group is tried, sees an output it cannot regroup, and the batch goes as one call.
    assert calls[-1][0] == sum(len(list(d.sents)) for d in docs)
    assert docs[3]._.trf_data.model_output.attentions


def test_training_is_one_call(tiny_bert_dir, monkeypatch):
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 16, sentencizer=False, packed_row_wordpieces=0)
    calls = encoder_calls(monkeypatch)
    nlp.update(make_examples(nlp), sgd=nlp.create_optimizer())
    assert len(calls) == 1


def test_setting_survives_disk_round_trip(tiny_bert_dir, tmp_path, monkeypatch):
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 16, packed_row_wordpieces=0)
    expected = [offsets_of(doc) for doc in nlp.pipe(TEXTS)]
    nlp.to_disk(tmp_path / "model")
    loaded = spacy.load(tmp_path / "model")
    layer = loaded.get_pipe("transformer").model.layers[0]
    assert layer.attrs["max_batch_wordpieces"] == 16
    calls = encoder_calls(monkeypatch)
    assert [offsets_of(doc) for doc in loaded.pipe(TEXTS)] == expected
    assert len(calls) > 1


def test_grouped_forward_refuses_backprop(tiny_bert_dir):
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 16, packed_row_wordpieces=0)
    model = nlp.get_pipe("transformer").model
    wordpieces = WordpieceBatch.from_batch_encoding(huggingface_tokenize(model.tokenizer, TEXTS))
    output, backprop = length_sorted_forward(model.layers[0], wordpieces, False)
    assert output.last_hidden_state.shape[:2] == wordpieces.input_ids.shape
    with pytest.raises(ValueError, match="only to predict"):
        backprop(output)


def test_grouped_layer_serializes_as_spacy_transformers_own(tiny_bert_dir):
    """The grouped layer has the same name, structure and weights as v3's, so a pipeline saved
    with either architecture loads with the other."""
    grouped = make_grouped_trf_nlp(tiny_bert_dir, 16, packed_row_wordpieces=0).get_pipe("transformer").model
    config = {"@architectures": "spacy-transformers.TransformerModel.v3", "name": str(tiny_bert_dir),
              "get_spans": {"@span_getters": "spacy-transformers.strided_spans.v1", "window": 128, "stride": 96}}
    v3 = spacy.util.registry.resolve({"model": config})["model"]
    assert [n.name for n in grouped.walk()] == [n.name for n in v3.walk()]
    assert len(grouped.layers[0].shims) == len(v3.layers[0].shims) == 1


@pytest.mark.parametrize("max_padded", [1, 10, 25, 1000])
def test_padded_batches(max_padded):
    lengths = [5, 1, 9, 3, 3, 12, 7, 0, 4]
    groups = padded_batches(lengths, max_padded)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        padded = max(lengths[i] for i in group) * len(group)
        assert len(group) == 1 or padded <= max_padded
    assert padded_batches([], 10) == []


def test_same_outputs_as_spacy_transformers_v3(tiny_bert_dir, tmp_path):
    """The same weights under spacy-transformers' TransformerModel.v3: the same wordpieces,
    alignment, encoder outputs per doc, entities and confidences (the forward pass prepares its
    batch with array operations, and its encoder's shim keeps eval mode)."""
    from spacy_secner.layers import GroupedTransformerModel

    nlp = make_grouped_trf_nlp(tiny_bert_dir, 0, packed_row_wordpieces=0)
    assert isinstance(nlp.get_pipe("transformer").model, GroupedTransformerModel)
    nlp.to_disk(tmp_path / "model")
    config = spacy.util.load_config(tmp_path / "model" / "config.cfg", interpolate=False)
    model = config["components"]["transformer"]["model"]
    model["@architectures"] = "spacy-transformers.TransformerModel.v3"
    del model["max_batch_wordpieces"]
    del model["frozen_inference"]
    del model["packed_row_wordpieces"]
    for key in ("transformer_config", "grad_scaler_config"):
        model[key] = model[key] or {}
    config.to_disk(tmp_path / "model" / "config.cfg")
    v3 = spacy.load(tmp_path / "model")
    assert type(v3.get_pipe("transformer").model).__name__ == "TransformerModel"
    # The eager encoder, as v3 runs it (its frozen graph is checked against it in
    # test_frozen_encoder.py).
    nlp.get_pipe("transformer").model.layers[0].shims[0].frozen_inference = False
    texts = TEXTS + ["", "don't  stop\n\nX-Agent 😀 émigré .", "[PAD] [CLS] tokens ."]
    for ours, theirs in zip(nlp.pipe(texts, batch_size=4), v3.pipe(texts, batch_size=4)):
        assert [(e.start, e.end, e.label_) for e in ours.ents] == offsets_of(theirs)
        assert [e._.confidence for e in ours.ents] == pytest.approx([e._.confidence for e in theirs.ents], abs=1e-6)
        a, b = ours._.trf_data, theirs._.trf_data
        assert a.wordpieces.strings == b.wordpieces.strings
        assert a.wordpieces.lengths == b.wordpieces.lengths
        numpy.testing.assert_array_equal(a.wordpieces.input_ids, b.wordpieces.input_ids)
        numpy.testing.assert_array_equal(a.align.dataXd, b.align.dataXd)
        numpy.testing.assert_array_equal(a.align.lengths, b.align.lengths)
        assert set(a.model_output) == set(b.model_output)
        for key in b.model_output:
            numpy.testing.assert_allclose(a.model_output[key], b.model_output[key], atol=1e-6)
    # Training steps give the same losses (the same dropout masks: the same seed).
    losses = []
    for pipeline in (nlp, v3):
        fix_random_seed(0)
        optimizer = pipeline.resume_training()
        step = {}
        pipeline.update(make_examples(pipeline), sgd=optimizer, losses=step)
        pipeline.update(make_examples(pipeline), sgd=optimizer, losses=step)
        losses.append(step["ner_crf"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_encoder_stays_in_eval_mode_between_predictions(tiny_bert_dir):
    """Predicting switches no module's mode; a training step puts it back in train mode."""
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 16, packed_row_wordpieces=0)
    encoder = nlp.get_pipe("transformer").model.transformer
    list(nlp.pipe(TEXTS))
    assert not encoder.training
    switches = []
    for module in encoder.modules():
        module.register_forward_pre_hook(lambda m, args: switches.append(m.training))
    calls = []
    original_train = type(encoder).train

    def counting_train(self, mode=True):
        calls.append(mode)
        return original_train(self, mode)

    encoder.train = counting_train.__get__(encoder)
    list(nlp.pipe(TEXTS))
    assert calls == [] and not any(switches)
    nlp.update(make_examples(nlp), sgd=nlp.create_optimizer())
    assert calls == [True]


def test_replaced_listeners_save_and_load(tiny_bert_dir, tmp_path):
    """`nlp.replace_listeners` gives `ner_crf` its own copy of the transformer; the pipeline
    saved without the shared transformer loads (also in a process that never imported the
    package) and predicts what the shared one did."""
    from conftest import TRAIN_TEXTS, load_in_fresh_process

    texts = TRAIN_TEXTS + ["Turla used Snake against the Foreign Office in 2019 ."]
    shared = make_grouped_trf_nlp(tiny_bert_dir, 64)
    docs = list(shared.pipe(texts))
    expected = [[[e.start, e.end, e.label_] for e in doc.ents] for doc in docs]
    scores = shared.get_pipe("ner_crf").model.predict(docs)
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 64)
    nlp.replace_listeners("transformer", "ner_crf", ["model.tok2vec"])
    nlp.remove_pipe("transformer")
    tok2vec = nlp.config["components"]["ner_crf"]["model"]["tok2vec"]
    assert tok2vec["@architectures"] == "spacy-secner.Tok2VecTransformer.v1"
    nlp.to_disk(tmp_path / "own")
    loaded = spacy.load(tmp_path / "own")
    docs = list(loaded.pipe(texts))
    assert [[[e.start, e.end, e.label_] for e in doc.ents] for doc in docs] == expected
    for a, b in zip(scores, loaded.get_pipe("ner_crf").model.predict(docs)):
        numpy.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert load_in_fresh_process(tmp_path / "own", texts, tmp_path)["ents"] == expected
