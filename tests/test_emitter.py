"""The BiLSTM emitter's inference paths give what its packed path gives."""
from typing import List

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from spacy_secner.pytorch_bilstm_crf import BiLSTMEmitter

LENGTHS = [[1], [17], [9, 9, 9], [5, 9, 2, 9, 13, 1, 7], [1, 120, 3, 64, 2], [40, 38, 33, 39]]
IDS = ["one-short", "one", "equal", "several", "far-apart", "close"]


def _emitter(depth: int, seed: int) -> BiLSTMEmitter:
    torch.manual_seed(seed)
    return BiLSTMEmitter(7, 5, hidden_size=6, depth=depth, dropout=0.0).eval()


def _batch(lengths: List[int], padding: int) -> torch.Tensor:
    """Random inputs with NaN in the padding: none of it may reach a real position."""
    X = torch.randn(len(lengths), max(lengths) + padding, 7)
    for i, n in enumerate(lengths):
        X[i, n:] = float("nan")
    return X


def _packed_lstm(emitter: BiLSTMEmitter, X: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    assert emitter.lstm is not None
    packed = pack_padded_sequence(X, lengths, batch_first=True, enforce_sorted=False)
    output, _ = emitter.lstm(packed)
    return pad_packed_sequence(output, batch_first=True, total_length=X.shape[1])[0]


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("lengths", LENGTHS, ids=IDS)
def test_padded_lstm_equals_packed(depth: int, lengths: List[int]) -> None:
    emitter = _emitter(depth, seed=len(lengths))
    X = _batch(lengths, padding=3)  # padding even after the longest sequence
    lengths_t = torch.tensor(lengths)
    with torch.no_grad():
        expected = _packed_lstm(emitter, X.nan_to_num(0.0), lengths_t)
        got = emitter._padded_lstm(X, lengths_t)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("lengths", LENGTHS, ids=IDS)
@pytest.mark.parametrize("padding", [0, 2])
def test_inference_equals_training_path(depth: int, lengths: List[int], padding: int) -> None:
    """Whatever route inference takes for the batch, the scores are the packed path's."""
    emitter = _emitter(depth, seed=len(lengths))
    X = _batch(lengths, padding).nan_to_num(0.0)
    lengths_t = torch.tensor(lengths)
    emitter.train()  # training mode with gradients on: the packed path (dropout is 0)
    expected = emitter(X, lengths_t).detach()
    emitter.eval()
    with torch.no_grad():
        got = emitter(X, lengths_t)
    assert torch.allclose(got, expected, atol=1e-5)


def test_inference_routes() -> None:
    emitter = _emitter(1, seed=0)
    route = emitter._inference_route
    assert route(torch.zeros(3, 9, 7), torch.tensor([9, 9, 9])) == "whole"
    assert route(torch.zeros(4, 40, 7), torch.tensor([40, 38, 33, 39])) == "padded"
    assert route(torch.zeros(3, 64, 7), torch.tensor([64, 5, 9])) == "packed"


def test_helpers_stay_out_of_the_state_dict() -> None:
    emitter = BiLSTMEmitter(7, 5, hidden_size=6, depth=2, dropout=0.1)
    assert set(emitter.state_dict()) == set(
        BiLSTMEmitter(7, 5, hidden_size=6, depth=2, dropout=0.1).lstm.state_dict(prefix="lstm.")
    ) | {"linear.weight", "linear.bias"}
