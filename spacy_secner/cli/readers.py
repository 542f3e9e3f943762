"""Reading documents for `secner annotate`: text files, directories, JSONL and stdin.

Readers yield a `Document` for each text and a `Failure` for each input that cannot become one
(undecodable, binary, too large, malformed JSONL), so one bad input never stops a run.
"""
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Union

STDIN = Path("-")
STDIN_ID = "<stdin>"
JSONL_SUFFIXES = (".jsonl", ".ndjson")


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
        text = decode(data, encoding, encoding_errors)
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
                line = decode(raw, encoding, encoding_errors)
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


def decode(data: bytes, encoding: str, errors: str) -> str:
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
