"""The transformer model: spacy-transformers' own, reading its windows in length-sorted groups."""
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from spacy.tokens import Doc
from spacy.util import registry
from spacy_transformers.data_classes import FullTransformerBatch, WordpieceBatch
from spacy_transformers.layers import TransformerModel
from thinc.api import Model
from transformers.file_utils import ModelOutput

from .batching import padded_batches

# The encoder outputs this knows how to put back in place: per wordpiece (batch, length, ...),
# a tuple of those (one per layer), or one vector per window (batch, width).
_PER_WORDPIECE = {"last_hidden_state"}
_PER_WORDPIECE_TUPLES = {"hidden_states"}
_PER_WINDOW = {"pooler_output"}


@registry.architectures("spacy-secner.TransformerModel.v1")
def create_transformer_model(
    name: str,
    get_spans: Callable,
    tokenizer_config: dict = {},
    transformer_config: dict = {},
    mixed_precision: bool = False,
    grad_scaler_config: dict = {},
    max_batch_wordpieces: int = 1024,
) -> Model[List[Doc], FullTransformerBatch]:
    """`spacy-transformers.TransformerModel.v3` (same settings, weights and serialization), whose
    prediction runs the encoder on the windows of a batch sorted by wordpiece length, in groups
    of at most `max_batch_wordpieces` padded wordpieces.

    spacy-transformers pads all the windows of a call to the longest one. Sentence windows of
    whole reports vary a lot in length: padding to the longest made the encoder read 1.6
    wordpieces for every real one on the benchmark's documents. The outputs are put back in
    the original order and padded shape, so everything downstream sees what v3 gives; only
    the padded positions hold zeros instead of the encoder's values for padding. Training
    (`is_train`) is unchanged: one call, as in v3. 0 turns the grouping off.
    The setting is read at each call, from `model.layers[0].attrs["max_batch_wordpieces"]`.
    """
    model = TransformerModel(
        name, get_spans, tokenizer_config, transformer_config, mixed_precision, grad_scaler_config
    )
    encoder = model.layers[0]
    encoder.attrs["max_batch_wordpieces"] = max_batch_wordpieces
    # v3's forward calls this layer once with every window; the layer's serialization, shim and
    # weights stay v3's, only its forward gets the grouping around it.
    encoder._func = partial(length_sorted_forward, encoder._func)
    return model


def length_sorted_forward(
    encode: Callable, model: Model, wordpieces: WordpieceBatch, is_train: bool
) -> Tuple[ModelOutput, Callable]:
    """Run `encode` (the HF wrapper's forward) on length-sorted groups of `wordpieces` when
    predicting, and return its outputs as one call over all of them would."""
    max_padded = model.attrs.get("max_batch_wordpieces", 0)
    if is_train or max_padded <= 0 or len(wordpieces) < 2:
        return encode(model, wordpieces, is_train)
    groups = padded_batches(wordpieces.lengths, max_padded)
    if len(groups) == 1:
        return encode(model, wordpieces, is_train)
    parts = []
    for rows in groups:
        output, _ = encode(model, _take_rows(wordpieces, rows), False)
        if not set(output.keys()) <= _PER_WORDPIECE | _PER_WORDPIECE_TUPLES | _PER_WINDOW:
            # e.g. attentions (batch, heads, length, length): not worth regrouping here.
            return encode(model, wordpieces, is_train)
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
