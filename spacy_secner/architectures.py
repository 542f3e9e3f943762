"""Registered model builders: each composes layers from `layers/`."""
from typing import Callable, List, Optional

from spacy.tokens import Doc
from spacy.util import registry
from spacy_transformers.data_classes import FullTransformerBatch
from spacy_transformers.layers import split_trf_batch, trfs2arrays
from thinc.api import Model, chain
from thinc.types import Floats2d, Ragged

from .layers import GroupedTransformerModel, bilstm_crf_model, first_or_zeros


@registry.architectures("spacy-secner.TransformerBiLSTMCRF.v1")
def build_bilstm_crf_model(
    tok2vec: Model[List[Doc], List[Floats2d]],
    *,
    hidden_size: int = 256,
    depth: int = 1,
    dropout: float = 0.0,
    constrained: bool = True,
    nO: Optional[int] = None,
) -> Model[List[Doc], List[Floats2d]]:
    """The `ner_crf` model: per-token vectors, a BiLSTM, linear emissions and a CRF.

    tok2vec (Model[List[Doc], List[Floats2d]]): One vector per spaCy token, e.g. a
        `spacy-transformers.TransformerListener.v1` (pooling `spacy-secner.reduce_first.v1`
        keeps the first wordpiece of each word, `reduce_mean.v1` averages them) or spaCy's own
        CNN tok2vec.
    hidden_size (int): LSTM units per direction.
    depth (int): Stacked BiLSTM layers; 0 puts the linear layer straight on the token vectors.
    dropout (float): Dropout before the linear layer (and between stacked LSTM layers).
    constrained (bool): Forbid invalid BIO transitions in the CRF, in training and decoding.
    nO (Optional[int]): Number of BIO tags; set by the pipe from its labels.
    RETURNS (Model[List[Doc], List[Floats2d]]): Emission scores per token, decoded by the CRF
        (`layers/crf.py`).
    """
    return bilstm_crf_model(
        tok2vec,
        hidden_size=hidden_size,
        depth=depth,
        dropout=dropout,
        constrained=constrained,
        decoder="crf",
        nO=nO,
    )


@registry.architectures("spacy-secner.TransformerSoftmax.v1")
def build_softmax_model(
    tok2vec: Model[List[Doc], List[Floats2d]],
    *,
    dropout: float = 0.0,
    nO: Optional[int] = None,
) -> Model[List[Doc], List[Floats2d]]:
    """The plain token classifier: a linear layer over the token vectors and a softmax per
    token, with no BiLSTM and no CRF (the usual Hugging Face fine-tune, as a `ner_crf` model).

    tok2vec (Model[List[Doc], List[Floats2d]]): One vector per spaCy token.
    dropout (float): Dropout before the linear layer.
    nO (Optional[int]): Number of BIO tags; set by the pipe from its labels.
    RETURNS (Model[List[Doc], List[Floats2d]]): Emission scores per token, decoded token by
        token (token cross-entropy, argmax).
    """
    return bilstm_crf_model(
        tok2vec,
        hidden_size=0,
        depth=0,
        dropout=dropout,
        constrained=False,
        decoder="softmax",
        nO=nO,
    )


@registry.architectures("spacy-secner.TransformerModel.v1")
def create_transformer_model(
    name: str,
    get_spans: Callable,
    tokenizer_config: Optional[dict] = None,
    transformer_config: Optional[dict] = None,
    mixed_precision: bool = False,
    grad_scaler_config: Optional[dict] = None,
    max_batch_wordpieces: int = 1024,
    frozen_inference: bool = True,
    packed_row_wordpieces: int = 128,
) -> Model[List[Doc], FullTransformerBatch]:
    """`spacy-transformers.TransformerModel.v3` (same settings, weights, serialization and
    outputs), whose batches are prepared with array operations (`layers/transformer_model.py`)
    and whose encoder reads the windows of a batch packed several to a row of
    `packed_row_wordpieces` (`layers/packing.py`: each window keeps its positions and attends
    only to itself; 0 pads them instead, in length-sorted groups when predicting), in calls of
    at most `max_batch_wordpieces` padded wordpieces when predicting
    (`layers/grouped_encoder.py`; 0: one call; training is one call). With
    `frozen_inference`, the encoder predicts on the CPU through a frozen TorchScript graph of
    itself (`layers/frozen_encoder.py`; training and other devices run it eagerly). Both give
    the same outputs up to float32 rounding, faster.
    """
    return GroupedTransformerModel(
        name,
        get_spans,
        tokenizer_config or {},
        transformer_config or {},
        mixed_precision,
        grad_scaler_config or {},
        max_batch_wordpieces,
        frozen_inference,
        packed_row_wordpieces,
    )


@registry.architectures("spacy-secner.Tok2VecTransformer.v1")
def create_tok2vec_transformer(
    name: str,
    get_spans: Callable,
    tokenizer_config: Optional[dict],
    pooling: Model[Ragged, Floats2d],
    grad_factor: float = 1.0,
    transformer_config: Optional[dict] = None,
    mixed_precision: bool = False,
    grad_scaler_config: Optional[dict] = None,
    max_batch_wordpieces: int = 1024,
    frozen_inference: bool = True,
    packed_row_wordpieces: int = 128,
) -> Model[List[Doc], List[Floats2d]]:
    """`spacy-transformers.Tok2VecTransformer.v3` on `spacy-secner.TransformerModel.v1`: a
    component's own copy of the transformer, as `nlp.replace_listeners` makes it from a
    listener of this package's transformer (the same layers as the listener's model with the
    transformer in its place, so the saved weights load into it)."""
    transformer = create_transformer_model(
        name,
        get_spans,
        tokenizer_config,
        transformer_config,
        mixed_precision,
        grad_scaler_config,
        max_batch_wordpieces,
        frozen_inference,
        packed_row_wordpieces,
    )
    return chain(chain(transformer, split_trf_batch()), trfs2arrays(pooling, grad_factor))


@registry.layers("spacy-secner.reduce_first.v1")
def reduce_first_or_zeros() -> Model[Ragged, Floats2d]:
    """Pool each token's wordpieces to the first one, and a token with none to zeros
    (whitespace tokens of raw text get no wordpiece; thinc's `reduce_first.v1` rejects them)."""
    return first_or_zeros()
