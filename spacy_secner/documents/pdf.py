"""The text of a PDF, page by page, with pypdfium2 (PDFium: fast, permissively licensed).

Pages are read one at a time and closed, with a look-ahead of `WINDOW` pages, so memory does
not grow with the length of a report. From each page's lines:
- Running headers and footers go: a line in the top or bottom band of a page that is a page
  number, or that (digits aside) is also in a band of a page within `WINDOW` pages.
- Lines of a paragraph are joined with a space, so a line break never splits a sentence. A
  paragraph starts after a vertical gap, at a jump back up the page (a new column) and at a
  list item (`- `, `• `, `1. `); it is a block, so it starts a sentence.
- A word hyphenated at a line end is joined: PDFium marks such hyphens (U+FFFE), and a plain
  `-` before a letter or digit on the next line (`CVE-2017-` / `11882`) joins too. The hyphen
  is kept (`spear-phishing`, `X-Agent`) unless the report writes the joined word elsewhere
  (`mal-` / `ware` where `malware` occurs): either way the word stays one token, so no entity
  is split or invented.
- A URL broken after a `/` or `.` joins with the next line without a space.
- Nothing joins without a space onto a line that starts with an indicator (a URL, an address,
  a hash...): a list of one URL per line stays a list.
- A line whose indicators differ from page to page is no running header, and neither is a line
  with no word of letters beside its indicators (a list of addresses at the top of each page).

Work is bounded per document: at most `MAX_PAGES` pages and `MAX_SECONDS` seconds between pages,
at most `MAX_PAGE_OBJECTS` objects on a page, and a page's characters are counted against what
is left of `max_chars` before its text is read.
"""

import os
import re
import time
import unicodedata
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Deque, Iterator, List, Optional, Pattern, Set, Tuple

from ..tokenizer import DOT_FORMS, INDICATOR_PATTERNS, alternatives, ioc_pattern
from . import DocumentError, ExtractedText, Source

# A header or footer lies in the top or bottom 9% of a page (a 2.5 cm margin on A4 is 8.4%).
BAND = 0.09
# Headers and footers are compared with the pages up to this many before and after.
WINDOW = 2
# A gap above a line of more than this many line heights starts a paragraph.
PARAGRAPH_GAP = 0.7
PDFIUM_HYPHEN = "\ufffe"
# A PDF with more pages fails before any is read (a 17 KB file can declare a million pages).
MAX_PAGES = 2_000
# A PDF still being read after this many seconds fails at the next page.
MAX_SECONDS = 120.0
# A page with more objects (text runs, paths, images) fails before its text is laid out: PDFium
# needs about 100 bytes per character for that.
MAX_PAGE_OBJECTS = 200_000
# "12", "Page 3", "3 of 12", "- 3 -", "Page 3 / 12"
_PAGE_NUMBER = re.compile(r"[-–\s]*(?:page\s*)?\d+(?:\s*(?:of|/)\s*\d+)?[-–\s]*", re.I)
_LIGATURES = re.compile("[\ufb00-\ufb06]")
# Control characters, and the invisible ones that would split an indicator: soft hyphen,
# zero-width space, non-joiner, joiner, word joiner and byte-order mark.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd\u00ad\u200b-\u200d\u2060\ufeff]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_WORD = re.compile(r"[^\W\d_]+")
_URL_TAIL = re.compile(r"(?:://|\[\.\]|www\.)\S*(?:[/=?&_]|\[\.\])$")
# A list item: a bullet or a number, then a space.
_BULLET = re.compile(r"(?:[-–•◦▪●○■□‣⁃*]|\d{1,2}[.)])\s")
_SENTENCE_END = re.compile(r"[.!?:;)\]\"”’]$")
# A line that starts with one of these starts a new indicator: a URL (`hxxp://`, `http[:]//`),
# an address, an e-mail, a hash, a CVE id or a `www.` host.
_NEW_INDICATOR = re.compile(
    "|".join(INDICATOR_PATTERNS[name] for name in ("url", "email", "ipv4", "hash", "cve"))
    + rf"|(?i:www){alternatives(DOT_FORMS)}\S+"
)
# Punctuation around an indicator in running text.
_EDGE_PUNCTUATION = "()[]{}<>\"'“”‘’,;:!?."
_PDFIUM_ERRORS = {
    2: "cannot open the file",
    3: "corrupt or truncated PDF",
    4: "encrypted PDF: it needs a password",
    5: "PDF with an unsupported security handler",
    6: "PDF with a broken page tree",
}


@dataclass
class Line:
    """A line of text; PDFium joins lines at a hyphen it marks, so a line can span two. `top` is
    that of its first character, `bottom` that of its last, `height` a character's height."""

    text: str
    top: float
    bottom: float
    height: float


@dataclass
class Page:
    number: int
    height: float
    lines: List[Line]


def pdf_text(source: Source, *, max_chars: int = 1_000_000) -> ExtractedText:
    """The text of a PDF with its page and paragraph offsets.

    source (Union[Path, bytes]): The PDF file or its bytes.
    max_chars (int): A longer text raises DocumentError as soon as it is reached.
    RETURNS (ExtractedText): Pages joined in order; `page_starts` has one offset per page.
    RAISES DocumentError: Encrypted, truncated or corrupt, no text layer, too long.
    """
    _check_signature(source)
    parts: List[str] = []
    page_starts: List[int] = []
    block_starts: List[int] = []
    length = 0
    words: Set[str] = set()
    n_pages = n_blank = 0
    for page in _clean_pages(source, words, max_chars):
        n_pages += 1
        paragraphs = [_join_lines(lines, words) for lines in _paragraphs(page.lines)]
        paragraphs = [p for p in paragraphs if p]
        if not paragraphs:
            n_blank += 1
            page_starts.append(length)
            continue
        new_block = not parts
        if parts:
            previous = parts[-1]
            if (
                previous.endswith("-")
                and paragraphs[0][:1].isalnum()
                and not _starts_indicator(paragraphs[0])
            ):
                sep = ""  # a word hyphenated across the page break
            elif _SENTENCE_END.search(previous) or paragraphs[0][:1].isupper():
                sep, new_block = "\n\n", True
            else:
                sep = " "  # a sentence running on to the next page
            parts.append(sep)
            length += len(sep)
        page_starts.append(length)
        for i, paragraph in enumerate(paragraphs):
            if i > 0:
                parts.append("\n\n")
                length += 2
            if i > 0 or new_block:
                block_starts.append(length)
            parts.append(paragraph)
            length += len(paragraph)
        if length > max_chars:
            raise DocumentError(
                f"too large: over the limit of {max_chars} chars by page {page.number}"
            )
    if n_blank == n_pages:
        raise DocumentError(
            f"no text layer: none of its {n_pages} pages has text (a scanned PDF? "
            "OCR is not supported)"
        )
    return ExtractedText("".join(parts), tuple(page_starts), tuple(block_starts))


def _check_signature(source: Source) -> None:
    """A PDF starts with `%PDF-` and ends with `%%EOF`. PDFium reads many truncated files
    without a word, and the pages lost at the end would go unnoticed."""
    if isinstance(source, bytes):
        head, tail = source[:1024], source[-1024:]
    else:
        try:
            with Path(source).open("rb") as f:
                head = f.read(1024)
                f.seek(0, 2)
                f.seek(max(f.tell() - 1024, 0))
                tail = f.read()
        except OSError as err:
            raise DocumentError(f"cannot read: {err.strerror or err}") from None
    if b"%PDF-" not in head:
        raise DocumentError("not a PDF (no %PDF- header)")
    if b"%%EOF" not in tail:
        raise DocumentError("truncated or corrupt PDF: it does not end with %%EOF")


def _clean_pages(
    source: Source, words: Set[str], max_chars: Optional[int] = None
) -> Iterator[Page]:
    """The pages without running headers and footers, read up to `WINDOW` pages ahead. Adds
    the words of every page read to `words`."""
    ahead: Deque[Tuple[Page, Set[Optional[str]]]] = deque()
    behind: Deque[Set[Optional[str]]] = deque(maxlen=WINDOW)
    pages = _read_pages(source, max_chars)
    exhausted = False
    while True:
        while not exhausted and len(ahead) <= WINDOW:
            page = next(pages, None)
            if page is None:
                exhausted = True
                break
            for line in page.lines:
                words.update(w.lower() for w in _WORD.findall(line.text))
            band = {_signature(line.text) for line in page.lines if _in_band(line, page)}
            band.discard(None)
            ahead.append((page, band))
        if not ahead:
            return
        page, band = ahead.popleft()
        others = set().union(*behind, *(b for _, b in ahead))
        behind.append(band)
        page.lines = [line for line in page.lines if not _is_running(line, page, others)]
        yield page


def _in_band(line: Line, page: Page) -> bool:
    return line.bottom >= page.height * (1 - BAND) or line.top <= page.height * BAND


@lru_cache(maxsize=1)
def _indicator() -> Pattern:
    """What `cti_iocs` reports as an indicator (not `APT28`, not `setup.py`)."""
    return re.compile(ioc_pattern())


def _is_indicator(word: str) -> bool:
    word = word.strip(_EDGE_PUNCTUATION)
    return bool(word) and bool(_indicator().fullmatch(word))


def _starts_indicator(text: str) -> bool:
    """Whether `text` starts with a new indicator (a URL, an address, a hash...)."""
    first = text.split(maxsplit=1)[0].rstrip(_EDGE_PUNCTUATION) if text.strip() else ""
    return bool(_NEW_INDICATOR.fullmatch(first))


def _signature(text: str) -> Optional[str]:
    """What a running line shares with its copies on other pages: its words with digits as `#`
    (page numbers, dates), its indicators as written. None for a line with no word of letters
    beside its indicators, such as an address or a hash in a list: it is never a running line."""
    parts = []
    has_word = False
    for word in text.lower().split():
        if _is_indicator(word):
            parts.append(word)
        else:
            has_word = has_word or bool(_WORD.search(word))
            parts.append(re.sub(r"\d+", "#", word))
    return " ".join(parts) if has_word else None


def _is_running(line: Line, page: Page, others: Set[Optional[str]]) -> bool:
    """A header or footer: in a band, and a page number or in a band of a nearby page."""
    if not _in_band(line, page):
        return False
    if _PAGE_NUMBER.fullmatch(line.text):
        return True
    signature = _signature(line.text)
    return signature is not None and signature in others


def _read_pages(source: Source, max_chars: Optional[int] = None) -> Iterator[Page]:
    """Each page's lines, one page in memory at a time. RAISES DocumentError before reading
    more than `MAX_PAGES` pages, for longer than `MAX_SECONDS`, a page with more than
    `MAX_PAGE_OBJECTS` objects, or a page with more characters than are left of `max_chars`."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    raw = _open(source)
    pdf = pdfium.PdfDocument(raw)  # closes `raw`; `source` keeps the bytes alive
    try:
        n_pages = len(pdf)
        if n_pages < 1:
            raise DocumentError("cannot open: no pages, or a page tree PDFium cannot read")
        if n_pages > MAX_PAGES:
            raise DocumentError(f"too many pages: {n_pages}, over the limit of {MAX_PAGES}")
        started = time.monotonic()
        left = max_chars
        for index in range(n_pages):
            elapsed = time.monotonic() - started
            if elapsed > MAX_SECONDS:
                raise DocumentError(
                    f"too slow: {elapsed:.0f} s to read {index} of {n_pages} pages, over the "
                    f"limit of {MAX_SECONDS:.0f} s"
                )
            try:
                page = pdf[index]
            except pdfium.PdfiumError as err:
                raise DocumentError(f"page {index + 1}: cannot read it ({err})") from None
            try:
                n_objects = pdfium_c.FPDFPage_CountObjects(page.raw)
                if n_objects > MAX_PAGE_OBJECTS:
                    raise DocumentError(
                        f"page {index + 1}: too many objects: {n_objects}, over the limit of "
                        f"{MAX_PAGE_OBJECTS}"
                    )
                textpage = page.get_textpage()
                try:
                    n_chars = textpage.count_chars()
                    if left is not None and n_chars > left:
                        raise DocumentError(
                            f"too large: page {index + 1} has {n_chars} chars, over the "
                            f"{left} left of the limit of {max_chars}"
                        )
                    lines = _page_lines(textpage)
                finally:
                    textpage.close()
                height = page.get_height()
            finally:
                page.close()
            if left is not None:
                left -= sum(len(line.text) for line in lines)
            yield Page(index + 1, height, lines)
    finally:
        pdf.close()


def _open(source: Source):
    """The PDFium document (FPDF_DOCUMENT) of `source`. PDFium's last error is read only when
    opening fails, as it is set only then: a file that opens with no pages would otherwise get
    the error of an earlier file."""
    import pypdfium2  # noqa: F401  (initialises PDFium)
    import pypdfium2.raw as pdfium_c

    if isinstance(source, bytes):
        raw = pdfium_c.FPDF_LoadMemDocument64(source, len(source), None)
    else:
        raw = pdfium_c.FPDF_LoadDocument(os.fsencode(str(source)) + b"\0", None)
    if not raw:
        code = pdfium_c.FPDF_GetLastError()
        raise DocumentError(_PDFIUM_ERRORS.get(code, f"cannot read the PDF (PDFium error {code})"))
    return raw


def _page_lines(textpage) -> List[Line]:
    """The lines PDFium finds on a page, with the vertical extent of their first character."""
    import pypdfium2.raw as pdfium_c

    text = textpage.get_text_range()
    # Text and character indices differ only where a character needs two UTF-16 units.
    same_indices = len(text) == textpage.count_chars()
    # PDFium's text indices count UTF-16 units: one more per character outside the BMP.
    astral = [m.start() for m in _ASTRAL.finditer(text)]
    lines = []
    for match in re.finditer(r"[^\r\n]+", text):
        cleaned = _clean(match.group())
        if not cleaned:
            continue
        first = match.start() + len(match.group()) - len(match.group().lstrip())
        last = match.start() + len(match.group().rstrip()) - 1
        if not same_indices:
            first, last = (
                pdfium_c.FPDFText_GetCharIndexFromTextIndex(
                    textpage.raw, i + bisect_left(astral, i)
                )
                for i in (first, last)
            )
        _, first_bottom, _, top = textpage.get_charbox(first, loose=True)
        _, bottom, _, _ = textpage.get_charbox(last, loose=True)
        lines.append(Line(cleaned, top, bottom, max(top - first_bottom, 1.0)))
    return lines


def _clean(text: str) -> str:
    text = _LIGATURES.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    return " ".join(_CONTROL.sub("", text).split())


def _paragraphs(lines: List[Line]) -> Iterator[List[Line]]:
    """Lines grouped into paragraphs: a new one after a gap, a jump back up the page or at a
    list item."""
    current: List[Line] = []
    for line in lines:
        if current:
            previous = current[-1]
            gap = previous.bottom - line.top
            height = max(previous.height, line.height)
            jumped = gap > PARAGRAPH_GAP * height or gap < -1.5 * height
            if jumped or _BULLET.match(line.text):
                yield current
                current = []
        current.append(line)
    if current:
        yield current


def _join_lines(lines: List[Line], words: Set[str]) -> str:
    """A paragraph's lines as one line of text (see the module's docstring)."""
    text = ""
    for line in lines:
        if not text:
            text = line.text
        elif _starts_indicator(line.text):
            text += " " + line.text  # one indicator per line: never glued to the one before
        elif text.endswith("-") and text[-2:-1].isalnum() and line.text[:1].isalnum():
            text = text[:-1] + PDFIUM_HYPHEN + line.text
        elif _URL_TAIL.search(text):
            text += line.text
        else:
            text += " " + line.text
    return re.sub(
        rf"(\w*){PDFIUM_HYPHEN}(\w*)", lambda m: _dehyphenate(m.group(1), m.group(2), words), text
    )


def _dehyphenate(before: str, after: str, words: Set[str]) -> str:
    """`before` and `after` of a word broken at a line end: joined without the hyphen only if
    both are lower-case letters and the report has the joined word elsewhere."""
    lower = before[-1:].islower() and after[:1].islower()
    if lower and (before + after).lower() in words:
        return before + after
    return f"{before}-{after}"
