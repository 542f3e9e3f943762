"""The main text of an HTML page, without navigation and boilerplate (trafilatura).

trafilatura writes each block of the article (paragraph, heading, list item, table row) on a
line of its own; each line is a block, so block structure survives as sentence breaks.
Decoding is ours: a byte-order mark, else the charset the page declares, else the given
encoding, and bytes that do not decode fail the page (or become U+FFFD with "replace").

lxml parses the page, without its default limit of 255 nested elements (beyond which it drops
the rest silently); a page nested deeper than `MAX_DEPTH` fails, and so does one with more than
`MAX_ELEMENTS` elements, as trafilatura's time grows with their square.
"""

import codecs
import logging
import re
from typing import Any, Optional, Tuple

from . import DocumentError, ExtractedText, check_text_encoding

# More elements fail the page before it is parsed: trafilatura takes about 2-3 s for 20,000
# inline elements in one paragraph (and 4 times as long for twice as many); a long blog post has
# a few thousand.
MAX_ELEMENTS = 20_000
# Deeper nesting fails the page; lxml (with `huge_tree`) stops at 2,048 levels and drops the
# rest, so a page it cut short always fails here.
MAX_DEPTH = 1_000
# An opening tag: `<p`, `<span`, `<a`.
_START_TAG = re.compile(r"<[A-Za-z]")

# <meta charset="..."> or <meta http-equiv="Content-Type" content="text/html; charset=...">.
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def html_text(
    data: bytes,
    *,
    max_chars: int = 1_000_000,
    encoding: str = "utf-8",
    encoding_errors: str = "strict",
) -> ExtractedText:
    """The main text of a page and where its blocks start.

    data (bytes): The page as read from disk.
    max_chars (int): A longer text raises DocumentError.
    encoding (str): The encoding of a page that declares none.
    encoding_errors (str): "strict" (undecodable bytes fail the page) or "replace".
    RETURNS (ExtractedText): The text (blocks separated by newlines), no pages.
    RAISES DocumentError: Binary data, undecodable bytes, too many elements, nesting too deep,
        no main text, too long.
    """
    if b"\x00" in data and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DocumentError("binary file (contains NUL bytes), not an HTML page")
    markup = decode_html(data, encoding=encoding, errors=encoding_errors)
    n_elements = sum(1 for _ in _START_TAG.finditer(markup))
    if n_elements > MAX_ELEMENTS:
        raise DocumentError(f"too many elements: {n_elements}, over the limit of {MAX_ELEMENTS}")
    text = _main_text(markup)
    if not text:
        raise DocumentError("no main text found in the HTML page")
    if len(text) > max_chars:
        raise DocumentError(f"too large: {len(text)} chars > limit of {max_chars}")
    return ExtractedText(text, block_starts=_block_starts(text))


def decode_html(data: bytes, *, encoding: str = "utf-8", errors: str = "strict") -> str:
    """The markup as text, in the encoding of its byte-order mark, its `<meta charset>` or
    `encoding`. RAISES DocumentError naming the charset and the first bad byte."""
    charset, skip = _charset(data, encoding)
    try:
        return data[skip:].decode(charset, errors=errors)
    except UnicodeDecodeError as err:
        hint = " (--encoding-errors replace annotates it anyway)" if errors == "strict" else ""
        bad = data[skip + err.start]
        raise DocumentError(
            f"cannot decode as {charset}: byte 0x{bad:02x} at offset {skip + err.start}{hint}"
        ) from None
    except (LookupError, ValueError) as err:
        # A codec that fails without a position (`undefined`, `idna` on long labels).
        raise DocumentError(f"cannot decode as {charset}: {err}") from None


def _charset(data: bytes, default: str) -> Tuple[str, int]:
    """The charset to decode with, and how many bytes of byte-order mark to skip. A declared
    charset that cannot decode the page (unknown, not a text encoding such as `rot13` or
    `base64`, or one in which the ASCII `<meta>` itself would not be ASCII, such as UTF-16) is
    ignored, as browsers do."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name, len(bom)
    match = _META_CHARSET.search(data[:4096])
    declared: Optional[str] = match.group(1).decode("ascii").lower() if match else None
    if declared:
        try:
            return check_text_encoding(declared), 0
        except LookupError:
            pass  # decode as the caller said
    return default, 0


def _main_text(markup: str) -> str:
    import trafilatura

    # trafilatura logs every page it finds too short at WARNING: the caller reports instead.
    logging.getLogger("trafilatura").setLevel(logging.ERROR)
    options = dict(include_comments=False, include_tables=True, deduplicate=False)
    # trafilatura changes the tree it is given: each try gets its own.
    text = trafilatura.extract(_parse(markup), **options)
    if not text:  # a short page: ask for recall over precision before giving up
        text = trafilatura.extract(_parse(markup), favor_recall=True, **options)
    lines = (line.strip() for line in (text or "").splitlines())
    return "\n".join(line for line in lines if line)


def _parse(markup: str) -> Any:
    """The page's lxml tree, parsed as trafilatura does but without lxml's limit of 255 nested
    elements. RAISES DocumentError: Nested deeper than `MAX_DEPTH`."""
    from lxml import etree
    from lxml.html import HTMLParser, fromstring
    from trafilatura.utils import repair_faulty_html

    parser = HTMLParser(
        collect_ids=False,
        default_doctype=False,
        encoding="utf-8",
        remove_comments=True,
        remove_pis=True,
        huge_tree=True,
    )
    markup = repair_faulty_html(markup, markup[:50].lower())
    try:
        tree = fromstring(markup, parser=parser)
    except ValueError:  # a string with an XML encoding declaration: lxml wants bytes
        tree = None
    except etree.ParserError:  # nothing but whitespace or comments
        return None
    if tree is None or len(tree) < 1:
        try:
            tree = fromstring(markup.encode("utf-8", "surrogatepass"), parser=parser)
        except etree.ParserError:  # nothing but whitespace or comments
            return None
    depth = deepest = 0
    for event, _ in etree.iterwalk(tree, events=("start", "end")):
        depth += 1 if event == "start" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_DEPTH:
        raise DocumentError(f"nesting too deep: over {MAX_DEPTH} levels of elements")
    return tree


def _block_starts(text: str) -> Tuple[int, ...]:
    return (0,) + tuple(m.end() for m in re.finditer("\n", text))
