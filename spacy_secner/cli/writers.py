"""Writing the entities `secner annotate` finds: JSONL, CSV, a displaCy HTML report or STIX 2.1
bundles.

Besides the entities, JSONL and CSV carry the indicators of compromise of `doc.spans["iocs"]`
where the pipeline has `cti_iocs`. A doc read from a PDF carries `doc.user_data["page_starts"]`
and every entity and indicator of it gets its page; `doc.user_data["source"]` names the file.
"""

import csv
import html
import json
import unicodedata
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, TextIO

from spacy import displacy
from spacy.displacy.templates import TPL_ENT
from spacy.tokens import Doc, Span

from ..atomic import atomic_output
from ..documents import page_at
from .escapes import visible, visible_with_offsets
from .readers import Failure

# A colour per DNRTI label for the HTML report; other labels get displaCy's grey.
DNRTI_COLORS: Dict[str, str] = {
    "Area": "#aa9cfc",
    "Exp": "#ff6b6b",
    "Features": "#a5d6a7",
    "HackOrg": "#ff9561",
    "Idus": "#ffd54f",
    "OffAct": "#f48fb1",
    "Org": "#80cbc4",
    "Purp": "#b0bec5",
    "SamFile": "#ce93d8",
    "SecTeam": "#7aecec",
    "Time": "#d7ccc8",
    "Tool": "#90caf9",
    "Way": "#e6ee9c",
}


IOCS_KEY = "iocs"
# A cell a spreadsheet would read as a formula starts with one of these (or a full-width form,
# `＝`, which spreadsheets in East Asian locales take as `=`: compared after NFKC).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def entity_records(doc: Doc) -> List[Dict[str, Any]]:
    """The entities of a doc: label, text, start and end character offsets into `doc.text`,
    and confidence (the `ner_crf` marginal probability of the span, None if not set); and the
    page, for a doc read from a PDF."""
    has_confidence = Span.has_extension("confidence")
    pages = doc.user_data.get("page_starts")
    records = []
    for ent in doc.ents:
        confidence = getattr(ent._, "confidence", None) if has_confidence else None
        record = {
            "label": ent.label_,
            "text": ent.text,
            "start": ent.start_char,
            "end": ent.end_char,
            "confidence": None if confidence is None else round(float(confidence), 4),
        }
        if pages:
            record["page"] = page_at(pages, ent.start_char)
        records.append(record)
    return records


def ioc_records(doc: Doc) -> Optional[List[Dict[str, Any]]]:
    """The indicators of compromise of a doc: label, text, value (refanged, normalised), start
    and end character offsets into `doc.text`; and the page, for a doc read from a PDF. None
    when the pipeline set no "iocs" group (it has no `cti_iocs`)."""
    if IOCS_KEY not in doc.spans:
        return None
    pages = doc.user_data.get("page_starts")
    has_value = Span.has_extension("ioc_value")
    records = []
    for span in doc.spans[IOCS_KEY]:
        record = {
            "label": span.label_,
            "text": span.text,
            "value": getattr(span._, "ioc_value", None) if has_value else None,
            "start": span.start_char,
            "end": span.end_char,
        }
        if pages:
            record["page"] = page_at(pages, span.start_char)
        records.append(record)
    return records


def source_of(doc_id: str, doc: Doc) -> str:
    """Where a doc was read (file, `file:line`, `<stdin>`); its id if it does not say."""
    return str(doc.user_data.get("source", doc_id))


def document_record(doc_id: str, doc: Doc, *, keep_text: bool = False) -> Dict[str, Any]:
    """What JSONL and CSV write for a document, made where the doc was annotated (here or in a
    Ray actor): {"id", "source", "entities", "iocs"?, "text"?}; "iocs" only where the pipeline
    sets the group, "text" with `keep_text`."""
    record: Dict[str, Any] = {
        "id": doc_id,
        "source": source_of(doc_id, doc),
        "entities": entity_records(doc),
    }
    iocs = ioc_records(doc)
    if iocs is not None:
        record["iocs"] = iocs
    if keep_text:
        record["text"] = doc.text
    return record


class JsonlWriter:
    """One line per document: {"id", "source", "entities": [{label, text, start, end,
    confidence, page?}], "iocs": [{label, text, value, start, end, page?}], "text"?}; "iocs"
    only where the pipeline finds them, "text" (what the offsets point into) with `keep_text`."""

    def __init__(self, out: TextIO, *, keep_text: bool = False) -> None:
        self.out = out
        self.keep_text = keep_text

    def write(self, doc_id: str, doc: Doc) -> None:
        self.write_record(document_record(doc_id, doc, keep_text=self.keep_text))

    def write_record(self, record: Dict[str, Any]) -> None:
        """Write a `document_record`."""
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.out.flush()


class CsvWriter:
    """One row per entity, then one per indicator of compromise: doc_id, label, text, start,
    end, confidence (empty if unknown or an indicator), kind ("entity" or "ioc"), value (the
    refanged indicator), page (PDF only). Reports may be written by an attacker: a text cell
    that a spreadsheet would read as a formula (`=`, `+`, `-`, `@`, their full-width forms...)
    starts with `'`, and characters that hide text (`escapes.HIDDEN`) are written as escapes."""

    HEADER = ("doc_id", "label", "text", "start", "end", "confidence", "kind", "value", "page")

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.writer = csv.writer(out, quoting=csv.QUOTE_ALL)
        self.writer.writerow(self.HEADER)

    def write(self, doc_id: str, doc: Doc) -> None:
        self.write_record(document_record(doc_id, doc))

    def write_record(self, record: Dict[str, Any]) -> None:
        """Write the rows of a `document_record`."""
        rows = [{**ent, "kind": "entity"} for ent in record["entities"]]
        rows += [{**ioc, "kind": "ioc"} for ioc in record.get("iocs") or []]
        for row in rows:
            cells = [record["id"], *(row.get(key) for key in self.HEADER[1:])]
            self.writer.writerow([_cell(value) for value in cells])

    def close(self) -> None:
        self.out.flush()


class HtmlWriter:
    """A displaCy entity page, one figure per document under its id; hovering over an entity
    shows its confidence. Markup in ids and texts is shown as text, and characters that hide
    text (`escapes.HIDDEN`) as escapes. The page is rendered on `close`, so it holds the texts until
    then."""

    def __init__(self, out: TextIO, *, colors: Optional[Dict[str, str]] = None) -> None:
        self.out = out
        self.colors = dict(DNRTI_COLORS if colors is None else colors)
        self.parsed: List[Dict[str, Any]] = []

    def write(self, doc_id: str, doc: Doc) -> None:
        self.write_record(document_record(doc_id, doc, keep_text=True))

    def write_record(self, record: Dict[str, Any]) -> None:
        """Add a `document_record` made with its text (`keep_text`)."""
        text, moved = visible_with_offsets(record["text"])
        ents = []
        for ent in record["entities"]:
            tooltip = "" if ent["confidence"] is None else f"confidence {ent['confidence']:.2f}"
            ents.append(
                {
                    "start": moved(ent["start"]),
                    "end": moved(ent["end"]),
                    "label": html.escape(visible(ent["label"])),
                    "params": {"tooltip": tooltip},
                }
            )
        # displaCy escapes the text, but writes titles and labels into the markup as they are.
        title = html.escape(visible(record["id"]))
        self.parsed.append({"text": text, "ents": ents, "title": title})

    def close(self) -> None:
        template = TPL_ENT.replace(
            '<mark class="entity"', '<mark class="entity" title="{tooltip}"', 1
        )
        options = {"colors": self.colors, "template": template}
        markup = displacy.render(
            self.parsed, style="ent", page=True, manual=True, jupyter=False, options=options
        )
        n = len(self.parsed)
        title = f"secner annotate: {n} document{'' if n == 1 else 's'}"
        # displaCy's page declares no charset: a browser opening the file would guess one.
        head = f'<head>\n        <meta charset="utf-8">\n        <title>{title}</title>'
        markup = markup.replace("<head>\n        <title>displaCy</title>", head, 1)
        self.out.write(markup + "\n")
        self.out.flush()


def neutralize_cell(value: str) -> str:
    """A text cell that a spreadsheet shows as text: one that starts like a formula gets a
    leading single quote, as OWASP recommends against CSV injection."""
    return "'" + value if unicodedata.normalize("NFKC", value[:1]) in FORMULA_STARTS else value


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return neutralize_cell(visible(value)) if isinstance(value, str) else value



class WriteError(ValueError):
    """A document its writer could not write, having written nothing of it: the document
    fails, and the run goes on."""


class StixWriter:
    """STIX 2.1 bundles (docs/stix.md): by default one compact bundle per document, one per
    line as the documents come; with `per_run`, one indented bundle for all of them, written on
    `close` (their objects are held until then, not their texts). Needs the `stix` extra.

    indicators (bool): Also an `indicator` per observable, linked to it by `based-on`.
    """

    def __init__(self, out: TextIO, *, per_run: bool = False, indicators: bool = False) -> None:
        # Imported here: stix2 is an extra, and only this format needs it.
        from ..stix import export

        self.export = export
        self.out = out
        self.indicators = indicators
        # `created` (and `valid_from`) of every object: the start of the run.
        self.timestamp = export.now()
        self.modified = self.timestamp
        self.collector = export.RunCollector(indicators=indicators) if per_run else None

    def write(self, doc_id: str, doc: Doc) -> None:
        """RAISES WriteError if the document's objects cannot be built (nothing is written)."""
        export = self.export
        # Each document's bundle is a new version of the objects it shares with earlier ones
        # (their confidence and name may differ): STIX tells versions apart by `modified`,
        # so it grows with every document, by at least the millisecond STIX times hold.
        self.modified = max(export.now(), self.modified + timedelta(milliseconds=1))
        try:
            found, objects = export.document_objects(
                doc,
                doc_id,
                timestamp=self.timestamp,
                modified=None if self.collector is not None else self.modified,
                indicators=self.indicators,
            )
            line = None if self.collector is not None else export.make_bundle(objects).serialize()
        except Exception as err:
            raise WriteError(f"STIX export failed: {type(err).__name__}: {err}") from err
        if self.collector is not None:
            self.collector.add_extraction(doc_id, doc.text, found)
        else:
            self.out.write(line + "\n")

    def close(self) -> None:
        if self.collector is not None:
            bundle = self.collector.bundle(timestamp=self.timestamp)
            self.out.write(bundle.serialize(pretty=True) + "\n")
        self.out.flush()


WRITERS = {"jsonl": JsonlWriter, "csv": CsvWriter, "html": HtmlWriter, "stix": StixWriter}


def write_failures(path: Path, failures: Iterable[Failure]) -> None:
    """The failed and skipped inputs as JSONL: {"id", "status": "failed"|"skipped", "reason"}."""
    with atomic_output(path) as out:
        for failure in failures:
            out.write(json.dumps(failure.to_json(), ensure_ascii=False) + "\n")
