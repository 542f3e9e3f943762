"""An LSTM's directions run on the CPU with their weights in oneDNN's layout, reordered once.

On the CPU, `nn.LSTM` runs each direction through oneDNN's LSTM primitive, which reads its
weights in a blocked layout of its own, and reorders them into it at every call: for one
sentence through the default BiLSTM (input 384, hidden 256), 5 MiB rewritten per call, read
back after the encoder before it has pushed them out of the caches. The operator `nn.LSTM` calls per direction takes weights already in that layout
(Inductor's weight prepacking uses it), so here each direction's weights are reordered once and
kept, beside the LSTM, until they change. Same primitive, same weights: the outputs are
`nn.LSTM`'s to the bit.

The reordered weights are dropped when a weight is replaced or changed in place through torch
(its storage or version changes), and by `forget`, which `BiLSTMEmitter` calls on every mode
switch: thinc's optimizers write the weights through arrays that share their memory, which torch
does not see, and they only do so after a training step, which switches the module to training
mode first.
"""
import warnings
import weakref
from typing import Any, Dict, Tuple

import torch
from torch import nn

# The operator's RNN kind, in cuDNN's numbering (RNN_RELU, RNN_TANH, LSTM, GRU): LSTM.
_LSTM_MODE = 2
# What the operators raise where a PyTorch build lacks them or rejects an input: the LSTM then
# stays on `nn.LSTM` (`fail`).
OPERATOR_ERRORS = (RuntimeError, AttributeError, NotImplementedError)


def applies(lstm: nn.LSTM, X: torch.Tensor) -> bool:
    """Whether `direction` runs `lstm` on X: inference (no gradients, and no dropout between
    layers, which `nn.LSTM` applies in training mode) on float32 CPU tensors, with oneDNN
    available and enabled (as `nn.LSTM` requires to use it), biases and no projection, and no
    earlier failure for this LSTM."""
    return (
        not torch.is_grad_enabled()
        and not (lstm.training and lstm.dropout > 0 and lstm.num_layers > 1)
        and X.device.type == "cpu"
        and X.dtype == torch.float32
        and X.numel() > 0
        and lstm.bias
        and lstm.proj_size == 0
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and _PACKED.get(lstm) is not _FAILED
        and lstm.weight_ih_l0.device.type == "cpu"
        and lstm.weight_ih_l0.dtype == torch.float32
    )


def direction(
    lstm: nn.LSTM, layer: int, X: torch.Tensor, *, reverse_weights: bool, reverse: bool
) -> torch.Tensor:
    """One direction of one layer of `lstm` on time-major X (steps, n, width), from zero states:
    the weights of the forward or reverse direction (`reverse_weights`), reading the steps
    forwards or backwards (`reverse`). RETURNS (Tensor): (steps, n, hidden)."""
    suffix = "_reverse" if reverse_weights else ""
    bias_ih = getattr(lstm, f"bias_ih_l{layer}{suffix}")
    bias_hh = getattr(lstm, f"bias_hh_l{layer}{suffix}")
    weight_ih, weight_hh = _reordered(lstm, layer, suffix)
    zeros = X.new_zeros(X.shape[1], lstm.hidden_size)
    output = torch.ops.aten.mkldnn_rnn_layer(
        X, weight_ih, weight_hh, bias_ih, bias_hh, zeros, zeros,
        reverse, [], _LSTM_MODE, lstm.hidden_size, 1, True, False, False, False,
    )  # fmt: skip
    return output[0]


def bidirectional(lstm: nn.LSTM, X: torch.Tensor) -> torch.Tensor:
    """A bidirectional `lstm` (batch first) on X (n, steps, width) without padding, from zero
    states: `lstm(X)[0]`, through the kept weights where they apply (`applies`). Falls back to
    `lstm(X)` (with a warning, once per LSTM) if the operators fail."""
    if not applies(lstm, X):
        return lstm(X)[0]
    steps = X.transpose(0, 1).contiguous()
    try:
        for layer in range(lstm.num_layers):
            halves = [
                direction(lstm, layer, steps, reverse_weights=backwards, reverse=backwards)
                for backwards in (False, True)
            ]
            steps = torch.cat(halves, -1)
    except OPERATOR_ERRORS as error:
        fail(lstm, error)
        return lstm(X)[0]
    return steps.transpose(0, 1)


def fail(lstm: nn.LSTM, error: Exception) -> None:
    """Run `lstm` through `nn.LSTM` from now on, saying why once."""
    warnings.warn(
        f"The BiLSTM runs through nn.LSTM: its weights could not be kept in oneDNN's layout "
        f"({type(error).__name__}: {error})."
    )
    _PACKED[lstm] = _FAILED


def forget(lstm: nn.LSTM) -> None:
    """Drop the reordered weights of `lstm` (kept after a failure: it stays on `nn.LSTM`)."""
    if _PACKED.get(lstm) is not _FAILED:
        _PACKED.pop(lstm, None)


def _reordered(lstm: nn.LSTM, layer: int, suffix: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """One direction's input and hidden weights in oneDNN's layout, reordered on first use and
    again whenever either weight's storage or version changes."""
    weight_ih = getattr(lstm, f"weight_ih_l{layer}{suffix}")
    weight_hh = getattr(lstm, f"weight_hh_l{layer}{suffix}")
    key = (weight_ih.data_ptr(), weight_ih._version, weight_hh.data_ptr(), weight_hh._version)
    kept: Dict[Tuple[int, str], Any] = _PACKED.setdefault(lstm, {})
    found = kept.get((layer, suffix))
    if found is None or found[0] != key:
        # The layout is the same for either reading order (`reverse`), so one copy serves both.
        found = (
            key,
            tuple(
                torch.ops.mkldnn._reorder_mkldnn_rnn_layer_weight(
                    weight_ih, weight_hh, lstm.hidden_size, False, True, False
                )
            ),
        )
        kept[(layer, suffix)] = found
    return found[1]


_FAILED: Any = object()
# Held beside the LSTM, not on it: copies, pickles and saved pipelines never carry oneDNN tensors.
_PACKED: "weakref.WeakKeyDictionary[nn.LSTM, Any]" = weakref.WeakKeyDictionary()
