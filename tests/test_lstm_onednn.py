"""The BiLSTM's directions with weights kept in oneDNN's layout give nn.LSTM's outputs, and the
kept weights follow every change of the LSTM's own."""
import warnings

import numpy
import pytest
import torch

from spacy_secner import lstm_onednn
from spacy_secner.pytorch_bilstm_crf import BiLSTMEmitter

pytestmark = [
    pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in PyTorch"),
    # torch.backends.mkldnn.flags says so on every CPU-only build.
    pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN"),
]


def _emitter(depth: int = 1) -> BiLSTMEmitter:
    torch.manual_seed(depth)
    return BiLSTMEmitter(12, 5, hidden_size=8, depth=depth, dropout=0.0).eval()


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("shape", [(1, 1), (1, 23), (3, 9)])
def test_bidirectional_is_nn_lstm_to_the_bit(depth: int, shape) -> None:
    emitter = _emitter(depth)
    X = torch.randn(*shape, 12)
    with torch.no_grad():
        assert lstm_onednn.applies(emitter.lstm, X)
        expected, _ = emitter.lstm(X)
        got = lstm_onednn.bidirectional(emitter.lstm, X)
    assert torch.equal(got, expected)


def test_applies_only_where_nn_lstm_would_use_onednn_in_inference() -> None:
    emitter = _emitter()
    X = torch.randn(1, 4, 12)
    with torch.no_grad():
        assert lstm_onednn.applies(emitter.lstm, X)
        assert not lstm_onednn.applies(emitter.lstm, X.double())
        assert not lstm_onednn.applies(emitter.lstm, X[:, :0])
        with torch.backends.mkldnn.flags(enabled=False):
            assert not lstm_onednn.applies(emitter.lstm, X)
        # Dropout between layers, as nn.LSTM applies it in training mode.
        torch.manual_seed(0)
        deep = BiLSTMEmitter(12, 5, hidden_size=8, depth=2, dropout=0.5)
        assert not lstm_onednn.applies(deep.lstm, X)
        assert lstm_onednn.applies(deep.eval().lstm, X)
    assert not lstm_onednn.applies(emitter.lstm, X)  # gradients on


def _predict(emitter: BiLSTMEmitter, X: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return emitter(X, torch.tensor([X.shape[1]] * X.shape[0]))


def _reference(emitter: BiLSTMEmitter, X: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        return emitter(X, torch.tensor([X.shape[1]] * X.shape[0]))


def test_kept_weights_follow_changes_torch_sees() -> None:
    emitter = _emitter()
    X = torch.randn(1, 6, 12)
    before = _predict(emitter, X)
    with torch.no_grad():
        emitter.lstm.weight_hh_l0_reverse.mul_(-1.5)  # in place: a new version
    changed = _predict(emitter, X)
    assert not torch.allclose(changed, before)
    assert torch.allclose(changed, _reference(emitter, X), atol=1e-5)
    state = {k: v.clone() for k, v in _emitter().state_dict().items()}
    emitter.load_state_dict(state)
    assert torch.allclose(_predict(emitter, X), _reference(emitter, X), atol=1e-5)
    emitter.lstm.weight_ih_l0 = torch.nn.Parameter(torch.randn_like(emitter.lstm.weight_ih_l0))
    assert torch.allclose(_predict(emitter, X), _reference(emitter, X), atol=1e-5)


def test_kept_weights_are_dropped_on_a_mode_switch() -> None:
    """thinc writes weights through numpy arrays that share their memory (no new version);
    it does so only after a training step, which switches the module to training mode."""
    emitter = _emitter()
    X = torch.randn(1, 6, 12)
    before = _predict(emitter, X)
    emitter.train()
    weight = emitter.lstm.weight_ih_l0
    numpy.multiply(weight.detach().numpy(), -2.0, out=weight.detach().numpy())
    emitter.eval()
    after = _predict(emitter, X)
    assert not torch.allclose(after, before)
    assert torch.allclose(after, _reference(emitter, X), atol=1e-5)


def test_padded_route_through_kept_weights_is_nn_lstm_to_the_bit() -> None:
    emitter = _emitter(depth=2)
    lengths = torch.tensor([9, 7, 9, 8])
    X = torch.randn(4, 9, 12)
    with torch.no_grad():
        got = emitter._padded_lstm(X, lengths)
        with torch.backends.mkldnn.flags(enabled=False):
            lstm_onednn.forget(emitter.lstm)
            expected = emitter._padded_lstm(X, lengths)
    assert torch.allclose(got, expected, atol=1e-5)
    with torch.no_grad():
        # With oneDNN on, the one-direction nn.LSTM runs the same primitive: equal to the bit.
        one_way = {
            name: torch.equal(
                emitter._one_way_pass(0, X, reverse_weights=backwards),
                _one_way_lstm(emitter, X, backwards),
            )
            for name, backwards in (("forward", False), ("reverse", True))
        }
    assert one_way == {"forward": True, "reverse": True}


def _one_way_lstm(emitter: BiLSTMEmitter, X: torch.Tensor, backwards: bool) -> torch.Tensor:
    from torch.func import functional_call

    suffix = "_reverse" if backwards else ""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    weights = {f"{n}_l0": getattr(emitter.lstm, f"{n}_l0{suffix}") for n in names}
    return functional_call(emitter._one_way[X.shape[2]], weights, (X,))[0]


def test_a_failing_operator_falls_back_to_nn_lstm_once(monkeypatch) -> None:
    emitter = _emitter()
    X = torch.randn(1, 5, 12)
    expected = _reference(emitter, X)

    def broken(*args, **kwargs):
        raise RuntimeError("no such operator here")

    monkeypatch.setattr(lstm_onednn, "direction", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _predict(emitter, X)
        second = _predict(emitter, X)
    assert len([w for w in caught if "nn.LSTM" in str(w.message)]) == 1
    assert torch.allclose(first, expected, atol=1e-5) and torch.equal(first, second)
    with torch.no_grad():
        assert not lstm_onednn.applies(emitter.lstm, X)
    emitter.train()
    emitter.eval()
    with torch.no_grad():
        assert not lstm_onednn.applies(emitter.lstm, X)  # a mode switch does not retry


def test_kept_weights_never_reach_copies_or_saved_state() -> None:
    import copy
    import pickle

    emitter = _emitter()
    X = torch.randn(1, 3, 12)
    expected = _predict(emitter, X)
    assert emitter.lstm in lstm_onednn._PACKED
    assert set(emitter.state_dict()) == set(_emitter().state_dict())
    # Pickling fails on oneDNN tensors: a copy that pickles carries none.
    clone = pickle.loads(pickle.dumps(copy.deepcopy(emitter)))
    assert torch.equal(_predict(clone, X), expected)
    assert lstm_onednn._PACKED[clone.lstm] is not lstm_onednn._PACKED[emitter.lstm]


@pytest.mark.parametrize("fused_adam", [True, False], ids=["fused-adam", "thinc-loop"])
def test_training_steps_reach_the_kept_weights(monkeypatch, fused_adam) -> None:
    """A pipe that predicted, then trained (thinc's optimizer writing the BiLSTM's weights in
    place, fused or parameter by parameter), predicts with the new weights: its entities and
    confidences are those of `nn.LSTM` on them."""
    from conftest import TRAIN_DATA, make_cnn_nlp, make_examples

    from spacy_secner.layers.shims import EvalModeShim

    monkeypatch.setattr(EvalModeShim, "fused_adam", fused_adam)
    nlp = make_cnn_nlp()
    examples = make_examples(nlp)
    nlp.initialize(lambda: examples)
    texts = [text for text, _ in TRAIN_DATA]

    def annotate():
        # One text at a time: a sequence alone in its batch takes the kept weights.
        docs = nlp.pipe(texts, batch_size=1)
        return [[(e.start, e.end, e.label_, e._.confidence) for e in doc.ents] for doc in docs]

    emitter = nlp.get_pipe("ner_crf").model.get_ref("emitter").shims[0]._model
    before = annotate()
    assert emitter.lstm in lstm_onednn._PACKED
    optimizer = nlp.resume_training()
    for _ in range(5):
        nlp.update(examples, sgd=optimizer)
    got = annotate()
    with torch.backends.mkldnn.flags(enabled=False):
        expected = annotate()
    assert got != before
    assert [[span[:3] for span in doc] for doc in got] == [
        [span[:3] for span in doc] for doc in expected
    ]
    for doc_got, doc_expected in zip(got, expected):
        assert [s[3] for s in doc_got] == pytest.approx([s[3] for s in doc_expected], abs=1e-5)
