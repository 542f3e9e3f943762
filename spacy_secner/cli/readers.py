"""Reading documents for `secner annotate`: text, PDF and HTML files, directories, JSONL and
stdin.

Readers yield a `Document` for each text and a `Failure` for each input that cannot become one
(undecodable, binary, too large, malformed JSONL, a PDF that is encrypted, corrupt or scanned,
an HTML page with no main text), so one bad input never stops a run.
"""

import json
import os
import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from ..documents import SNIFF_BYTES, DocumentError, extract, sniff

STDIN = Path("-")
STDIN_ID = "<stdin>"
JSONL_SUFFIXES = (".jsonl", ".ndjson")
# The most bytes an input may take per character of --max-chars (see `byte_limit`).
BYTES_PER_CHAR = {"text": 4, "html": 16, "pdf": 64}
_SURROGATE = re.compile("[\ud800-\udfff]")
# Files `secner annotate` reads under a directory, by --input-format, unless --glob says.
DEFAULT_GLOBS: Dict[str, Tuple[str, ...]] = {
    "auto": ("*.txt", "*.pdf", "*.html", "*.htm"),
    "text": ("*.txt",),
    "jsonl": ("*.txt",),
    "pdf": ("*.pdf",),
    "html": ("*.html", "*.htm"),
}


@dataclass(frozen=True)
class Document:
    """A text to annotate and the id its entities are written under.

    source: Where it was read: the file, `file:line` of a JSONL line, or `<stdin>`.
    page_starts: For a PDF, where each page starts in `text` (page 1 first).
    block_starts: For a PDF or HTML page, where each paragraph, heading or list item starts:
        each starts a sentence.
    """

    id: str
    text: str
    source: Optional[str] = None
    page_starts: Tuple[int, ...] = ()
    block_starts: Tuple[int, ...] = ()


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


def find_files(inputs: Iterable[Path], *, glob: Union[str, Sequence[str]] = "*.txt") -> List[Path]:
    """The files to read, in order: each file as given, the files under each directory that
    match `glob` (one pattern or several; recursively, sorted), and `-` (stdin) where it
    appears. A file reached twice is read once.

    RETURNS (List[Path]): The paths, `STDIN` for standard input.
    """
    patterns = [glob] if isinstance(glob, str) else list(glob)
    found: List[Path] = []
    seen = set()
    for path in inputs:
        if path != STDIN and path.is_dir():
            matches = {p for pattern in patterns for p in path.rglob(pattern) if p.is_file()}
            candidates = sorted(matches)
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
        {"id": ..., "text": ...}), "pdf", "html" (a file is one document, its text extracted)
        or "auto" (see `input_kind`).
    encoding_errors (str): "strict" (an undecodable input fails) or "replace" (undecodable
        bytes become U+FFFD and the text is annotated).
    max_chars (int): Longer texts fail as too large.
    """
    options = dict(encoding=encoding, encoding_errors=encoding_errors, max_chars=max_chars)
    for path in paths:
        kind = input_kind(path, input_format)
        if kind == "jsonl":
            yield from read_jsonl(path, **options)
        elif path == STDIN or not path.is_file():
            # stdin, a pipe or a device can be read only once: its kind is sniffed from the
            # bytes read.
            yield read_stream(path, kind, **options)
        elif kind in ("pdf", "html"):
            yield read_document(path, kind, **options)
        else:
            yield read_text(path, **options)


def input_kind(path: Path, input_format: str) -> Optional[str]:
    """How `read_inputs` reads `path` under `input_format`: "jsonl", "pdf", "html", "text", or
    None where the first bytes decide once read. "auto" goes by the suffix (.jsonl/.ndjson, .pdf,
    .html/.htm) and then by the first bytes (see `sniff`); stdin, pipes and devices are not
    opened here, as their bytes can be read only once (see `read_stream`)."""
    if input_format != "auto":
        return input_format
    if path == STDIN:
        return None
    if path.suffix.lower() in JSONL_SUFFIXES:
        return "jsonl"
    by_suffix = sniff(b"", path.suffix)
    if by_suffix is not None or not path.is_file():
        return by_suffix
    try:
        with path.open("rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return "text"  # read_text reports why it cannot be read
    return sniff(head, path.suffix) or "text"


def is_jsonl(path: Path, input_format: str) -> bool:
    """Whether `read_inputs` reads `path` as JSONL under `input_format`."""
    if input_format == "auto":
        return path != STDIN and path.suffix.lower() in JSONL_SUFFIXES
    return input_format == "jsonl"


def path_id(path: Path) -> str:
    """The id of a file: its path as given, `<stdin>` for stdin. Bytes of a file name that are
    not UTF-8 become backslash escapes (`caf\\xe9.txt`), so every id can be written as UTF-8
    and is the same in every run (`--resume` matches by id)."""
    if path == STDIN:
        return STDIN_ID
    try:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (not from the OS)
        return escape_surrogates(str(path))


def escape_surrogates(text: str) -> str:
    """`text` with each lone surrogate (which UTF-8 cannot encode) as a `\\udxxx` escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def byte_limit(kind: str, max_chars: int) -> int:
    """The most bytes an input of `kind` may take for a text of `max_chars` characters: no
    encoding takes more than 4 bytes per character; markup and PDF layout take more."""
    return BYTES_PER_CHAR.get(kind, BYTES_PER_CHAR["text"]) * max_chars


def read_stream(
    path: Path,
    kind: Optional[str],
    *,
    encoding: str = "utf-8",
    encoding_errors: str = "strict",
    max_chars: int,
) -> Item:
    """Stdin, a pipe or a device as one document, read once: of `kind`, or (None) a PDF or an
    HTML page if its first bytes say so (see `sniff`), else text. At most the byte limit of
    its kind (see `byte_limit`) is read, so an endless stream fails as too large."""
    doc_id = path_id(path)
    try:
        with nullcontext(sys.stdin.buffer) if path == STDIN else path.open("rb") as f:
            head = f.read(SNIFF_BYTES)
            kind = kind or sniff(head, path.suffix) or "text"
            limit = byte_limit(kind, max_chars)
            data = head + f.read(max(0, limit + 1 - len(head)))
    except OSError as err:
        return Failure(doc_id, f"cannot read: {err.strerror or err}")
    if len(data) > limit:
        return Failure(doc_id, f"too large: over {limit} bytes, the limit for {max_chars} chars")
    if kind in ("pdf", "html"):
        return read_document(
            data,
            kind,
            doc_id=doc_id,
            encoding=encoding,
            encoding_errors=encoding_errors,
            max_chars=max_chars,
        )
    return text_document(
        doc_id, data, encoding=encoding, encoding_errors=encoding_errors, max_chars=max_chars
    )


def read_text(
    path: Path,
    *,
    encoding: str = "utf-8",
    encoding_errors: str = "strict",
    max_chars: int,
) -> Item:
    """One file as one document, its id the path as given (see `path_id`)."""
    doc_id = path_id(path)
    limit = byte_limit("text", max_chars)
    try:
        # Skip reading a huge file; read no more than the limit in case it grows.
        size = path.stat().st_size
        if size > limit:
            return Failure(
                doc_id, f"too large: {size} bytes, over the limit of {max_chars} chars"
            )
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        return Failure(doc_id, f"cannot read: {err.strerror or err}")
    if len(data) > limit:
        return Failure(doc_id, f"too large: over {limit} bytes, the limit for {max_chars} chars")
    return text_document(
        doc_id, data, encoding=encoding, encoding_errors=encoding_errors, max_chars=max_chars
    )


def text_document(
    doc_id: str, data: bytes, *, encoding: str, encoding_errors: str, max_chars: int
) -> Item:
    """The bytes of a text file as a document, or why they cannot be one."""
    if b"\x00" in data:
        return Failure(doc_id, "binary file (contains NUL bytes)")
    try:
        text = decode(data, encoding, encoding_errors)
    except ValueError as err:
        return Failure(doc_id, str(err))
    if len(text) > max_chars:
        return Failure(doc_id, f"too large: {len(text)} chars > limit of {max_chars}")
    return checked_document(Document(doc_id, text, source=doc_id), encoding_errors)


def read_document(
    source: Union[Path, bytes],
    kind: str,
    *,
    doc_id: Optional[str] = None,
    encoding: str = "utf-8",
    encoding_errors: str = "strict",
    max_chars: int,
) -> Item:
    """A PDF or HTML file (or its bytes) as one document: its text as `spacy_secner.documents`
    extracts it, with page and block offsets. Its id is the path (see `path_id`)."""
    if doc_id is None:
        doc_id = path_id(source) if isinstance(source, Path) else STDIN_ID
    try:
        extracted = extract(
            source,
            kind,
            max_chars=max_chars,
            encoding=encoding,
            encoding_errors=encoding_errors,
        )
    except DocumentError as err:
        return Failure(doc_id, f"{kind.upper()}: {err}")
    except ImportError as err:
        return Failure(doc_id, f"{kind.upper()} input needs spacy-secner[documents] ({err})")
    document = Document(
        doc_id,
        extracted.text,
        source=doc_id,
        page_starts=extracted.page_starts,
        block_starts=extracted.block_starts,
    )
    return checked_document(document, encoding_errors, prefix=f"{kind.upper()}: ")


def checked_document(document: Document, encoding_errors: str, *, prefix: str = "") -> Item:
    """The document if its text is valid Unicode. A lone surrogate (a JSON `\\ud800`, or from
    an escape codec) cannot be written as UTF-8: it fails the document, or with "replace"
    becomes U+FFFD (one character for one, so the offsets stay)."""
    match = _SURROGATE.search(document.text)
    if match is None:
        return document
    if encoding_errors == "replace":
        return replace(document, text=_SURROGATE.sub("\ufffd", document.text))
    return Failure(
        document.id,
        f"{prefix}not valid Unicode: lone surrogate U+{ord(match.group()):04X} at offset "
        f"{match.start()} (--encoding-errors replace annotates it anyway)",
    )


def read_jsonl(
    path: Path, *, encoding: str = "utf-8", encoding_errors: str = "strict", max_chars: int
) -> Iterator[Item]:
    """One document per line, {"id": ..., "text": ...}; blank lines are ignored. A bad line
    fails, and the other lines are still read. A line without an id gets `file:line` as id, as
    does the failure of a line that is not an object; the reason for the failure of a line with
    an id starts with `file:line`. Ids are written as strings, a lone surrogate in them
    (`"\\ud800"`, which UTF-8 cannot encode) as its escape."""
    name = path_id(path)
    try:
        lines = sys.stdin.buffer if path == STDIN else path.open("rb")
    except OSError as err:
        yield Failure(name, f"cannot read: {err.strerror or err}")
        return
    limit = jsonl_line_limit(max_chars)
    try:
        for lineno, raw in enumerate(bounded_lines(lines, limit), 1):
            where = f"{name}:{lineno}"
            if raw is None:
                reason = f"too large: a line over {limit} bytes, the limit for {max_chars} chars"
                yield Failure(where, reason)
                continue
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
            doc_id = escape_surrogates(str(record["id"])) if record.get("id") is not None else where
            prefix = "" if doc_id == where else f"{where}: "
            text = record.get("text")
            if not isinstance(text, str):
                yield Failure(doc_id, f'{prefix}no "text" string')
            elif len(text) > max_chars:
                reason = f"too large: {len(text)} chars > limit of {max_chars}"
                yield Failure(doc_id, prefix + reason)
            else:
                document = Document(doc_id, text, source=where)
                yield checked_document(document, encoding_errors, prefix=prefix)
    finally:
        if lines is not sys.stdin.buffer:
            lines.close()


def jsonl_line_limit(max_chars: int) -> int:
    """The most bytes a JSONL line may take for a text of `max_chars` characters: JSON writes a
    character in up to 12 bytes (a surrogate pair of escapes), and the id and other fields
    take some more."""
    return 12 * max_chars + 65_536


def bounded_lines(stream: BinaryIO, limit: int) -> Iterator[Optional[bytes]]:
    """The lines of a byte stream, each of at most `limit` bytes; None for a longer line, whose
    rest is read past in chunks, never held whole (a line can be as long as the input)."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = stream.readline(1 << 20)
        yield None


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
    except (LookupError, ValueError) as err:
        # A codec that fails without a position (`idna` on a long line, `undefined`).
        raise ValueError(f"cannot decode as {encoding}: {err}") from None
