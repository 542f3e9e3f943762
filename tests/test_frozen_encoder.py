"""The encoder's frozen TorchScript graph (`layers/frozen_encoder.py`): the eager encoder's
outputs, rebuilt when the weights change, and the eager path wherever it does not apply."""
import copy
import warnings

import numpy
import pytest
import spacy
import torch
from transformers.modeling_outputs import BaseModelOutput

from spacy_secner.layers import frozen_encoder
from spacy_secner.layers.frozen_encoder import (
    FrozenGraph,
    frozen_forward,
    parameter_key,
    tensor_dicts,
)

from conftest import MIXED_TEXTS, make_examples, make_grouped_trf_nlp, offsets_of

TEXTS = MIXED_TEXTS


def shim_of(nlp):
    return nlp.get_pipe("transformer").model.layers[0].shims[0]


def graph_calls(monkeypatch):
    """Count the predictions that went through a frozen graph."""
    calls = []
    inner = FrozenGraph.__call__

    def record(self, inputs):
        calls.append(tuple(inputs["input_ids"].shape))
        return inner(self, inputs)

    monkeypatch.setattr(FrozenGraph, "__call__", record)
    return calls


def outputs(nlp, texts, batch_size):
    docs = list(nlp.pipe(texts, batch_size=batch_size))
    hidden = []
    for doc in docs:
        if len(doc):
            data = doc._.trf_data
            mask = data.wordpieces.attention_mask.astype(bool)
            hidden.append(data.model_output.last_hidden_state[mask])
    return [offsets_of(d) for d in docs], [[e._.confidence for e in d.ents] for d in docs], hidden


@pytest.fixture
def nlp(tiny_bert_dir):
    return make_grouped_trf_nlp(tiny_bert_dir, 16, packed_row_wordpieces=16)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_frozen_graph_gives_the_eager_outputs(nlp, monkeypatch, batch_size):
    shim = shim_of(nlp)
    assert shim.frozen_inference, "on by default"
    calls = graph_calls(monkeypatch)
    frozen = outputs(nlp, TEXTS, batch_size)
    # Several calls of several shapes (groups of windows) through one graph.
    assert len(calls) >= 3 and len(set(calls)) >= 3, calls
    assert isinstance(frozen_encoder._GRAPHS.get(shim._model), FrozenGraph)
    shim.frozen_inference = False
    calls.clear()
    eager = outputs(nlp, TEXTS, batch_size)
    assert calls == []
    assert frozen[0] == eager[0]
    for a, b in zip(frozen[1], eager[1]):
        assert a == pytest.approx(b, abs=1e-5)
    for a, b in zip(frozen[2], eager[2]):
        numpy.testing.assert_allclose(a, b, atol=1e-5)


def test_graph_is_rebuilt_when_the_weights_change(nlp, monkeypatch):
    """An optimizer step changes the weights in place; the next prediction uses them."""
    calls = graph_calls(monkeypatch)
    encoder = shim_of(nlp)._model
    outputs(nlp, TEXTS[:2], 2)
    built = frozen_encoder._GRAPHS[encoder]
    before = [p.detach().clone() for p in encoder.parameters()]
    optimizer = nlp.resume_training()
    examples = make_examples(nlp)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder.parameters()))
    frozen = outputs(nlp, TEXTS, 2)
    assert frozen_encoder._GRAPHS[encoder] is not built
    assert calls
    shim_of(nlp).frozen_inference = False
    eager = outputs(nlp, TEXTS, 2)
    for a, b in zip(frozen[2], eager[2]):
        numpy.testing.assert_allclose(a, b, atol=1e-5)


def test_loaded_weights_reach_the_graph(nlp, tiny_bert_dir, tmp_path):
    """Weights read into a pipeline that already predicted (from_bytes replaces the encoder)."""
    outputs(nlp, TEXTS[:2], 2)
    other = make_grouped_trf_nlp(tiny_bert_dir, 16, packed_row_wordpieces=16)
    for param in shim_of(other)._model.parameters():
        torch.nn.init.normal_(param, std=0.5)
    other.to_disk(tmp_path / "other")
    nlp.from_disk(tmp_path / "other")
    shim_of(other).frozen_inference = False
    got, expected = outputs(nlp, TEXTS, 2), outputs(other, TEXTS, 2)
    for a, b in zip(got[2], expected[2]):
        numpy.testing.assert_allclose(a, b, atol=1e-5)


def test_graph_holds_the_encoders_weights_not_copies(nlp):
    """The graph's weight constants are the encoder's own tensors: no second copy in memory
    (as `torch.jit.optimize_for_inference`'s transposed weights would be)."""
    outputs(nlp, TEXTS[:2], 2)
    encoder = shim_of(nlp)._model
    graph = frozen_encoder._GRAPHS[encoder].graph
    nodes = [node for node in graph.graph.nodes() if node.kind() == "prim::Constant"]
    constants = [c for c in (n.output().toIValue() for n in nodes) if isinstance(c, torch.Tensor)]
    weights = {p.data_ptr() for p in encoder.parameters()}
    matrices = [c for c in constants if c.dim() == 2]
    assert len(matrices) >= 2 * encoder.config.num_hidden_layers, "the linear weights are constants"
    copied = [tuple(c.shape) for c in constants if c.numel() > 1 and c.data_ptr() not in weights]
    assert copied == []


def test_copies_and_saved_pipelines_hold_no_graph(nlp, tmp_path):
    outputs(nlp, TEXTS[:2], 2)
    model = nlp.get_pipe("transformer").model
    copied = copy.deepcopy(model)
    assert copied.layers[0].shims[0]._model not in frozen_encoder._GRAPHS
    assert model.copy().layers[0].shims[0].frozen_inference
    nlp.to_disk(tmp_path / "saved")
    loaded = spacy.load(tmp_path / "saved")
    assert outputs(loaded, TEXTS, 2)[0] == outputs(nlp, TEXTS, 2)[0]


def test_setting_off_in_the_config(tiny_bert_dir, tmp_path, monkeypatch):
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 16, packed_row_wordpieces=16)
    nlp.to_disk(tmp_path / "model")
    loaded = spacy.load(
        tmp_path / "model", config={"components": {"transformer": {"model": {"frozen_inference": False}}}}
    )
    assert not shim_of(loaded).frozen_inference
    calls = graph_calls(monkeypatch)
    outputs(loaded, TEXTS, 2)
    assert calls == []


def test_training_and_gradients_stay_eager(nlp, monkeypatch):
    encoder = shim_of(nlp)._model
    calls = graph_calls(monkeypatch)
    nlp.update(make_examples(nlp), sgd=nlp.resume_training())
    assert calls == []
    inputs = {"input_ids": torch.tensor([[101, 2000, 102]])}
    encoder.eval()
    assert frozen_forward(encoder, inputs) is None  # gradients on
    with torch.no_grad():
        assert frozen_forward(encoder, {**inputs, "head_mask": None}) is None
        encoder.train()
        assert frozen_forward(encoder, inputs) is None
        encoder.eval()
        assert frozen_forward(encoder, inputs) is not None


class ShapeBound(torch.nn.Module):
    """An encoder that a trace gets wrong: it reads a Python number off its input, which the
    trace records as a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(200, 4)

    def forward(self, input_ids, attention_mask=None, return_dict=True):
        hidden = self.embed(input_ids) * float(input_ids.shape[1])
        return BaseModelOutput(last_hidden_state=hidden) if return_dict else (hidden,)


def test_encoder_whose_graph_does_not_hold_stays_eager():
    encoder = ShapeBound().eval()
    inputs = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    with torch.no_grad():
        with pytest.warns(UserWarning, match="predicts eagerly.*differs from the eager"):
            assert frozen_forward(encoder, inputs) is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once, not at every call
            assert frozen_forward(encoder, inputs) is None
    frozen_encoder.drop_graph(encoder)
    assert encoder not in frozen_encoder._GRAPHS


def test_failure_to_trace_falls_back_to_the_eager_outputs(nlp, monkeypatch):
    shim = shim_of(nlp)
    shim.frozen_inference = False
    expected = outputs(nlp, TEXTS, 2)
    shim.frozen_inference = True
    frozen_encoder.drop_graph(shim._model)

    def fail(*args, **kwargs):
        raise RuntimeError("not traceable")

    monkeypatch.setattr(torch.jit, "trace", fail)
    with pytest.warns(UserWarning, match="not traceable"):
        got = outputs(nlp, TEXTS, 2)
    assert got[0] == expected[0]
    for a, b in zip(got[2], expected[2]):
        numpy.testing.assert_array_equal(a, b)


def test_torch_changes_to_the_weights_reach_the_graph(nlp):
    """In-place torch operations and `load_state_dict` bump the parameters' versions."""
    encoder = shim_of(nlp)._model
    outputs(nlp, TEXTS[:2], 2)
    with torch.no_grad():
        for param in encoder.parameters():
            param.mul_(1.5)
    frozen = outputs(nlp, TEXTS, 2)
    shim_of(nlp).frozen_inference = False
    eager = outputs(nlp, TEXTS, 2)
    for a, b in zip(frozen[2], eager[2]):
        numpy.testing.assert_allclose(a, b, atol=1e-5)
    assert any(not numpy.allclose(a, b, atol=1e-3) for a, b in zip(frozen[2], outputs_before(nlp)))


def outputs_before(nlp):
    """The outputs of the weights before the change (divided back), eagerly."""
    encoder = shim_of(nlp)._model
    with torch.no_grad():
        for param in encoder.parameters():
            param.div_(1.5)
    try:
        return outputs(nlp, TEXTS, 2)[2]
    finally:
        with torch.no_grad():
            for param in encoder.parameters():
                param.mul_(1.5)


def test_a_new_parameter_object_reaches_the_graph(nlp):
    """A parameter replaced by another tensor (`load_state_dict(assign=True)`, setattr)."""
    encoder = shim_of(nlp)._model
    outputs(nlp, TEXTS[:2], 2)
    dicts = tensor_dicts(list(encoder.modules()))
    key = parameter_key(dicts)
    layer = encoder.encoder.layer[0].output.dense
    layer.weight = torch.nn.Parameter(layer.weight.detach() * 3)
    assert parameter_key(dicts) != key
    frozen = outputs(nlp, TEXTS, 2)
    shim_of(nlp).frozen_inference = False
    eager = outputs(nlp, TEXTS, 2)
    for a, b in zip(frozen[2], eager[2]):
        numpy.testing.assert_allclose(a, b, atol=1e-5)
