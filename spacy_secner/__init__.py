"""spacy-secner: named-entity recognition for cyber-threat-intelligence text in spaCy."""
from .onednn import bound_primitive_cache

# Before torch compiles its first oneDNN primitive in this process (see onednn.py).
bound_primitive_cache()

from .architectures import build_bilstm_crf_model, create_transformer_model  # noqa: E402
from .encoders import embedded_encoder  # noqa: E402
from .pipeline import CRFEntityRecognizer, make_ner_crf  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "CRFEntityRecognizer",
    "build_bilstm_crf_model",
    "create_transformer_model",
    "embedded_encoder",
    "make_ner_crf",
    "__version__",
]
