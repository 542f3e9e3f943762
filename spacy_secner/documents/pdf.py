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
"""

import re
import unicodedata
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Deque, Iterator, List, Set, Tuple

from . import DocumentError, ExtractedText, Source

# A header or footer lies in the top or bottom 9% of a page (a 2.5 cm margin on A4 is 8.4%).
BAND = 0.09
# Headers and footers are compared with the pages up to this many before and after.
WINDOW = 2
# A gap above a line of more than this many line heights starts a paragraph.
PARAGRAPH_GAP = 0.7
PDFIUM_HYPHEN = "\ufffe"
# "12", "Page 3", "3 of 12", "- 3 -", "Page 3 / 12"
_PAGE_NUMBER = re.compile(r"[-–\s]*(?:page\s*)?\d+(?:\s*(?:of|/)\s*\d+)?[-–\s]*", re.I)
_LIGATURES = re.compile("[\ufb00-\ufb06]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd\ufeff]")
_WORD = re.compile(r"[^\W\d_]+")
_URL_TAIL = re.compile(r"(?:://|\[\.\]|www\.)\S*(?:[/=?&_]|\[\.\])$")
# A list item: a bullet or a number, then a space.
_BULLET = re.compile(r"(?:[-–•◦▪●○■□‣⁃*]|\d{1,2}[.)])\s")
_SENTENCE_END = re.compile(r"[.!?:;)\]\"”’]$")
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
    for page in _clean_pages(source, words):
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
            if previous.endswith("-") and paragraphs[0][:1].isalnum():
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
    if n_pages == 0:
        raise DocumentError("PDF with no pages")
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


def _clean_pages(source: Source, words: Set[str]) -> Iterator[Page]:
    """The pages without running headers and footers, read up to `WINDOW` pages ahead. Adds
    the words of every page read to `words`."""
    ahead: Deque[Tuple[Page, Set[str]]] = deque()
    behind: Deque[Set[str]] = deque(maxlen=WINDOW)
    pages = _read_pages(source)
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


def _signature(text: str) -> str:
    return re.sub(r"\d+", "#", " ".join(text.lower().split()))


def _is_running(line: Line, page: Page, others: Set[str]) -> bool:
    """A header or footer: in a band, and a page number or in a band of a nearby page."""
    if not _in_band(line, page):
        return False
    return bool(_PAGE_NUMBER.fullmatch(line.text)) or _signature(line.text) in others


def _read_pages(source: Source) -> Iterator[Page]:
    """Each page's lines, one page in memory at a time."""
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(source if isinstance(source, bytes) else str(source))
    except pdfium.PdfiumError as err:
        reason = _PDFIUM_ERRORS.get(getattr(err, "err_code", None))
        raise DocumentError(reason or f"cannot read the PDF: {err}") from None
    try:
        for index in range(len(pdf)):
            try:
                page = pdf[index]
            except pdfium.PdfiumError as err:
                raise DocumentError(f"page {index + 1}: cannot read it ({err})") from None
            try:
                textpage = page.get_textpage()
                try:
                    lines = _page_lines(textpage)
                finally:
                    textpage.close()
                height = page.get_height()
            finally:
                page.close()
            yield Page(index + 1, height, lines)
    finally:
        pdf.close()


def _page_lines(textpage) -> List[Line]:
    """The lines PDFium finds on a page, with the vertical extent of their first character."""
    import pypdfium2.raw as pdfium_c

    text = textpage.get_text_range()
    # Text and character indices differ only where a character needs two UTF-16 units.
    same_indices = len(text) == textpage.count_chars()
    lines = []
    for match in re.finditer(r"[^\r\n]+", text):
        cleaned = _clean(match.group())
        if not cleaned:
            continue
        first = match.start() + len(match.group()) - len(match.group().lstrip())
        last = match.start() + len(match.group().rstrip()) - 1
        if not same_indices:
            first, last = (
                pdfium_c.FPDFText_GetCharIndexFromTextIndex(textpage.raw, i) for i in (first, last)
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
