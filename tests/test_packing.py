"""Windows packed several to a row for the encoder (`layers/packing.py`): the rows, their mask,
and the same outputs as the windows padded apart."""
import random
import warnings

import numpy
import pytest
import torch

from spacy_secner.layers import grouped_encoder, packing
from spacy_secner.layers.grouped_encoder import length_sorted_forward
from spacy_secner.layers.packing import pack_calls, packed_inputs, plan_rows, unpack

from conftest import MIXED_TEXTS, TRAIN_TEXTS, make_grouped_trf_nlp, offsets_of

TEXTS = MIXED_TEXTS


def layer_of(nlp):
    return nlp.get_pipe("transformer").model.layers[0]


def predictions(nlp, texts, batch_size):
    """Entities, confidences, and each doc's encoder outputs on its real wordpieces."""
    docs = list(nlp.pipe(texts, batch_size=batch_size))
    result = []
    for doc in docs:
        data = doc._.trf_data
        mask = data.wordpieces.attention_mask.astype(bool) if len(doc) else None
        result.append(
            (
                offsets_of(doc),
                [e._.confidence for e in doc.ents],
                None if mask is None else data.model_output.last_hidden_state[mask],
                None if mask is None else data.model_output.pooler_output,
            )
        )
    return result


def assert_same(packed, padded):
    for (spans_a, conf_a, hidden_a, pooled_a), (spans_b, conf_b, hidden_b, pooled_b) in zip(packed, padded):
        assert spans_a == spans_b
        assert conf_a == pytest.approx(conf_b, abs=1e-5)
        if hidden_b is not None:
            numpy.testing.assert_allclose(hidden_a, hidden_b, atol=1e-5)
            numpy.testing.assert_allclose(pooled_a, pooled_b, atol=1e-5)


@pytest.mark.parametrize("lengths,capacity", [([5, 1, 9, 3, 3, 12, 7, 0, 4], 12), ([30, 2, 2], 10), ([], 8)])
def test_plan_rows_places_every_window_once_within_its_row(lengths, capacity):
    rows = plan_rows(lengths, capacity)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    for row in rows:
        fill = sum(lengths[i] for i in row)
        # A window longer than a row goes alone.
        assert fill <= capacity or len([i for i in row if lengths[i]]) == 1


def test_plan_rows_fills_rows_best_fit_longest_first():
    random.seed(0)
    lengths = [random.randint(5, 60) for _ in range(200)]
    rows = plan_rows(lengths, 128)
    fills = [sum(lengths[i] for i in row) for row in rows]
    assert max(fills) <= 128
    # Near the bound: the rows waste less than the longest window over all.
    assert len(rows) <= sum(lengths) / 128 + 2
    # Within a row, windows come longest first.
    for row in rows:
        assert [lengths[i] for i in row] == sorted((lengths[i] for i in row), reverse=True)


def test_plan_rows_evens_out_the_rows_of_one_document():
    """One document's sentences fill its rows about equally, in no more rows than packing
    them at full length takes: calls pad every row to the fullest."""
    random.seed(1)
    for _ in range(200):
        lengths = [random.randint(5, 80) for _ in range(random.randint(2, 20))]
        rows = plan_rows(lengths, 128)
        fills = [sum(lengths[i] for i in row) for row in rows]
        full_length = [sum(lengths[i] for i in row) for row in packing._best_fit(lengths, 128)]
        assert len(rows) <= len(full_length) and max(fills) <= max(full_length)
        assert max(fills) - min(fills) <= max(lengths)
    lengths = [60, 50, 40, 30, 20, 20, 20]  # at full length: rows of 110, 110 and 20
    rows = plan_rows(lengths, 128)
    assert sorted(sum(lengths[i] for i in row) for row in rows) == [80, 80, 80]


def test_pack_calls_puts_each_window_in_place_with_its_positions():
    lengths = [4, 2, 5, 3]
    width = 6
    ids = numpy.zeros((4, width), dtype=numpy.int64)
    for i, length in enumerate(lengths):
        ids[i, :length] = 100 * (i + 1) + numpy.arange(length)
    mask = (ids > 0).astype("float32")
    types = numpy.zeros_like(ids)
    rows = plan_rows(lengths, 7)
    calls = pack_calls({"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, lengths, rows, 0)
    assert len(calls) == 1
    inputs = calls[0].inputs
    assert inputs["input_ids"].shape == (len(rows), 7)
    for r, row in enumerate(rows):
        offset = 0
        for slot, i in enumerate(row):
            span = slice(offset, offset + lengths[i])
            assert list(inputs["input_ids"][r, span]) == list(ids[i, : lengths[i]])
            assert list(inputs["position_ids"][r, span]) == list(range(lengths[i]))
            assert set(inputs["window_ids"][r, span]) == {slot}
            assert set(inputs["attention_mask"][r, span]) == {1.0}
            offset += lengths[i]
        # Padding: no window, masked.
        assert set(inputs["window_ids"][r, offset:]) <= {-1}
        assert set(inputs["attention_mask"][r, offset:]) <= {0.0}
    # Unpacking the packed input ids gives the original ones back.
    out = torch.zeros(4 * width, dtype=torch.int64)
    unpack(torch.as_tensor(inputs["input_ids"]), calls[0], out)
    assert numpy.array_equal(out.reshape(4, width).numpy(), ids)
    # A budget of padded wordpieces splits the rows over calls.
    split = pack_calls({"input_ids": ids, "attention_mask": mask}, lengths, rows, 7)
    assert len(split) == len(rows) and all(c.inputs["input_ids"].size <= 7 for c in split)


def test_packed_mask_keeps_each_window_to_itself():
    window_ids = torch.tensor([[0, 0, 1, 1, 1, -1]])
    mask = torch.tensor([[1.0, 1, 1, 1, 1, 0]])
    kwargs = packed_inputs({"input_ids": window_ids, "attention_mask": mask, "window_ids": window_ids})
    assert "window_ids" not in kwargs
    expected = torch.tensor(
        [[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0],
         [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]],
        dtype=torch.float32,
    )
    assert torch.equal(kwargs["attention_mask"][0], expected)


@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_packed_predictions_equal_padded_ones(tiny_bert_dir, monkeypatch, frozen, batch_size):
    """Entities, confidences, hidden states and pooled outputs per window are those of the
    windows padded apart, through the frozen graph and eagerly."""
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 64)
    layer = layer_of(nlp)
    layer.shims[0].frozen_inference = frozen
    assert layer.attrs["packed_row_wordpieces"] == 128, "packed by default"
    seen = []
    inner = packing.pack_calls
    monkeypatch.setattr(
        "spacy_secner.layers.grouped_encoder.pack_calls",
        lambda *args: seen.append(inner(*args)) or seen[-1],
    )
    packed = predictions(nlp, TEXTS, batch_size)
    # Several windows shared a row in some call.
    assert any((c.inputs["window_ids"] > 0).any() for calls in seen for c in calls)
    layer.attrs["packed_row_wordpieces"] = 0
    assert_same(packed, predictions(nlp, TEXTS, batch_size))


def test_rows_shorter_than_a_window_and_calls_of_one_row(tiny_bert_dir):
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 1)
    layer_of(nlp).attrs["packed_row_wordpieces"] = 4
    packed = predictions(nlp, TEXTS, 4)
    layer_of(nlp).attrs["packed_row_wordpieces"] = 0
    assert_same(packed, predictions(nlp, TEXTS, 4))


@pytest.mark.parametrize("frozen", [True, False])
def test_a_window_alone_in_its_row_is_called_as_it_is(tiny_bert_dir, monkeypatch, frozen):
    """A lone sentence is its own row: called as it is (nothing packed or moved back, the
    encoder's pooled output kept), with the outputs the packed path gives it."""
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 64)
    layer_of(nlp).shims[0].frozen_inference = frozen
    whole, packs = [], []
    inner_whole, inner_pack = grouped_encoder._whole_windows_forward, packing.pack_calls
    monkeypatch.setattr(grouped_encoder, "_whole_windows_forward", lambda *a: whole.append(1) or inner_whole(*a))
    monkeypatch.setattr(grouped_encoder, "pack_calls", lambda *a: packs.append(1) or inner_pack(*a))
    direct = predictions(nlp, TEXTS, 1)
    assert whole and packs, "some docs are one window, others several"
    n_packed = len(packs)
    monkeypatch.setattr(grouped_encoder, "_rows_are_the_windows", lambda *a: False)
    assert_same(direct, predictions(nlp, TEXTS, 1))
    assert len(packs) == 2 * n_packed + len(whole), "the lone windows packed this time"


def test_rows_are_the_windows_only_unpadded_in_order_in_one_call():
    alone = grouped_encoder._rows_are_the_windows
    assert alone([[0]], [5], 5, 512)
    assert alone([[0], [1]], [5, 5], 5, 0)
    assert not alone([[0], [1]], [5, 3], 5, 512), "a padded window"
    assert not alone([[0, 1]], [2, 3], 3, 512), "two windows in a row"
    assert not alone([[1], [0]], [5, 5], 5, 512), "out of order"
    assert not alone([[0], [1]], [5, 5], 5, 8), "more than one call"


def test_outputs_are_allocated_once_per_batch_not_per_call(tiny_bert_dir, monkeypatch):
    """Each unpacked output is as large as the whole batch: built once, whatever the number of
    encoder calls (here one per row), for the hidden states and for each layer's."""
    nlp = make_grouped_trf_nlp(
        tiny_bert_dir, 1, transformer_config={"output_hidden_states": True}, packed_row_wordpieces=4
    )
    seen, calls = [], []
    inner_zeros, inner_pack = grouped_encoder._flat_zeros, packing.pack_calls
    monkeypatch.setattr(grouped_encoder, "_flat_zeros", lambda *a: seen.append(a[1]) or inner_zeros(*a))
    monkeypatch.setattr(grouped_encoder, "pack_calls", lambda *a: calls.append(inner_pack(*a)) or calls[-1])
    docs = list(nlp.pipe(TEXTS[:6], batch_size=6))
    assert len(calls) == 1 and len(calls[0]) > 2, "several calls in one batch"
    n_layers = len(docs[0]._.trf_data.model_output.hidden_states)
    assert len(seen) == 1 + n_layers
    shapes = [doc._.trf_data.wordpieces.input_ids.shape for doc in docs]
    assert set(seen) == {sum(n for n, _ in shapes) * shapes[0][1]}


def test_per_layer_hidden_states_are_unpacked_too(tiny_bert_dir):
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 64, transformer_config={"output_hidden_states": True})
    packed = list(nlp.pipe(TEXTS[:4]))
    layer_of(nlp).attrs["packed_row_wordpieces"] = 0
    padded = list(nlp.pipe(TEXTS[:4]))
    for a, b in zip(packed, padded):
        layers_a, layers_b = a._.trf_data.model_output.hidden_states, b._.trf_data.model_output.hidden_states
        assert len(layers_a) == len(layers_b) > 1
        mask = b._.trf_data.wordpieces.attention_mask.astype(bool)
        for la, lb in zip(layers_a, layers_b):
            numpy.testing.assert_allclose(la[mask], lb[mask], atol=1e-5)


def test_an_encoder_that_ignores_positions_is_not_packed(tiny_bert_dir, monkeypatch):
    """An encoder whose outputs differ when packed (here: one that drops `position_ids`) fails
    the check, with a warning, and reads its windows padded from then on."""
    from transformers import BertModel

    inner = BertModel.forward

    def without_positions(self, *args, position_ids=None, **kwargs):
        return inner(self, *args, **kwargs)

    monkeypatch.setattr(BertModel, "forward", without_positions)
    with pytest.warns(UserWarning, match="padded, not packed"):
        nlp = make_grouped_trf_nlp(tiny_bert_dir, 64)  # its first prediction checks
    packed_rows = []
    monkeypatch.setattr(
        "spacy_secner.layers.grouped_encoder.pack_calls",
        lambda *args: packed_rows.append(args) or packing.pack_calls(*args),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not again
        got = predictions(nlp, TEXTS, 4)
    assert packed_rows == []
    layer_of(nlp).attrs["packed_row_wordpieces"] = 0
    assert_same(got, predictions(nlp, TEXTS, 4))


def test_packing_check_runs_once_per_encoder(tiny_bert_dir, monkeypatch):
    checks = []
    inner = packing.pack_calls

    def record(inputs, lengths, rows, max_padded):
        checks.append(max_padded == 0 and len(rows) == 1)
        return inner(inputs, lengths, rows, max_padded)

    monkeypatch.setattr(packing, "pack_calls", record)
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 64)
    list(nlp.pipe(TEXTS, batch_size=2))
    list(nlp.pipe(TEXTS, batch_size=2))
    assert checks == [True]
    # A copy is another encoder: checked again.
    copied = nlp.get_pipe("transformer").model.copy()
    copied.predict([nlp.make_doc(TEXTS[1])])
    assert checks == [True, True]


def encoder_gradients(layer, wordpieces, d_hidden):
    """The encoder's parameter gradients for one training pass of `layer` with gradient
    `d_hidden` on its last hidden state."""
    encoder = layer.shims[0]._model
    for param in encoder.parameters():
        param.grad = None
    output, backprop = layer(wordpieces, is_train=True)
    assert output.last_hidden_state.shape == d_hidden.shape
    backprop(type(output)(last_hidden_state=d_hidden))
    return output.last_hidden_state.detach().clone(), {
        name: param.grad.clone() for name, param in encoder.named_parameters() if param.grad is not None
    }


def test_training_on_packed_rows_gives_the_padded_gradients(tiny_bert_dir, monkeypatch):
    """Training packs the batch into one call; without dropout, the outputs and every
    gradient of the encoder are those of spacy-transformers' one padded call."""
    from spacy_transformers.data_classes import WordpieceBatch
    from spacy_transformers.layers.transformer_model import huggingface_tokenize

    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 16, transformer_config=no_dropout)
    model = nlp.get_pipe("transformer").model
    layer = model.layers[0]
    texts = [t for t in TEXTS if t] + TRAIN_TEXTS
    wordpieces = WordpieceBatch.from_batch_encoding(huggingface_tokenize(model.tokenizer, texts))
    torch.manual_seed(0)
    d_hidden = torch.randn(*wordpieces.input_ids.shape, model.get_dim("nO"))
    d_hidden *= torch.as_tensor(wordpieces.attention_mask)[:, :, None]  # no gradient on padding
    seen = []
    monkeypatch.setattr(
        "spacy_secner.layers.grouped_encoder.pack_calls",
        lambda *args: seen.append(packing.pack_calls(*args)) or seen[-1],
    )
    packed_hidden, packed_grads = encoder_gradients(layer, wordpieces, d_hidden.clone())
    assert len(seen) == 1 and len(seen[0]) == 1, "one call"
    assert (seen[0][0].inputs["window_ids"] > 0).any(), "windows shared a row"
    layer.attrs["packed_row_wordpieces"] = 0
    padded_hidden, padded_grads = encoder_gradients(layer, wordpieces, d_hidden.clone())
    mask = torch.as_tensor(wordpieces.attention_mask).bool()
    torch.testing.assert_close(packed_hidden[mask], padded_hidden[mask], atol=1e-5, rtol=1e-4)
    assert packed_grads.keys() == padded_grads.keys() and len(padded_grads) > 10
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_a_pipeline_trains_on_packed_rows(tiny_bert_dir, monkeypatch):
    from conftest import make_examples

    nlp = make_grouped_trf_nlp(tiny_bert_dir, 64, sentencizer=False)
    calls = []
    monkeypatch.setattr(
        "spacy_secner.layers.grouped_encoder.pack_calls",
        lambda *args: calls.append(args[3]) or packing.pack_calls(*args),
    )
    optimizer = nlp.create_optimizer()
    losses = []
    for _ in range(8):
        step = {}
        nlp.update(make_examples(nlp), sgd=optimizer, losses=step)
        losses.append(step["ner_crf"])
    assert calls and set(calls) == {0}, "one packed call per training step"
    assert losses[-1] < losses[0]


def test_packed_forward_refuses_backprop(tiny_bert_dir, monkeypatch):
    from spacy_transformers.data_classes import WordpieceBatch
    from spacy_transformers.layers.transformer_model import huggingface_tokenize

    nlp = make_grouped_trf_nlp(tiny_bert_dir, 64)
    model = nlp.get_pipe("transformer").model
    wordpieces = WordpieceBatch.from_batch_encoding(huggingface_tokenize(model.tokenizer, TEXTS[:4]))
    packed = []
    original = grouped_encoder._packed_forward
    monkeypatch.setattr(
        grouped_encoder,
        "_packed_forward",
        lambda *args: packed.append(original(*args)) or packed[-1],
    )
    output, backprop = length_sorted_forward(model.layers[0], wordpieces, False)
    assert packed and packed[-1] is not None, "the packed rows answered, not the fallback"
    assert output.last_hidden_state.shape[:2] == wordpieces.input_ids.shape
    with pytest.raises(ValueError, match="only to predict"):
        backprop(output)
