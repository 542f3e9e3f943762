"""The thinc layers of `ner_crf` and of its transformer, composed by `architectures.py`."""
from .bilstm_crf import bilstm_crf_model, build_heads, has_heads, head_layers, set_tags
from .crf import DocEntities, crf_decode, crf_loss, crf_nll, crf_span_confidence
from .crf import decode_by_sentence, decode_entities
from .grouped_encoder import grouped_encoder_layer, grouping_layer
from .pooling import first_or_zeros
from .shims import EvalModeShim, HFEvalModeShim
from .transformer_model import GroupedTransformerModel

__all__ = [
    "DocEntities",
    "EvalModeShim",
    "GroupedTransformerModel",
    "HFEvalModeShim",
    "bilstm_crf_model",
    "build_heads",
    "crf_decode",
    "crf_loss",
    "crf_nll",
    "crf_span_confidence",
    "decode_by_sentence",
    "decode_entities",
    "first_or_zeros",
    "grouped_encoder_layer",
    "grouping_layer",
    "has_heads",
    "head_layers",
    "set_tags",
]
