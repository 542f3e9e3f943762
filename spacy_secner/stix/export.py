"""Turn annotated docs into STIX 2.1 objects, reports and bundles (with the `stix2` library)."""

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Dict, Iterable, List, Optional, Tuple

import stix2
from spacy.tokens import Doc, Span
from stix2.exceptions import STIXError

from . import mapping
from .ids import name_key, stix_id, text_digest

IOC_GROUP = "iocs"
# Domain objects, built once their confidence is known (the highest over their mentions).
SDO_CLASSES = {
    "attack-pattern": stix2.AttackPattern,
    "identity": stix2.Identity,
    "indicator": stix2.Indicator,
    "intrusion-set": stix2.IntrusionSet,
    "location": stix2.Location,
    "malware": stix2.Malware,
    "relationship": stix2.Relationship,
    "tool": stix2.Tool,
    "vulnerability": stix2.Vulnerability,
}


@dataclass
class Entry:
    """One STIX object of a document or a run: an observable (built, as its id comes from its
    properties) or a domain object's properties, with the best confidence of its mentions."""

    obj: Optional[Any] = None
    props: Dict[str, Any] = field(default_factory=dict)
    confidence: Optional[float] = None

    def take(self, confidence: Optional[float]) -> None:
        if confidence is not None:
            self.confidence = max(confidence, self.confidence or 0.0)


@dataclass
class Extraction:
    """The objects found in one document (or several, merged), in order of first mention, and
    the mentions that are no object of their own, by label."""

    entries: Dict[str, Entry] = field(default_factory=dict)
    leftovers: Dict[str, List[str]] = field(default_factory=dict)

    def add(self, object_id: str, confidence: Optional[float], *, obj=None, **props) -> str:
        entry = self.entries.setdefault(object_id, Entry(obj=obj, props=props))
        entry.take(confidence)
        return object_id

    def leave(self, label: str, text: str) -> None:
        texts = self.leftovers.setdefault(label, [])
        if text not in texts:
            texts.append(text)

    def merge(self, other: "Extraction") -> None:
        for object_id, entry in other.entries.items():
            self.add(object_id, entry.confidence, obj=entry.obj, **entry.props)
        for label, texts in other.leftovers.items():
            for text in texts:
                self.leave(label, text)


def extract(doc: Doc, *, indicators: bool = False) -> Extraction:
    """The STIX objects of a doc's entities (`doc.ents`) and indicator spans
    (`doc.spans["iocs"]`, if any), mapped as in `mapping.ENTITY_TYPES` and `mapping.IOC_TYPES`.

    indicators (bool): Also an `indicator` for each observable, linked to it by a `based-on`
        relationship.
    """
    found = Extraction()
    observables: List[Tuple[str, Optional[float]]] = []
    ioc_spans = list(doc.spans.get(IOC_GROUP, []))
    ioc_ranges = {(span.start_char, span.end_char) for span in ioc_spans}
    for ent in doc.ents:
        text = mapping.clean(ent.text)
        if not text:
            continue
        if ent.label_ == "SamFile" and (ent.start_char, ent.end_char) in ioc_ranges:
            continue  # the indicator span's observable (refanged, typed) stands for it
        confidence = _confidence(ent)
        try:
            object_id = _entity_object(found, ent.label_, text, confidence)
        except (STIXError, ValueError):
            object_id = None  # a name the library rejects stays a mention in the description
        if object_id is None:
            found.leave(ent.label_, text)
        elif object_id.split("--")[0] in mapping.OBSERVABLE_TYPES:
            observables.append((object_id, confidence))
    for span in ioc_spans:
        value = _ioc_value(span)
        try:
            object_id = _ioc_object(found, span.label_, value)
        except (STIXError, ValueError):
            object_id = None
        if object_id is None:
            found.leave(span.label_, value)
        elif object_id.split("--")[0] in mapping.OBSERVABLE_TYPES:
            observables.append((object_id, None))
    if indicators:
        for object_id, confidence in dict.fromkeys(observables):
            _add_indicator(found, found.entries[object_id].obj, confidence)
    return found


def _entity_object(
    found: Extraction, label: str, text: str, confidence: Optional[float]
) -> Optional[str]:
    """Add the object an entity mention names; RETURNS its id, or None if it names none."""
    stix_type = mapping.ENTITY_TYPES.get(label)
    if stix_type in ("intrusion-set", "tool", "file") or label in ("Org", "SecTeam"):
        if not mapping.is_name(text):
            return None
    if stix_type == "intrusion-set":
        return found.add(stix_id("intrusion-set", name=name_key(text)), confidence, name=text)
    if stix_type == "tool":
        kind = "malware" if mapping.is_malware(text) else "tool"
        extra = {"is_family": True} if kind == "malware" else {}
        return found.add(stix_id(kind, name=name_key(text)), confidence, name=text, **extra)
    if stix_type == "file":
        obj = stix2.File(name=text)
        return found.add(obj.id, confidence, obj=obj)
    if stix_type == "vulnerability":
        cve = mapping.cve_id(text)
        return None if cve is None else _add_vulnerability(found, cve, confidence)
    if stix_type == "location":
        resolved = mapping.location(text)
        if resolved is None:
            return None
        name, where = resolved
        kind = "Country" if "country" in where else "Region"
        object_id = stix_id("location", name=name_key(name), x_opencti_location_type=kind)
        return found.add(object_id, confidence, name=name, **where)
    if stix_type == "identity":
        identity_class = "class" if label == "Idus" else "organization"
        object_id = stix_id("identity", name=name_key(text), identity_class=identity_class)
        extra = {"sectors": mapping.sectors(text)} if label == "Idus" else {}
        extra = {k: v for k, v in extra.items() if v}
        return found.add(object_id, confidence, name=text, identity_class=identity_class, **extra)
    if stix_type == "attack-pattern":
        resolved = mapping.technique(text)
        if resolved is None:
            return None
        technique_id, name = resolved
        reference = {
            "source_name": "mitre-attack",
            "external_id": technique_id,
            "url": f"https://attack.mitre.org/techniques/{technique_id.replace('.', '/')}/",
        }
        object_id = stix_id("attack-pattern", x_mitre_id=technique_id)
        return found.add(object_id, confidence, name=name, external_references=[reference])
    return None


def _ioc_object(found: Extraction, label: str, value: str) -> Optional[str]:
    """Add the observable (or vulnerability) an indicator span holds; RETURNS its id."""
    stix_type = mapping.IOC_TYPES.get(label)
    if stix_type is None or not value:
        return None
    if label == "cve":
        cve = mapping.cve_id(value)
        return None if cve is None else _add_vulnerability(found, cve, None)
    if label in mapping.HASH_NAMES:
        obj = stix2.File(hashes={mapping.HASH_NAMES[label]: value})
    elif label == "file_path":
        path = (
            PureWindowsPath(value)
            if "\\" in value or re.match(r"[A-Za-z]:", value)
            else (PurePosixPath(value))
        )
        parent = str(path.parent) if path.parent != path and str(path.parent) != "." else ""
        if not path.name or value.endswith(("/", "\\")):
            # A root, or a path written as a folder (`C:\\Temp\\`, `/var/tmp/`).
            obj = stix2.Directory(path=str(path))
        elif parent:
            directory = stix2.Directory(path=parent)
            found.add(directory.id, None, obj=directory)
            obj = stix2.File(name=path.name, parent_directory_ref=directory.id)
        else:
            obj = stix2.File(name=path.name)
    elif label == "registry_key":
        obj = stix2.WindowsRegistryKey(key=mapping.registry_key(value))
    else:
        obj = _network_object(stix_type, value)
        if obj is None:
            return None
        if obj.type != "url" and obj.value != value:
            found.leave(label, value)  # with the port or path, which the observable lacks
    return found.add(obj.id, None, obj=obj)


def _network_object(stix_type: str, value: str) -> Optional[Any]:
    """The observable of an address, domain, URL or email value, holding what STIX allows:
    a URL as a URI (percent-encoded where it must be); the host of a URL without a scheme and
    an address or domain without its port (a `network-traffic` object would need a protocol
    the report does not give); None for a host name STIX rejects."""
    if stix_type == "url":
        url = mapping.uri(value)
        if url is not None:
            return stix2.URL(value=url)
        value = mapping.host(value)
        stix_type = "ipv4-addr" if mapping.is_ipv4(value) else "domain-name"
    elif stix_type in ("ipv4-addr", "domain-name"):
        value = mapping.host(value)
    if stix_type == "domain-name" and not mapping.is_hostname(value):
        return None
    cls = {
        "ipv4-addr": stix2.IPv4Address,
        "ipv6-addr": stix2.IPv6Address,
        "domain-name": stix2.DomainName,
        "url": stix2.URL,
        "email-addr": stix2.EmailAddress,
    }[stix_type]
    return cls(value=value)


def _add_vulnerability(found: Extraction, cve: str, confidence: Optional[float]) -> str:
    reference = {"source_name": "cve", "external_id": cve}
    object_id = stix_id("vulnerability", name=name_key(cve))
    return found.add(object_id, confidence, name=cve, external_references=[reference])


def _add_indicator(found: Extraction, observable: Any, confidence: Optional[float]) -> None:
    pattern = indicator_pattern(observable, found)
    if pattern is None:
        return
    indicator_id = stix_id("indicator", pattern=pattern)
    name = next(
        (observable.get(k) for k in ("value", "name", "key", "path") if k in observable), None
    ) or next(iter(observable.get("hashes", {}).values()), observable.id)
    found.add(indicator_id, confidence, name=name, pattern=pattern, pattern_type="stix")
    relationship_id = stix_id(
        "relationship",
        relationship_type="based-on",
        source_ref=indicator_id,
        target_ref=observable.id,
    )
    found.add(
        relationship_id,
        None,
        relationship_type="based-on",
        source_ref=indicator_id,
        target_ref=observable.id,
    )


def indicator_pattern(observable: Any, found: Extraction) -> Optional[str]:
    """The STIX pattern that matches an observable, or None for a type without one."""
    kind = observable.type
    if kind in ("ipv4-addr", "ipv6-addr", "domain-name", "url", "email-addr"):
        return f"[{kind}:value = {_quote(observable.value)}]"
    if kind == "windows-registry-key":
        return f"[windows-registry-key:key = {_quote(observable.key)}]"
    if kind == "directory":
        return f"[directory:path = {_quote(observable.path)}]"
    if kind == "file":
        terms = [
            f"file:hashes.{_quote(k)} = {_quote(v)}"
            for k, v in observable.get("hashes", {}).items()
        ]
        if "name" in observable:
            terms.append(f"file:name = {_quote(observable.name)}")
        if "parent_directory_ref" in observable:
            path = found.entries[observable.parent_directory_ref].obj.path
            terms.append(f"file:parent_directory_ref.path = {_quote(path)}")
        return f"[{' AND '.join(terms)}]"
    return None


def _quote(value: str) -> str:
    """A string literal of STIX patterning: single quotes, with \\ and ' escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _confidence(span: Span) -> Optional[float]:
    value = getattr(span._, "confidence", None) if Span.has_extension("confidence") else None
    return None if value is None else float(value)


def _ioc_value(span: Span) -> str:
    value = getattr(span._, "ioc_value", None) if Span.has_extension("ioc_value") else None
    return value or span.text


def stix_confidence(confidence: Optional[float]) -> Optional[int]:
    """A confidence in [0, 1] as STIX's integer 0-100 scale."""
    if confidence is None:
        return None
    return int(min(100, max(0, round(100 * confidence))))


def build_objects(
    found: Extraction, *, timestamp: datetime, modified: Optional[datetime] = None
) -> List[Any]:
    """The stix2 objects of an extraction, each domain object with its confidence, created at
    `timestamp` and modified at `modified` (by default the same)."""
    objects = []
    for object_id, entry in found.entries.items():
        if entry.obj is not None:
            objects.append(entry.obj)
            continue
        stix_type = object_id.split("--")[0]
        props = dict(
            entry.props, id=object_id, created=timestamp, modified=modified or timestamp
        )
        if stix_type == "indicator":
            props["valid_from"] = timestamp
        confidence = stix_confidence(entry.confidence)
        if confidence is not None:
            props["confidence"] = confidence
        objects.append(SDO_CLASSES[stix_type](**props))
    return objects


def build_report(
    digest: str,
    name: str,
    object_refs: List[str],
    leftovers: Dict[str, List[str]],
    *,
    timestamp: datetime,
    modified: Optional[datetime] = None,
) -> Optional[stix2.Report]:
    """The report of one document, its id from the SHA-256 of its text, created at `timestamp`
    and modified and published at `modified` (by default the same); None without objects (a
    STIX report must refer to at least one)."""
    if not object_refs:
        return None
    props: Dict[str, Any] = {}
    if leftovers:
        lines = [f"- {label}: {'; '.join(texts)}" for label, texts in leftovers.items()]
        props["description"] = "Also mentioned:\n" + "\n".join(lines)
    return stix2.Report(
        id=stix_id("report", text_sha256=digest),
        name=name,
        published=modified or timestamp,
        created=timestamp,
        modified=modified or timestamp,
        report_types=["threat-report"],
        object_refs=object_refs,
        **props,
    )


def now() -> datetime:
    """The current UTC time, to the millisecond (STIX timestamps)."""
    stamp = datetime.now(timezone.utc)
    return stamp.replace(microsecond=stamp.microsecond // 1000 * 1000)


def doc_to_bundle(
    doc: Doc,
    *,
    name: Optional[str] = None,
    timestamp: Optional[datetime] = None,
    indicators: bool = False,
) -> stix2.Bundle:
    """One STIX 2.1 bundle for one annotated doc: its objects and a `report` whose
    `object_refs` list all of them. A doc with nothing to export gives an empty bundle.

    name (Optional[str]): The report's name; by default the text's first 80 characters.
    timestamp (Optional[datetime]): `created`, `modified`, `published` and `valid_from` of the
        objects; now by default. Ids do not depend on it.
    indicators (bool): Also an `indicator` per observable, linked by `based-on`.
    """
    name = name or default_name(doc.text)
    _, objects = document_objects(doc, name, timestamp=timestamp or now(), indicators=indicators)
    return make_bundle(objects)


def document_objects(
    doc: Doc,
    name: str,
    *,
    timestamp: datetime,
    modified: Optional[datetime] = None,
    indicators: bool = False,
) -> Tuple[Extraction, List[Any]]:
    """A doc's extraction and its built objects, its report (if any) last; `timestamp` and
    `modified` as for `build_objects`."""
    found = extract(doc, indicators=indicators)
    objects = build_objects(found, timestamp=timestamp, modified=modified)
    report = build_report(
        text_digest(doc.text),
        name,
        list(found.entries),
        found.leftovers,
        timestamp=timestamp,
        modified=modified,
    )
    if report is not None:
        objects.append(report)
    return found, objects


def docs_to_bundle(
    docs: Iterable[Tuple[str, Doc]],
    *,
    timestamp: Optional[datetime] = None,
    indicators: bool = False,
) -> stix2.Bundle:
    """One STIX 2.1 bundle for several (name, doc) pairs: every object once (with its best
    confidence over all the docs) and one report per doc that has objects."""
    collector = RunCollector(indicators=indicators)
    for name, doc in docs:
        collector.add(name, doc)
    return collector.bundle(timestamp=timestamp or now())


class RunCollector:
    """Gathers the objects of many docs for one bundle, holding no texts."""

    def __init__(self, *, indicators: bool = False) -> None:
        self.indicators = indicators
        self.found = Extraction()
        self.reports: List[Tuple[str, str, List[str], Dict[str, List[str]]]] = []

    def add(self, name: str, doc: Doc) -> None:
        self.add_extraction(name, doc.text, extract(doc, indicators=self.indicators))

    def add_extraction(self, name: str, text: str, found: Extraction) -> None:
        """Add a document's extraction (from `extract` with this collector's `indicators`)."""
        self.found.merge(found)
        self.reports.append((text_digest(text), name, list(found.entries), found.leftovers))

    def bundle(self, *, timestamp: datetime) -> stix2.Bundle:
        objects = build_objects(self.found, timestamp=timestamp)
        seen = set()
        for digest, name, refs, leftovers in self.reports:
            report = build_report(digest, name, refs, leftovers, timestamp=timestamp)
            if report is not None and report.id not in seen:
                seen.add(report.id)
                objects.append(report)
        return make_bundle(objects)


def make_bundle(objects: List[Any]) -> stix2.Bundle:
    """A bundle whose id follows from the ids of its objects."""
    bundle_id = stix_id("bundle", object_refs=sorted(o.id for o in objects))
    return stix2.Bundle(objects=objects, id=bundle_id)


def default_name(text: str, length: int = 80) -> str:
    name = mapping.clean(text)
    return name if len(name) <= length else name[: length - 1] + "…"
