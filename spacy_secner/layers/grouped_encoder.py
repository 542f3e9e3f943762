"""The Hugging Face encoder layer of spacy-transformers, predicting on length-sorted groups.

spacy-transformers pads all the windows of an encoder call to the longest one. Sentence windows
of whole reports vary a lot in length: padding to the longest made the encoder read 1.6
wordpieces for every real one on the benchmark's documents. This layer runs the encoder on the
windows of a batch sorted by wordpiece length, in groups of at most `max_batch_wordpieces`
padded wordpieces, and puts the outputs back in the original order and padded shape, so
everything downstream sees what one call gives; only padded positions hold zeros instead of the
encoder's values for padding. Training (`is_train`) is one call, as in spacy-transformers.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from spacy_transformers.data_classes import WordpieceBatch
from thinc.api import Model
from thinc.shims import Shim
from thinc.layers.pytorchwrapper import forward as pytorch_forward
from transformers.file_utils import ModelOutput

from ..batching import padded_batches

# The encoder outputs this knows how to put back in place: per wordpiece (batch, length, ...),
# a tuple of those (one per layer), or one vector per window (batch, width).
_PER_WORDPIECE = {"last_hidden_state"}
_PER_WORDPIECE_TUPLES = {"hidden_states"}
_PER_WINDOW = {"pooler_output"}


def grouped_encoder_layer(
    shim: Shim, convert_inputs: Callable, convert_outputs: Callable, max_batch_wordpieces: int
) -> Model:
    """The encoder layer of a transformer model (as spacy-transformers' `HFWrapper`: same name,
    dims and attrs, so it serializes exactly as that one) around `shim`, with a forward that
    groups windows by length when predicting (0 turns the grouping off). The setting is read
    at each call, from `attrs["max_batch_wordpieces"]`.
    """
    return Model(
        "hf-pytorch",
        length_sorted_forward,
        attrs={
            "convert_inputs": convert_inputs,
            "convert_outputs": convert_outputs,
            "max_batch_wordpieces": max_batch_wordpieces,
        },
        shims=[shim],
        dims={"nI": None, "nO": None},
    )


def length_sorted_forward(
    model: Model, wordpieces: WordpieceBatch, is_train: bool
) -> Tuple[ModelOutput, Callable]:
    """The HF wrapper's forward on length-sorted groups of `wordpieces` when predicting,
    returning its outputs as one call over all of them would."""
    max_padded = model.attrs.get("max_batch_wordpieces", 0)
    if is_train or max_padded <= 0 or len(wordpieces) < 2:
        return pytorch_forward(model, wordpieces, is_train)
    groups = padded_batches(wordpieces.lengths, max_padded)
    if len(groups) == 1:
        return pytorch_forward(model, wordpieces, is_train)
    parts = []
    for rows in groups:
        output, _ = pytorch_forward(model, _take_rows(wordpieces, rows), False)
        if not set(output.keys()) <= _PER_WORDPIECE | _PER_WORDPIECE_TUPLES | _PER_WINDOW:
            # e.g. attentions (batch, heads, length, length): not worth regrouping here.
            return pytorch_forward(model, wordpieces, is_train)
        parts.append((rows, output))
    return _scatter(parts, wordpieces.input_ids.shape), _predict_only


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
