"""`secner annotate --format stix`: one bundle per document (JSON Lines) or one per run."""

from datetime import datetime
from typing import Optional, TextIO

from spacy.tokens import Doc

from .export import RunCollector, build_objects, build_report, extract, make_bundle, now
from .ids import text_digest


class StixExportError(ValueError):
    """A document whose entities could not be made into STIX objects (it fails; the run goes on)."""


class StixWriter:
    """Writes STIX 2.1 bundles with the writer interface of `secner annotate`.

    per_run (bool): One indented bundle for all documents, written on `close` (objects held
        until then, texts not). Otherwise one compact bundle per document, one per line, as
        the documents come.
    indicators (bool): Also an `indicator` per observable, linked by `based-on`.
    timestamp (Optional[datetime]): The objects' `created`/`modified`/`published`; the start of
        the run by default.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        per_run: bool = False,
        indicators: bool = False,
        timestamp: Optional[datetime] = None,
    ) -> None:
        self.out = out
        self.per_run = per_run
        self.indicators = indicators
        self.timestamp = timestamp or now()
        self.collector = RunCollector(indicators=indicators) if per_run else None

    def write(self, doc_id: str, doc: Doc) -> None:
        """Add one document; RAISES StixExportError if its objects cannot be built, before
        anything of it is written or kept."""
        try:
            found = extract(doc, indicators=self.indicators)
            objects = build_objects(found, timestamp=self.timestamp)
            report = build_report(
                text_digest(doc.text),
                doc_id,
                list(found.entries),
                found.leftovers,
                timestamp=self.timestamp,
            )
            if report is not None:
                objects.append(report)
            line = None if self.per_run else make_bundle(objects).serialize(ensure_ascii=False)
        except Exception as err:
            raise StixExportError(f"STIX export failed: {type(err).__name__}: {err}") from err
        if self.collector is not None:
            self.collector.add_extraction(doc_id, doc.text, found)
        else:
            self.out.write(line + "\n")

    def close(self) -> None:
        if self.collector is not None:
            bundle = self.collector.bundle(timestamp=self.timestamp)
            self.out.write(bundle.serialize(pretty=True, ensure_ascii=False) + "\n")
        self.out.flush()
