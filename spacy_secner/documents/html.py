"""The main text of an HTML page, without navigation and boilerplate (trafilatura).

trafilatura writes each block of the article (paragraph, heading, list item, table row) on a
line of its own; each line is a block, so block structure survives as sentence breaks.
Decoding is ours: a byte-order mark, else the charset the page declares, else the given
encoding, and bytes that do not decode fail the page (or become U+FFFD with "replace").
"""

import codecs
import logging
import re
from typing import Optional, Tuple

from . import DocumentError, ExtractedText, check_text_encoding

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
    RAISES DocumentError: Binary data, undecodable bytes, no main text, too long.
    """
    if b"\x00" in data and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DocumentError("binary file (contains NUL bytes), not an HTML page")
    markup = decode_html(data, encoding=encoding, errors=encoding_errors)
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
    text = trafilatura.extract(markup, **options)
    if not text:  # a short page: ask for recall over precision before giving up
        text = trafilatura.extract(markup, favor_recall=True, **options)
    lines = (line.strip() for line in (text or "").splitlines())
    return "\n".join(line for line in lines if line)


def _block_starts(text: str) -> Tuple[int, ...]:
    return (0,) + tuple(m.end() for m in re.finditer("\n", text))
