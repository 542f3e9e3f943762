"""spacy-secner: named-entity recognition for cyber-threat-intelligence text in spaCy."""
from .architectures import build_bilstm_crf_model, create_transformer_model
from .encoders import embedded_encoder
from .pipeline import CRFEntityRecognizer, make_ner_crf

__version__ = "0.1.0"
__all__ = [
    "CRFEntityRecognizer",
    "build_bilstm_crf_model",
    "create_transformer_model",
    "embedded_encoder",
    "make_ner_crf",
    "__version__",
]
