"""The thinc layers of `ner_crf` and of its transformer, composed by `architectures.py`."""
from .bilstm_crf import bilstm_crf_model, build_heads, has_heads, head_layers, set_tags
from .crf import crf_decode, crf_loss, crf_nll, crf_span_confidence, decode_by_sentence
from .grouped_encoder import grouping_layer, with_length_groups
from .pooling import first_or_zeros

__all__ = [
    "bilstm_crf_model",
    "build_heads",
    "crf_decode",
    "crf_loss",
    "crf_nll",
    "crf_span_confidence",
    "decode_by_sentence",
    "first_or_zeros",
    "grouping_layer",
    "has_heads",
    "head_layers",
    "set_tags",
    "with_length_groups",
]
