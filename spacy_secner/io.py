"""Reading documents for `secner annotate` and writing its entities as JSONL, CSV or HTML.

Readers yield a `Document` for each text and a `Failure` for each input that cannot become one
(undecodable, binary, too large, malformed JSONL), so one bad input never stops a run.
"""

import csv
import html
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, TextIO, Union

from spacy import displacy
from spacy.displacy.templates import TPL_ENT
from spacy.tokens import Doc, Span

STDIN = Path("-")
STDIN_ID = "<stdin>"
JSONL_SUFFIXES = (".jsonl", ".ndjson")

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


@dataclass(frozen=True)
class Document:
    """A text to annotate and the id its entities are written under."""

    id: str
    text: str


@dataclass(frozen=True)
class Failure:
    """An input that was not annotated, and why. `skipped` marks one with nothing to annotate
    (an empty text), which does not make the run fail."""

    id: str
    reason: str
    skipped: bool = False

    def to_json(self) -> Dict[str, str]:
        return {
            "id": self.id,
            "status": "skipped" if self.skipped else "failed",
            "reason": self.reason,
        }


Item = Union[Document, Failure]


def find_files(inputs: Iterable[Path], *, glob: str = "*.txt") -> List[Path]:
    """The files to read, in order: each file as given, the files under each directory that
    match `glob` (recursively, sorted), and `-` (stdin) where it appears. A file reached twice
    is read once.

    RETURNS (List[Path]): The paths, `STDIN` for standard input.
    """
    found: List[Path] = []
    seen = set()
    for path in inputs:
        if path != STDIN and path.is_dir():
            candidates = sorted(p for p in path.rglob(glob) if p.is_file())
        else:
            candidates = [path]
        for candidate in candidates:
            key = candidate if candidate == STDIN else candidate.resolve()
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    return found


def read_inputs(
    paths: Iterable[Path],
    *,
    input_format: str = "auto",
    encoding: str = "utf-8",
    encoding_errors: str = "strict",
    max_chars: int = 1_000_000,
) -> Iterator[Item]:
    """Documents and failures from files (see `find_files`) and stdin.

    input_format (str): "text" (a file is one document), "jsonl" (a line is one document:
        {"id": ..., "text": ...}) or "auto" (JSONL for .jsonl/.ndjson files, else text; stdin
        is text).
    encoding_errors (str): "strict" (an undecodable input fails) or "replace" (undecodable
        bytes become U+FFFD and the text is annotated).
    max_chars (int): Longer texts fail as too large.
    """
    for path in paths:
        if is_jsonl(path, input_format):
            yield from read_jsonl(
                path, encoding=encoding, encoding_errors=encoding_errors, max_chars=max_chars
            )
        else:
            yield read_text(
                path, encoding=encoding, encoding_errors=encoding_errors, max_chars=max_chars
            )


def is_jsonl(path: Path, input_format: str) -> bool:
    """Whether `read_inputs` reads `path` as JSONL under `input_format`."""
    if input_format == "auto":
        return path != STDIN and path.suffix.lower() in JSONL_SUFFIXES
    return input_format == "jsonl"


def read_text(
    path: Path, *, encoding: str = "utf-8", encoding_errors: str = "strict", max_chars: int
) -> Item:
    """One file (or stdin) as one document, its id the path as given."""
    doc_id = STDIN_ID if path == STDIN else str(path)
    try:
        if path == STDIN:
            data = sys.stdin.buffer.read()
        else:
            # No encoding takes more than 4 bytes per character: skip reading a huge file.
            size = path.stat().st_size
            if size > 4 * max_chars:
                return Failure(
                    doc_id, f"too large: {size} bytes, over the limit of {max_chars} chars"
                )
            data = path.read_bytes()
    except OSError as err:
        return Failure(doc_id, f"cannot read: {err.strerror or err}")
    if b"\x00" in data:
        return Failure(doc_id, "binary file (contains NUL bytes)")
    try:
        text = _decode(data, encoding, encoding_errors)
    except ValueError as err:
        return Failure(doc_id, str(err))
    if len(text) > max_chars:
        return Failure(doc_id, f"too large: {len(text)} chars > limit of {max_chars}")
    return Document(doc_id, text)


def read_jsonl(
    path: Path, *, encoding: str = "utf-8", encoding_errors: str = "strict", max_chars: int
) -> Iterator[Item]:
    """One document per line, {"id": ..., "text": ...}; blank lines are ignored. A bad line
    fails, and the other lines are still read. A line without an id gets `file:line` as id, as
    does the failure of a line that is not an object; the reason for the failure of a line with
    an id starts with `file:line`. Ids are written as strings."""
    name = STDIN_ID if path == STDIN else str(path)
    try:
        lines = sys.stdin.buffer if path == STDIN else path.open("rb")
    except OSError as err:
        yield Failure(name, f"cannot read: {err.strerror or err}")
        return
    try:
        for lineno, raw in enumerate(lines, 1):
            where = f"{name}:{lineno}"
            if not raw.strip():
                continue
            try:
                line = _decode(raw, encoding, encoding_errors)
            except ValueError as err:
                yield Failure(where, str(err))
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                yield Failure(where, f"invalid JSON: {err.msg} at column {err.colno}")
                continue
            if not isinstance(record, dict):
                yield Failure(where, f"not a JSON object but {type(record).__name__}")
                continue
            doc_id = str(record["id"]) if record.get("id") is not None else where
            prefix = "" if doc_id == where else f"{where}: "
            text = record.get("text")
            if not isinstance(text, str):
                yield Failure(doc_id, f'{prefix}no "text" string')
            elif len(text) > max_chars:
                reason = f"too large: {len(text)} chars > limit of {max_chars}"
                yield Failure(doc_id, prefix + reason)
            else:
                yield Document(doc_id, text)
    finally:
        if lines is not sys.stdin.buffer:
            lines.close()


def _decode(data: bytes, encoding: str, errors: str) -> str:
    """The text of `data`; RAISES ValueError with a reason for a person if it is undecodable."""
    if encoding.replace("_", "-").lower() in ("utf-8", "utf8"):
        # A byte-order mark is not text: offsets count from the first character after it.
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding, errors=errors)
    except UnicodeDecodeError as err:
        hint = " (--encoding-errors replace annotates it anyway)" if errors == "strict" else ""
        raise ValueError(
            f"cannot decode as {err.encoding}: byte 0x{data[err.start]:02x} at offset "
            f"{err.start}{hint}"
        ) from None


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


WRITERS = {"jsonl": JsonlWriter, "csv": CsvWriter, "html": HtmlWriter}


@contextmanager
def atomic_output(path: Optional[Path]) -> Iterator[TextIO]:
    """A UTF-8 text stream for `path` that replaces it only when the block completes: the data
    go to a temporary file beside it, renamed over `path` at the end and deleted on any
    exception (Ctrl-C included), so `path` is never half-written. With no path, stdout, which
    gets whatever was written before a failure.
    """
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # newline="": the csv module writes its own line endings.
    tmp = tempfile.NamedTemporaryFile(
        "w",
        encoding="utf-8",
        newline="",
        dir=path.parent,
        prefix=f".{path.name}.",
        suffix=".tmp",
        delete=False,
    )
    try:
        yield tmp
        tmp.flush()
        os.fsync(tmp.fileno())
        tmp.close()
        # The temporary file is private (0600); give the output the mode a new file would get.
        os.chmod(tmp.name, _mode_for(path))
        os.replace(tmp.name, path)
    except BaseException:
        tmp.close()
        Path(tmp.name).unlink(missing_ok=True)
        raise


def _mode_for(path: Path) -> int:
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_failures(path: Path, failures: Iterable[Failure]) -> None:
    """The failed and skipped inputs as JSONL: {"id", "status": "failed"|"skipped", "reason"}."""
    with atomic_output(path) as out:
        for failure in failures:
            out.write(json.dumps(failure.to_json(), ensure_ascii=False) + "\n")
