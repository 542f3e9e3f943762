"""spacy-transformers' `TransformerModel` with a forward pass that prepares its batch with
array operations, and an encoder layer that reads windows packed into rows.

Same weights, settings, serialization and outputs as spacy-transformers' model (a subclass of
it, so its pipe, listeners and loading treat it as one); only the work around the encoder
differs, which dominates when the encoder is fast (a GPU, a small model):
- the wordpiece strings come from the fast tokenizer's encodings in one call per window,
  instead of `convert_ids_to_tokens` per wordpiece;
- the alignment of tokens to wordpieces and its split per doc are array operations
  (`alignment.py`) instead of Python sets and a dict of every token;
- the encoder reads the windows packed several to a row (`packing.py`), not padded;
- the encoder's shim predicts without switching the encoder between train and eval mode;
- on the CPU, the encoder predicts through its frozen TorchScript graph (`frozen_encoder.py`).
A slow (Python) tokenizer has no offsets: such a model runs spacy-transformers' own forward.
"""
from typing import Callable, Dict, List, Tuple

from spacy.tokens import Doc
from spacy_transformers.data_classes import FullTransformerBatch, HFObjects, WordpieceBatch
from spacy_transformers.layers import TransformerModel
from spacy_transformers.layers._util import replace_listener
from spacy_transformers.layers._util import replace_listener_cfg as spacy_transformers_listener_cfg
from spacy_transformers.layers.transformer_model import forward as spacy_transformers_forward
from spacy_transformers.layers.transformer_model import init, set_pytorch_transformer
from spacy_transformers.truncate import truncate_oversize_splits
from spacy_transformers.util import maybe_flush_pytorch_cache
from thinc.api import ArgsKwargs, Model, NumpyOps, xp2torch
from transformers.file_utils import ModelOutput
from transformers.tokenization_utils_fast import PreTrainedTokenizerFast

from .alignment import offset_alignment, split_by_doc
from .grouped_encoder import grouped_encoder_layer
from .shims import HFEvalModeShim


class GroupedTransformerModel(TransformerModel):
    """`TransformerModel` (spacy-transformers) whose batches are prepared with array operations
    and whose encoder predicts on windows packed into rows of `packed_row_wordpieces` (0:
    length-sorted groups instead), in calls of at most `max_batch_wordpieces` padded wordpieces
    (0: one call), through its frozen graph on the CPU if `frozen_inference`."""

    def __init__(
        self,
        name: str,
        get_spans: Callable,
        tokenizer_config: Dict,
        transformer_config: Dict,
        mixed_precision: bool,
        grad_scaler_config: Dict,
        max_batch_wordpieces: int,
        frozen_inference: bool = True,
        packed_row_wordpieces: int = 0,
    ) -> None:
        shim = HFEvalModeShim(
            HFObjects(None, None, None, dict(tokenizer_config), dict(transformer_config)),
            mixed_precision=mixed_precision,
            grad_scaler_config=dict(grad_scaler_config),
        )
        shim.frozen_inference = frozen_inference
        encoder = grouped_encoder_layer(
            shim, _encoder_inputs, _encoder_outputs, max_batch_wordpieces, packed_row_wordpieces
        )
        # What TransformerModel.__init__ sets, with this module's forward.
        Model.__init__(
            self,
            "transformer",
            forward,
            init=init,
            layers=[encoder],
            dims={"nO": None},
            attrs={
                "get_spans": get_spans,
                "name": name,
                "set_transformer": set_pytorch_transformer,
                "has_transformer": False,
                "flush_cache_chance": 0.0,
                "replace_listener": replace_listener,
                "replace_listener_cfg": replace_listener_cfg,
            },
        )
        self._settings = (
            name,
            get_spans,
            dict(tokenizer_config),
            dict(transformer_config),
            mixed_precision,
            dict(grad_scaler_config),
            max_batch_wordpieces,
            frozen_inference,
            packed_row_wordpieces,
        )

    def copy(self) -> "GroupedTransformerModel":
        """A deep copy with its own id, as `TransformerModel.copy` makes one."""
        import copy

        copied = GroupedTransformerModel(*self._settings)
        copied.dims = copy.deepcopy(self._dims)
        copied.layers[0] = copy.deepcopy(self.layers[0])
        return copied


def replace_listener_cfg(tok2vec_cfg: Dict, listener_cfg: Dict) -> Dict:
    """The config of what `nlp.replace_listeners` puts in a listener's place: as
    spacy-transformers writes it, on `spacy-secner.Tok2VecTransformer.v1`, which takes this
    model's settings (`Tok2VecTransformer.v3` rejects them, so the saved pipeline would not
    load)."""
    result = spacy_transformers_listener_cfg(tok2vec_cfg, listener_cfg)
    if result["@architectures"] == "spacy-transformers.Tok2VecTransformer.v3" and tok2vec_cfg[
        "@architectures"
    ].startswith("spacy-secner."):
        result["@architectures"] = "spacy-secner.Tok2VecTransformer.v1"
    return result


def forward(
    model: GroupedTransformerModel, docs: List[Doc], is_train: bool
) -> Tuple[FullTransformerBatch, Callable]:
    """spacy-transformers' `TransformerModel` forward pass, with its per-token Python work
    replaced by array operations; the same outputs."""
    tokenizer = model.tokenizer
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        return spacy_transformers_forward(model, docs, is_train)
    nested_spans = model.attrs["get_spans"](docs)
    flat_spans = [span for doc_spans in nested_spans for span in doc_spans]
    maybe_flush_pytorch_cache(chance=model.attrs.get("flush_cache_chance", 0))
    encoding = tokenizer(
        [span.text for span in flat_spans],
        add_special_tokens=True,
        return_attention_mask=True,
        return_offsets_mapping=True,
        return_tensors="np",
        return_token_type_ids=None,  # the model's default
        padding="longest",
    )
    wordpieces = _wordpieces(encoding, tokenizer.pad_token)
    align = offset_alignment(flat_spans, encoding["offset_mapping"])
    wordpieces, align = truncate_oversize_splits(wordpieces, align, tokenizer.model_max_length)
    model_output, backprop_encoder = model.layers[0](wordpieces, is_train)
    output = FullTransformerBatch(
        spans=nested_spans, wordpieces=wordpieces, model_output=model_output, align=align
    )
    output.cached_doc_data = split_by_doc(output)

    def backprop(d_output: FullTransformerBatch) -> List[Doc]:
        backprop_encoder(d_output.model_output)
        return docs

    return output, backprop


def _wordpieces(encoding, pad_token: str) -> WordpieceBatch:
    """`WordpieceBatch.from_batch_encoding`, with the wordpiece strings read from the fast
    tokenizer's encodings."""
    strings = [e.tokens for e in encoding.encodings]
    ops = NumpyOps()  # host arrays, as spacy-transformers keeps them
    input_ids = encoding["input_ids"]
    token_type_ids = encoding.get("token_type_ids")
    return WordpieceBatch(
        strings=strings,
        input_ids=ops.asarray(input_ids, dtype=input_ids.dtype),
        attention_mask=ops.asarray2f(encoding["attention_mask"]),
        lengths=[len(tokens) - tokens.count(pad_token) for tokens in strings],
        token_type_ids=(
            ops.asarray(token_type_ids, dtype=token_type_ids.dtype)
            if token_type_ids is not None
            else None
        ),
    )


def _encoder_inputs(model: Model, wordpieces: WordpieceBatch, is_train: bool) -> Tuple[ArgsKwargs, Callable]:
    device = model.shims[0].device
    kwargs = {
        "input_ids": xp2torch(wordpieces.input_ids, device=device),
        "attention_mask": xp2torch(wordpieces.attention_mask, device=device),
    }
    if wordpieces.token_type_ids is not None:
        kwargs["token_type_ids"] = xp2torch(wordpieces.token_type_ids, device=device)
    return ArgsKwargs(args=(), kwargs=kwargs), lambda d_inputs: []


def _encoder_outputs(model: Model, inputs_outputs: Tuple, is_train: bool) -> Tuple[ModelOutput, Callable]:
    _, model_output = inputs_outputs

    def backprop(d_model_output: ModelOutput) -> ArgsKwargs:
        return ArgsKwargs(
            args=(model_output.last_hidden_state,),
            kwargs={"grad_tensors": d_model_output.values()},
        )

    return model_output, backprop
