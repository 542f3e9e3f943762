"""The Hugging Face encoder layer of spacy-transformers, on windows packed into rows or in
length-sorted groups.

spacy-transformers pads all the windows of an encoder call to the longest one. Sentence windows
of whole reports vary a lot in length: padding to the longest made the encoder read 1.6
wordpieces for every real one on the benchmark's documents. This layer packs the windows
several to a row of about `packed_row_wordpieces` (`packing.py`: each window keeps its
positions and attends only to itself), in training as one call (as spacy-transformers makes one
padded call) and when predicting in calls of at most `max_batch_wordpieces` padded wordpieces.
With that setting 0, or an encoder that fails the packing check, it predicts on length-sorted
padded groups of windows instead, and trains on one padded call. The outputs go back in the
original order and padded shape, so everything downstream sees what one padded call gives;
only padded positions hold zeros instead of the encoder's values for padding.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from spacy_transformers.data_classes import WordpieceBatch
from thinc.api import ArgsKwargs, Model, deserialize_attr, xp2torch
from thinc.shims import Shim
from thinc.layers.pytorchwrapper import forward as pytorch_forward
from transformers.file_utils import ModelOutput

from ..batching import padded_batches
from .packing import pack_calls, packing_holds, plan_rows, unpack

# The encoder outputs this knows how to put back in place: per wordpiece (batch, length, ...),
# a tuple of those (one per layer), or one vector per window (batch, width).
_PER_WORDPIECE = {"last_hidden_state"}
_PER_WORDPIECE_TUPLES = {"hidden_states"}
_PER_WINDOW = {"pooler_output"}
_PLACEABLE = _PER_WORDPIECE | _PER_WORDPIECE_TUPLES | _PER_WINDOW


class ConfiguredSetting(int):
    """A grouping setting as the layer was built with it (from the config).

    thinc restores the attrs a layer was saved with when it loads its weights; a setting of this
    type keeps the value it was built with instead, so a setting given when loading a pipeline
    (`spacy.load(path, config=...)`) is the one used.
    """


@deserialize_attr.register(ConfiguredSetting)
def _keep_configured(
    default: ConfiguredSetting, value: bytes, name: str, model: Model
) -> ConfiguredSetting:
    return default


def grouped_encoder_layer(
    shim: Shim,
    convert_inputs: Callable,
    convert_outputs: Callable,
    max_batch_wordpieces: int,
    packed_row_wordpieces: int = 0,
) -> Model:
    """The encoder layer of a transformer model (as spacy-transformers' `HFWrapper`: same name
    and dims) around `shim`, with a forward that packs windows into rows of
    `packed_row_wordpieces` (0: no packing) or groups them by length when predicting, in calls
    of at most `max_batch_wordpieces` padded wordpieces (0: one call). The settings are read at
    each call, from `attrs`; loading saved weights keeps the values given here.
    """
    return Model(
        "hf-pytorch",
        length_sorted_forward,
        attrs={
            "convert_inputs": convert_inputs,
            "convert_outputs": convert_outputs,
            "max_batch_wordpieces": ConfiguredSetting(max_batch_wordpieces),
            "packed_row_wordpieces": ConfiguredSetting(packed_row_wordpieces),
        },
        shims=[shim],
        dims={"nI": None, "nO": None},
    )


def length_sorted_forward(
    model: Model, wordpieces: WordpieceBatch, is_train: bool
) -> Tuple[ModelOutput, Callable]:
    """The HF wrapper's forward on packed rows (predicting and training) or length-sorted
    groups (predicting) of `wordpieces`, returning its outputs as one padded call over all of
    them would."""
    max_padded = model.attrs.get("max_batch_wordpieces", 0)
    row_wordpieces = model.attrs.get("packed_row_wordpieces", 0)
    if row_wordpieces > 0 and len(wordpieces) > 0:
        packed = _packed_forward(model, wordpieces, row_wordpieces, max_padded, is_train)
        if packed is not None:
            return packed
    if is_train or max_padded <= 0 or len(wordpieces) < 2:
        return pytorch_forward(model, wordpieces, is_train)
    groups = padded_batches(wordpieces.lengths, max_padded)
    if len(groups) == 1:
        return pytorch_forward(model, wordpieces, is_train)
    parts = []
    for rows in groups:
        output, _ = pytorch_forward(model, _take_rows(wordpieces, rows), False)
        if not set(output.keys()) <= _PLACEABLE:
            # e.g. attentions (batch, heads, length, length): not worth regrouping here.
            return pytorch_forward(model, wordpieces, is_train)
        parts.append((rows, output))
    return _scatter(parts, wordpieces.input_ids.shape), _predict_only


def _packed_forward(
    model: Model, wordpieces: WordpieceBatch, row_wordpieces: int, max_padded: int, is_train: bool
) -> Optional[Tuple[ModelOutput, Callable]]:
    """The encoder's outputs for `wordpieces` from packed rows, with their backprop when
    training, or None where packing does not apply: an encoder that fails the packing check,
    or outputs it cannot put back per window (e.g. attentions).

    Training packs the whole batch into one call, as spacy-transformers makes one padded call:
    one backward pass through the encoder. Its gradients are those of the padded call (each
    window's computation is the same; only dropout draws other masks).
    """
    shim = model.shims[0]
    if not getattr(shim, "accepts_packed_rows", False):
        return None
    encoder = shim._model
    inputs = {"input_ids": wordpieces.input_ids, "attention_mask": wordpieces.attention_mask}
    if wordpieces.token_type_ids is not None:
        inputs["token_type_ids"] = wordpieces.token_type_ids
    lengths = list(wordpieces.lengths)
    if not packing_holds(encoder, inputs, lengths):
        return None
    rows = plan_rows(lengths, row_wordpieces)
    n_windows, width = wordpieces.input_ids.shape
    if not is_train and _rows_are_the_windows(rows, lengths, width, max_padded):
        return _whole_windows_forward(shim, inputs, width)
    calls = pack_calls(inputs, lengths, rows, 0 if is_train else max_padded)
    merged: Dict[str, Any] = {}
    first: Optional[ModelOutput] = None
    torch_backprop: Optional[Callable] = None
    device = shim.device  # looked up through the module's parameters: once, not per input
    for call in calls:
        kwargs = {name: xp2torch(value, device=device) for name, value in call.inputs.items()}
        if is_train:
            output, torch_backprop = shim.begin_update(ArgsKwargs(args=(), kwargs=kwargs))
        else:
            output = shim.predict(ArgsKwargs(args=(), kwargs=kwargs))
        if first is None:
            first = output
            if not set(output.keys()) <= _PLACEABLE:
                return None
        # Index assignments, which autograd follows back into the packed rows. The unpacked
        # outputs are allocated on the first call only: each is as large as the whole batch.
        for key, value in output.items():
            if key in _PER_WORDPIECE:
                if key not in merged:
                    merged[key] = _flat_zeros(value, n_windows * width)
                unpack(value, call, merged[key])
            elif key in _PER_WORDPIECE_TUPLES:
                if key not in merged:
                    merged[key] = tuple(_flat_zeros(layer, n_windows * width) for layer in value)
                for layer, out in zip(value, merged[key]):
                    unpack(layer, call, out)
    assert first is not None
    for key, value in merged.items():
        if key in _PER_WORDPIECE:
            merged[key] = value.reshape(n_windows, width, *value.shape[1:])
        else:
            merged[key] = tuple(t.reshape(n_windows, width, *t.shape[1:]) for t in value)
    if "pooler_output" in first.keys():
        # The pooler reads each row's first wordpiece: run it on each window's instead.
        pooler = getattr(encoder, "pooler", None)
        if pooler is None or "last_hidden_state" not in merged:
            return None
        with torch.set_grad_enabled(is_train), torch.autocast(
            device_type="cuda", enabled=shim._mixed_precision
        ):
            merged["pooler_output"] = pooler(merged["last_hidden_state"])
    output = type(first)(**{key: merged[key] for key in first.keys()})
    if not is_train:
        return output, _predict_only
    # The wrapper's own conversions around the shim, as thinc's PyTorchWrapper forward does.
    _, get_d_inputs = model.attrs["convert_inputs"](model, wordpieces, is_train)
    output, get_d_torch = model.attrs["convert_outputs"](model, (wordpieces, output), is_train)
    assert torch_backprop is not None

    def backprop(d_output: Any) -> Any:
        return get_d_inputs(torch_backprop(get_d_torch(d_output)))

    return output, backprop


def _rows_are_the_windows(
    rows: Sequence[Sequence[int]], lengths: Sequence[int], width: int, max_padded: int
) -> bool:
    """Whether the packed rows would be the padded batch itself, in one call: each window alone
    in its row, in order, none of them padded (a single sentence, mostly)."""
    return (
        min(lengths) == width
        and (max_padded <= 0 or len(rows) * width <= max_padded)
        and all(len(row) == 1 and row[0] == i for i, row in enumerate(rows))
    )


def _whole_windows_forward(
    shim: Shim, inputs: Dict[str, Any], width: int
) -> Optional[Tuple[ModelOutput, Callable]]:
    """The encoder's outputs on windows that are their own rows (`_rows_are_the_windows`),
    predicting: the same call as the packed one, with nothing to move back (each row's first
    wordpiece is its window's, so the pooler's output is the window's too)."""
    device = shim.device
    n_windows = len(inputs["input_ids"])
    kwargs = {name: xp2torch(value, device=device) for name, value in inputs.items()}
    positions = torch.arange(width, device=device).expand(n_windows, width)
    # The same inputs as the packed call's: the graph traced with them is reused, not rebuilt.
    kwargs["position_ids"] = positions.contiguous()
    kwargs["window_ids"] = torch.zeros((n_windows, width), dtype=torch.int64, device=device)
    output = shim.predict(ArgsKwargs(args=(), kwargs=kwargs))
    if not set(output.keys()) <= _PLACEABLE:
        return None
    return output, _predict_only


def _flat_zeros(sample: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Zeros for `n_rows` flat wordpieces of a per-wordpiece output like `sample`."""
    return sample.new_zeros((n_rows, *sample.shape[2:]))


def _take_rows(wordpieces: WordpieceBatch, rows: Sequence[int]) -> WordpieceBatch:
    """The windows `rows` of a batch, padded only to the longest of them."""
    xp_rows = list(rows)  # numpy and cupy both index rows with a list
    width = max(wordpieces.lengths[i] for i in rows)
    token_type_ids = wordpieces.token_type_ids
    return WordpieceBatch(
        strings=[wordpieces.strings[i] for i in rows],
        input_ids=wordpieces.input_ids[xp_rows, :width],
        attention_mask=wordpieces.attention_mask[xp_rows, :width],
        lengths=[wordpieces.lengths[i] for i in rows],
        token_type_ids=None if token_type_ids is None else token_type_ids[xp_rows, :width],
    )


def _scatter(parts: List[Tuple[List[int], ModelOutput]], shape: Tuple[int, int]) -> ModelOutput:
    """One output for all windows, in their original order and padded width."""
    n_rows, width = shape
    first = parts[0][1]
    merged: Dict[str, Any] = {}
    for key, value in first.items():
        if key in _PER_WORDPIECE_TUPLES:
            merged[key] = tuple(
                _fill([(rows, out[key][layer]) for rows, out in parts], n_rows, width)
                for layer in range(len(value))
            )
        else:
            per_wordpiece = key in _PER_WORDPIECE
            merged[key] = _fill(
                [(rows, out[key]) for rows, out in parts], n_rows, width if per_wordpiece else None
            )
    return type(first)(**merged)


def _fill(
    parts: List[Tuple[List[int], torch.Tensor]], n_rows: int, width: Optional[int]
) -> torch.Tensor:
    """Scatter each group's tensor into rows of one zero tensor: (n_rows, width, ...) for
    per-wordpiece outputs, (n_rows, ...) for per-window ones (`width` None)."""
    sample = parts[0][1]
    if width is None:
        full = sample.new_zeros((n_rows, *sample.shape[1:]))
    else:
        full = sample.new_zeros((n_rows, width, *sample.shape[2:]))
    for rows, tensor in parts:
        index = torch.as_tensor(rows, device=tensor.device)
        if width is None:
            full[index] = tensor
        else:
            full[index, : tensor.shape[1]] = tensor
    return full


def _predict_only(d_output: Any) -> Any:
    raise ValueError("The length-sorted encoder forward is used only to predict (is_train=False)")


def grouping_layer(model: Model) -> Optional[Model]:
    """The layer of a transformer model that holds its `max_batch_wordpieces` setting (set it
    there to change the grouping of a loaded pipeline), or None for a model without one, such
    as spacy-transformers' own."""
    return next((node for node in model.walk() if "max_batch_wordpieces" in node.attrs), None)
