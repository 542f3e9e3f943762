"""Deterministic STIX ids: the same entity gets the same id in every run and every report.

An id is `<type>--<UUIDv5>` of the canonical JSON (RFC 8785, as STIX 2.1 uses for observables)
of the properties that make the object what it is, in STIX's own namespace. For the domain
objects these are the properties OpenCTI derives its ids from (the name, lower-cased and
trimmed, and the identity class or location type), so a platform that deduplicates on ids
recognises an entity it already has. Observables take the ids the `stix2` library computes,
which follow the specification's rules for each observable type.
"""

import hashlib
import uuid
from typing import Any

from stix2.canonicalization.Canonicalize import canonicalize

# The namespace STIX 2.1 defines for deterministic observable ids (section 2.9).
STIX_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")


def stix_id(stix_type: str, **properties: Any) -> str:
    """`<stix_type>--<UUIDv5>` of the canonical JSON of `properties`."""
    data = canonicalize(properties, utf8=False)
    return f"{stix_type}--{uuid.uuid5(STIX_NAMESPACE, data)}"


def name_key(name: str) -> str:
    """A name as it enters an id: lower-cased and trimmed."""
    return name.lower().strip()


def text_digest(text: str) -> str:
    """SHA-256 of a document's text (UTF-8), the basis of its report's id."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
