"""STIX 2.1 export of annotated docs: objects with deterministic ids and calibrated confidences,
one report per document. Needs the `stix` extra (`pip install "spacy-secner[stix]"`)."""

from .export import RunCollector, doc_to_bundle, docs_to_bundle, extract
from .mapping import ENTITY_TYPES, IOC_TYPES

__all__ = [
    "ENTITY_TYPES",
    "IOC_TYPES",
    "RunCollector",
    "doc_to_bundle",
    "docs_to_bundle",
    "extract",
]
