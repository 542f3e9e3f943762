"""Writing the entities `secner annotate` finds: JSONL, CSV or a displaCy HTML report."""
import csv
import html
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, TextIO

from spacy import displacy
from spacy.displacy.templates import TPL_ENT
from spacy.tokens import Doc, Span

from ..atomic import atomic_output
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


def entity_records(doc: Doc) -> List[Dict[str, Any]]:
    """The entities of a doc: label, text, start and end character offsets into `doc.text`,
    and confidence (the `ner_crf` marginal probability of the span, None if not set)."""
    has_confidence = Span.has_extension("confidence")
    records = []
    for ent in doc.ents:
        confidence = getattr(ent._, "confidence", None) if has_confidence else None
        records.append(
            {
                "label": ent.label_,
                "text": ent.text,
                "start": ent.start_char,
                "end": ent.end_char,
                "confidence": None if confidence is None else round(float(confidence), 4),
            }
        )
    return records


def document_record(doc_id: str, doc: Doc, *, with_text: bool = False) -> Dict[str, Any]:
    """What the writers write of one document: {"id", "entities"}, and "text" if asked for."""
    record: Dict[str, Any] = {"id": doc_id, "entities": entity_records(doc)}
    if with_text:
        record["text"] = doc.text
    return record


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, CSV injection).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def neutralize_cell(value: str) -> str:
    """A text cell that a spreadsheet shows as text: one that starts like a formula gets a
    leading single quote, as OWASP recommends against CSV injection."""
    return "'" + value if value.startswith(FORMULA_TRIGGERS) else value


class JsonlWriter:
    """One line per document: {"id": ..., "entities": [{label, text, start, end, confidence}]}."""

    needs_text = False

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, doc_id: str, doc: Doc) -> None:
        self.write_record(document_record(doc_id, doc))

    def write_record(self, record: Dict[str, Any]) -> None:
        record = {"id": record["id"], "entities": record["entities"]}
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.out.flush()


class CsvWriter:
    """One row per entity: doc_id, label, text, start, end, confidence (empty if unknown).

    Every field is quoted, and the text fields (doc_id, label, text), which come from the input
    and may have been written by an attacker, are neutralized when a spreadsheet would run them
    as a formula (`neutralize_cell`)."""

    HEADER = ("doc_id", "label", "text", "start", "end", "confidence")
    needs_text = False

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.writer = csv.writer(out, quoting=csv.QUOTE_ALL)
        self.writer.writerow(self.HEADER)

    def write(self, doc_id: str, doc: Doc) -> None:
        self.write_record(document_record(doc_id, doc))

    def write_record(self, record: Dict[str, Any]) -> None:
        doc_id = neutralize_cell(record["id"])
        for ent in record["entities"]:
            label, text = neutralize_cell(ent["label"]), neutralize_cell(ent["text"])
            confidence = "" if ent["confidence"] is None else ent["confidence"]
            self.writer.writerow([doc_id, label, text, ent["start"], ent["end"], confidence])

    def close(self) -> None:
        self.out.flush()


class HtmlWriter:
    """A displaCy entity page, one figure per document under its id; hovering over an entity
    shows its confidence. The page is rendered on `close`, so it holds the texts until then."""

    needs_text = True

    def __init__(self, out: TextIO, *, colors: Optional[Dict[str, str]] = None) -> None:
        self.out = out
        self.colors = dict(DNRTI_COLORS if colors is None else colors)
        self.parsed: List[Dict[str, Any]] = []

    def write(self, doc_id: str, doc: Doc) -> None:
        self.write_record(document_record(doc_id, doc, with_text=True))

    def write_record(self, record: Dict[str, Any]) -> None:
        ents = []
        for ent in record["entities"]:
            tooltip = "" if ent["confidence"] is None else f"confidence {ent['confidence']:.2f}"
            ents.append(
                {
                    "start": ent["start"],
                    "end": ent["end"],
                    "label": html.escape(ent["label"]),
                    "params": {"tooltip": tooltip},
                }
            )
        # displaCy escapes the text, but writes titles and labels into the markup as they are.
        self.parsed.append(
            {"text": record["text"], "ents": ents, "title": html.escape(record["id"])}
        )

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


WRITERS = {"jsonl": JsonlWriter, "csv": CsvWriter, "html": HtmlWriter}


def write_failures(path: Path, failures: Iterable[Failure]) -> None:
    """The failed and skipped inputs as JSONL: {"id", "status": "failed"|"skipped", "reason"}."""
    with atomic_output(path) as out:
        for failure in failures:
            out.write(json.dumps(failure.to_json(), ensure_ascii=False) + "\n")
