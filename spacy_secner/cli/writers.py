"""Writing the entities `secner annotate` finds: JSONL, CSV, a displaCy HTML report or STIX 2.1
bundles."""
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


class JsonlWriter:
    """One line per document: {"id": ..., "entities": [{label, text, start, end, confidence}]}."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, doc_id: str, doc: Doc) -> None:
        record = {"id": doc_id, "entities": entity_records(doc)}
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.out.flush()


class CsvWriter:
    """One row per entity: doc_id, label, text, start, end, confidence (empty if unknown)."""

    HEADER = ("doc_id", "label", "text", "start", "end", "confidence")

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.writer = csv.writer(out)
        self.writer.writerow(self.HEADER)

    def write(self, doc_id: str, doc: Doc) -> None:
        for ent in entity_records(doc):
            row = [doc_id, *(ent[key] for key in self.HEADER[1:])]
            self.writer.writerow(["" if value is None else value for value in row])

    def close(self) -> None:
        self.out.flush()


class HtmlWriter:
    """A displaCy entity page, one figure per document under its id; hovering over an entity
    shows its confidence. The page is rendered on `close`, so it holds the texts until then."""

    def __init__(self, out: TextIO, *, colors: Optional[Dict[str, str]] = None) -> None:
        self.out = out
        self.colors = dict(DNRTI_COLORS if colors is None else colors)
        self.parsed: List[Dict[str, Any]] = []

    def write(self, doc_id: str, doc: Doc) -> None:
        ents = []
        for ent in entity_records(doc):
            tooltip = "" if ent["confidence"] is None else f"confidence {ent['confidence']:.2f}"
            ents.append(
                {
                    "start": ent["start"],
                    "end": ent["end"],
                    "label": html.escape(ent["label"]),
                    "params": {"tooltip": tooltip},
                }
            )
        # displaCy writes titles and labels into the markup as they are.
        self.parsed.append({"text": doc.text, "ents": ents, "title": html.escape(doc_id)})

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
        # One time for the whole run: created, modified, published, valid_from.
        self.timestamp = export.now()
        self.collector = export.RunCollector(indicators=indicators) if per_run else None

    def write(self, doc_id: str, doc: Doc) -> None:
        """RAISES WriteError if the document's objects cannot be built (nothing is written)."""
        export = self.export
        try:
            found, objects = export.document_objects(
                doc, doc_id, timestamp=self.timestamp, indicators=self.indicators
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
