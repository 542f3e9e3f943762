"""Threat reports as analysts get them: PDF and HTML files to plain text for the pipeline.

`extract(path_or_bytes, kind)` gives an `ExtractedText`: the text, where each PDF page starts in
it (so every entity keeps its page) and where each block (paragraph, heading, list item, table
row) starts, so blocks can become sentence breaks. Inputs that cannot give text raise
`DocumentError` with a reason for a person: encrypted, truncated or corrupt PDFs, PDFs with no
text layer, undecodable HTML, and documents over a limit on their size or on the work they take
(pages, objects, characters, time; HTML elements and nesting).

PDF needs pypdfium2 and HTML trafilatura: `pip install spacy-secner[documents]`. Both are
imported only when a document of that kind is read.
"""

import codecs
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

from spacy.tokens import Doc

Source = Union[Path, bytes]

PDF_SUFFIXES = (".pdf",)
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
# Suffixes of plain text: a signature in such a file counts only at its very start.
TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".rst", ".log")
# How far into a file its signature is looked for: PDF readers accept junk before `%PDF-`.
SNIFF_BYTES = 1024
# What an encoding must decode to the same ASCII text: the bytes the readers look for.
_ASCII_PROBE = b'\x00\t\n\r {}[]":,<>/=09AZaz'


class DocumentError(ValueError):
    """A document that gives no text to annotate; the message says why."""


@dataclass(frozen=True)
class ExtractedText:
    """The text of a document and its layout.

    text (str): What the pipeline reads; every offset below points into it.
    page_starts (Tuple[int, ...]): Where each page starts (page 1 first); empty for HTML.
    block_starts (Tuple[int, ...]): Where each paragraph, heading, list item or table row
        starts, sorted.
    """

    text: str
    page_starts: Tuple[int, ...] = ()
    block_starts: Tuple[int, ...] = ()

    def page_at(self, offset: int) -> Optional[int]:
        """The page (from 1) that holds the character at `offset`; None for a document without
        pages."""
        return page_at(self.page_starts, offset) if self.page_starts else None


def page_at(page_starts: Sequence[int], offset: int) -> int:
    """The page (from 1) that holds the character at `offset`, given where each page starts."""
    return max(bisect_right(page_starts, offset), 1)


def sniff(head: bytes, suffix: str = "") -> Optional[str]:
    """The kind of a document from its first bytes and its file suffix: "pdf", "html" or None
    (plain text). The suffix decides where it names a kind, so a broken `.pdf` fails as a PDF.
    A text suffix (`.txt`, `.md`...) is a PDF or HTML page only if the file starts like one, so a
    report that quotes `%PDF-` stays text; any other file is a PDF if `%PDF-` is in its head."""
    suffix = suffix.lower()
    if suffix in PDF_SUFFIXES:
        return "pdf"
    if suffix in HTML_SUFFIXES:
        return "html"
    start = head[:SNIFF_BYTES].lstrip(b"\xef\xbb\xbf\xff\xfe \t\r\n").lower()
    if start.startswith(b"%pdf-") or (
        suffix not in TEXT_SUFFIXES and b"%PDF-" in head[:SNIFF_BYTES]
    ):
        return "pdf"
    if start.startswith((b"<!doctype html", b"<html")) or (
        start.startswith((b"<?xml", b"<!--")) and b"<html" in start
    ):
        return "html"
    return None


def check_text_encoding(name: str) -> str:
    """The codec name of `name` if it can decode the inputs: a text encoding (not `hex`,
    `rot13`...) that reads ASCII bytes as ASCII, since NUL bytes, newlines and markup are
    looked for in the bytes before decoding (so not UTF-16, UTF-32 or EBCDIC).
    RAISES LookupError: Why it cannot, for a person."""
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        raise LookupError(f"unknown encoding {name!r}") from None
    try:
        ascii_compatible = _ASCII_PROBE.decode(name) == _ASCII_PROBE.decode("ascii")
    except LookupError:  # bytes.decode refuses bytes-to-bytes and str-to-str codecs
        raise LookupError(f"{name!r} is not a text encoding") from None
    except ValueError:  # `undefined`, or UTF-32 and the like on the probe
        ascii_compatible = False
    if not ascii_compatible:
        raise LookupError(
            f"{name!r} does not read ASCII bytes as ASCII (UTF-16, UTF-32 and EBCDIC are not "
            "supported: convert the files to UTF-8)"
        )
    return codec


def extract(
    source: Source,
    kind: str,
    *,
    max_chars: int = 1_000_000,
    encoding: str = "utf-8",
    encoding_errors: str = "strict",
) -> ExtractedText:
    """The text of a PDF or HTML document.

    source (Union[Path, bytes]): A file, or its bytes.
    kind (str): "pdf" or "html".
    max_chars (int): A longer text raises DocumentError; a PDF stops being read there.
    encoding (str): HTML only: the encoding of a page that declares none.
    encoding_errors (str): HTML only: "strict" or "replace".
    RETURNS (ExtractedText): The text and its page and block offsets.
    RAISES DocumentError: The document gives no text, with the reason.
    """
    if kind == "pdf":
        from .pdf import pdf_text

        return pdf_text(source, max_chars=max_chars)
    if kind == "html":
        from .html import html_text

        data = source if isinstance(source, bytes) else _read_bytes(source, 16 * max_chars)
        return html_text(
            data, max_chars=max_chars, encoding=encoding, encoding_errors=encoding_errors
        )
    raise ValueError(f"unknown document kind: {kind!r}")


def _read_bytes(path: Path, limit: int) -> bytes:
    """The bytes of a file; RAISES DocumentError if there are more than `limit` or it cannot be
    read. At most `limit + 1` bytes are read: a pipe or a device has no size to check first."""
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise DocumentError(f"cannot read: {err.strerror or err}") from None
    if len(data) > limit:
        raise DocumentError(f"too large: over the limit of {limit} bytes")
    return data


def mark_blocks(doc: Doc, block_starts: Tuple[int, ...]) -> Doc:
    """Start a sentence at each token that starts a block, before the pipeline runs: a heading,
    list item or table row without a full stop does not run into the next sentence. The
    sentencizer (overwrite = false) keeps these starts and places the others.

    doc (Doc): A doc made from `ExtractedText.text` (e.g. by `nlp.make_doc`).
    block_starts (Tuple[int, ...]): `ExtractedText.block_starts`.
    RETURNS (Doc): The same doc.
    """
    starts = set(block_starts)
    for token in doc:
        if token.i > 0 and token.idx in starts:
            token.is_sent_start = True
    return doc
