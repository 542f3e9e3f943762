"""PDF and HTML to text: pages, blocks, hyphenation, headers and footers, and the inputs that
give no text. Every file is built here (fpdf2 writes the PDFs)."""

import importlib.util
import os
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import pytest
import spacy

pytest.importorskip("pypdfium2")
pytest.importorskip("trafilatura")
fpdf = pytest.importorskip("fpdf")

from spacy_secner.documents import (
    DocumentError,
    ExtractedText,
    check_text_encoding,
    extract,
    mark_blocks,
    sniff,
)  # noqa: E402
from spacy_secner.documents import html as html_module  # noqa: E402
from spacy_secner.documents import pdf as pdf_module  # noqa: E402
from spacy_secner.tokenizer import build_cti_tokenizer  # noqa: E402
from report_files import HEADER, NAV_PAGE, REPORT_PAGES, raw_pdf, write_pdf  # noqa: E402


@pytest.fixture(scope="module")
def report_pdf(tmp_path_factory) -> Path:
    return write_pdf(tmp_path_factory.mktemp("pdf") / "report.pdf", REPORT_PAGES)


@pytest.fixture(scope="module")
def report(report_pdf) -> ExtractedText:
    return extract(report_pdf, "pdf")


def test_pdf_text_pages_and_running_lines(report):
    text = report.text
    assert HEADER not in text and "Page 1 of 2" not in text and "Page 2" not in text
    assert len(report.page_starts) == 2
    first = text.index("APT28 used X-Agent against NATO in 2016 .")
    second = text.index("Lazarus Group deployed WannaCry ransomware in May 2017 .")
    assert report.page_at(first) == 1 and report.page_at(second) == 2
    assert report.page_at(report.page_starts[1] - 1) == 1
    assert "CVE-2017-11882" in text  # a hyphen before a digit on the next line joins
    assert "hxxp://evil[.]com/gate.php every hour" in text  # a URL broken after a slash
    # Paragraphs, headings and list lines are blocks: each starts a sentence.
    blocks = [text[i:].split("\n", 1)[0] for i in report.block_starts]
    assert blocks == [
        "Executive summary",
        "APT28 used X-Agent against NATO in 2016 .",
        "The loader exploited CVE-2017-11882 and called hxxp://evil[.]com/gate.php every hour.",
        "Lazarus Group deployed WannaCry ransomware in May 2017 .",
        "Indicators",
        "- evil[.]com",
        "- 185.220.101[.]4",
        "- d41d8cd98f00b204e9800998ecf8427e",
    ]


def test_pdf_entities_and_iocs_keep_their_page(report, trained_cnn_nlp):
    """The hyphenated entity comes out whole, and every entity and indicator has its page."""
    ents = {
        (e.text, e.label_, report.page_at(e.start_char)) for e in trained_cnn_nlp(report.text).ents
    }
    assert {
        ("APT28", "HackOrg", 1),
        ("X-Agent", "Tool", 1),
        ("NATO", "Org", 1),
        ("Lazarus Group", "HackOrg", 2),
        ("WannaCry", "Tool", 2),
    } <= ents
    nlp = spacy.blank("en")
    nlp.tokenizer = build_cti_tokenizer(nlp)
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("cti_iocs")
    doc = nlp(mark_blocks(nlp.make_doc(report.text), report.block_starts))
    found = {(s._.ioc_value, s.label_, report.page_at(s.start_char)) for s in doc.spans["iocs"]}
    assert found == {
        ("CVE-2017-11882", "cve", 1),
        ("http://evil.com/gate.php", "url", 1),
        ("evil.com", "domain", 2),
        ("185.220.101.4", "ipv4", 2),
        ("d41d8cd98f00b204e9800998ecf8427e", "md5", 2),
    }
    assert next(t for t in doc if t.text == "Indicators").is_sent_start


def test_pdf_dehyphenation_uses_the_report_itself(tmp_path):
    path = write_pdf(
        tmp_path / "hyphen.pdf",
        [["The mal-\nware spread by spear-\nphishing.", "This malware is known."]],
        running=False,
    )
    text = extract(path, "pdf").text
    assert "The malware spread by spear-phishing." in text


def test_pdf_sentence_across_a_page_break(tmp_path):
    path = write_pdf(
        tmp_path / "across.pdf",
        [["Sofacy sent Sednit backdoor"], ["emails to the German Bundestag ."]],
    )
    result = extract(path, "pdf")
    joined = "Sofacy sent Sednit backdoor emails to the German Bundestag ."
    assert joined in result.text
    assert result.page_at(result.text.index("emails")) == 2
    assert result.text.index("emails") not in result.block_starts


def test_pdf_bad_inputs(tmp_path, report_pdf):
    data = report_pdf.read_bytes()
    truncated = tmp_path / "truncated.pdf"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.pdf"
    corrupt.write_bytes(b"%PDF-1.7\n" + b"\x8f garbage " * 200 + b"\n%%EOF\n")
    not_pdf = tmp_path / "notes.pdf"
    not_pdf.write_text("just text", encoding="utf-8")
    encrypted = fpdf.FPDF()
    encrypted.set_font("Helvetica", size=11)
    encrypted.add_page()
    encrypted.cell(0, 5, "APT28 used X-Agent .")
    encrypted.set_encryption(owner_password="owner", user_password="secret")
    encrypted.output(str(tmp_path / "encrypted.pdf"))
    scanned = fpdf.FPDF()
    for _ in range(3):
        scanned.add_page()
        scanned.rect(20, 20, 100, 150, style="F")  # a page image stands for a scan
    scanned.output(str(tmp_path / "scanned.pdf"))
    expected = {
        "truncated.pdf": "truncated or corrupt PDF",
        "corrupt.pdf": "corrupt or truncated PDF",
        "notes.pdf": "not a PDF",
        "encrypted.pdf": "encrypted PDF",
        "scanned.pdf": "no text layer: none of its 3 pages has text",
    }
    for name, reason in expected.items():
        with pytest.raises(DocumentError, match=reason.replace("(", r"\(")):
            extract(tmp_path / name, "pdf")
    with pytest.raises(DocumentError, match="encrypted PDF"):
        extract((tmp_path / "encrypted.pdf").read_bytes(), "pdf")


def test_long_pdf_is_streamed(tmp_path, monkeypatch):
    """200 pages: every page is read once, at most WINDOW + 1 ahead of the page being joined,
    and a text over max_chars stops the reading early."""
    pages = [[f"Page body {n}: APT28 used X-Agent against NATO ."] for n in range(1, 201)]
    path = write_pdf(tmp_path / "long.pdf", pages)
    read: List[int] = []
    real = pdf_module._read_pages

    def counting(source, max_chars=None):
        for page in real(source, max_chars):
            read.append(page.number)
            yield page

    monkeypatch.setattr(pdf_module, "_read_pages", counting)
    joined: List[int] = []
    for page in pdf_module._clean_pages(path, set()):
        joined.append(page.number)
        assert len(read) <= page.number + pdf_module.WINDOW + 1
    assert joined == list(range(1, 201)) and read == joined
    result = extract(path, "pdf")
    assert len(result.page_starts) == 200
    assert result.page_at(result.text.index("Page body 200:")) == 200
    assert "Page 200 of 200" not in result.text
    read.clear()
    with pytest.raises(DocumentError, match="too large"):
        extract(path, "pdf", max_chars=2000)
    assert len(read) < 60


def test_html_main_text_and_blocks():
    result = extract(NAV_PAGE.encode("utf-8"), "html")
    text = result.text
    assert "Home" not in text and "Contact us" not in text and "All rights reserved" not in text
    assert "APT28 used X-Agent against NATO" in text and "hxxp://evil[.]com/gate.php" in text
    blocks = [text[i:].split("\n", 1)[0] for i in result.block_starts]
    assert blocks[0] == "APT28 returns with X-Agent"
    assert "Indicators" in blocks and "- evil[.]com" in blocks and "- CVE-2017-11882" in blocks
    assert result.page_starts == () and result.page_at(5) is None
    nlp = spacy.blank("en")
    nlp.tokenizer = build_cti_tokenizer(nlp)
    nlp.add_pipe("sentencizer")
    doc = nlp(mark_blocks(nlp.make_doc(text), result.block_starts))
    sents = [s.text.strip() for s in doc.sents]
    assert "APT28 returns with X-Agent" in sents and "Indicators" in sents


def test_html_encodings():
    declared = '<html><head><meta charset="windows-1252"></head><body><p>{}</p></body></html>'
    latin = declared.format("Le groupe APT28 a visé des ministères en 2016 avec X-Agent.")
    assert "visé des ministères" in extract(latin.encode("cp1252"), "html").text
    broken = NAV_PAGE.encode("utf-8").replace(b"Lazarus", b"Laz\xffrus")
    with pytest.raises(DocumentError, match=r"cannot decode as utf-8: byte 0xff at offset \d+"):
        extract(broken, "html")
    assert "Laz\ufffdrus" in extract(broken, "html", encoding_errors="replace").text
    with pytest.raises(DocumentError, match="binary"):
        extract(b"<html>\x00\x01\x02</html>", "html")
    with pytest.raises(DocumentError, match="no main text"):
        extract(b"<html><body><nav></nav></body></html>", "html")


@pytest.mark.parametrize(
    "charset", ["rot13", "hex", "base64", "uu", "zlib", "undefined", "utf-16", "utf-32"]
)
def test_html_charset_that_cannot_decode_the_page_is_ignored(charset):
    """Not a text encoding, no encoding at all, or one in which the ASCII `<meta>` would not be
    ASCII: the page is decoded with the given encoding, as for an unknown charset."""
    page = '<html><head><meta charset="{}"></head><body><p>{}</p></body></html>'
    text = "Le groupe APT28 a visé des ministères en 2016 avec X-Agent."
    assert text in extract(page.format(charset, text).encode("utf-8"), "html").text
    latin = page.format(charset, text).encode("cp1252")
    assert text in extract(latin, "html", encoding="cp1252").text


def test_html_from_a_pipe_is_read_up_to_the_limit():
    """A pipe has no size to check before reading: no more than the limit is read."""
    if not Path("/dev/fd").is_dir():
        pytest.skip("no /dev/fd")
    read_end, write_end = os.pipe()
    os.write(write_end, b"<html><body><p>APT28 used X-Agent.</p></body></html>" * 4)
    os.close(write_end)
    try:
        with pytest.raises(DocumentError, match="too large: over the limit of 160 bytes"):
            extract(Path(f"/dev/fd/{read_end}"), "html", max_chars=10)
    finally:
        os.close(read_end)


def test_check_text_encoding():
    assert check_text_encoding("UTF8") == "utf-8"
    assert check_text_encoding("latin-1") == "iso8859-1"
    assert check_text_encoding("shift_jis") == "shift_jis"
    with pytest.raises(LookupError, match="unknown encoding 'nope'"):
        check_text_encoding("nope")
    for name in ("hex", "rot13", "base64"):
        with pytest.raises(LookupError, match=f"'{name}' is not a text encoding"):
            check_text_encoding(name)
    for name in ("utf-16", "utf-32-le", "cp037", "undefined"):
        with pytest.raises(LookupError, match="does not read ASCII bytes as ASCII"):
            check_text_encoding(name)


def test_sniff():
    assert sniff(b"%PDF-1.7\n...", ".txt") == "pdf"
    # A text report may quote a signature: only one at the very start makes it a PDF.
    quoted = b"The decoy starts with %PDF-1.7 and drops X-Agent."
    assert sniff(quoted, ".txt") is None and sniff(quoted, ".MD") is None
    assert sniff(quoted, "") == "pdf" and sniff(quoted, ".bin") == "pdf"
    assert sniff(b"\xef\xbb\xbf \n%PDF-1.4", ".md") == "pdf"
    assert sniff(b"junk\n%PDF-1.4", "") == "pdf"
    assert sniff(b"\xef\xbb\xbf  <!DOCTYPE html><html>", ".txt") == "html"
    assert sniff(b"<!-- saved --><html lang=en>", "") == "html"
    assert sniff(b"APT28 used X-Agent.", ".txt") is None
    assert sniff(b"plain", ".PDF") == "pdf" and sniff(b"plain", ".htm") == "html"


def _unicode_font() -> Optional[Path]:
    """A TrueType font with soft hyphens, zero-width characters and Old Italic letters."""
    candidates = [Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
    matplotlib = importlib.util.find_spec("matplotlib")  # found, not imported
    for folder in (matplotlib.submodule_search_locations or []) if matplotlib else []:
        candidates.append(Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf")
    return next((path for path in candidates if path.is_file()), None)


def _write_lines(path: Path, pages: Sequence[Sequence[Tuple[float, str]]], font: bool = False):
    """A PDF with each line written at its own height (mm from the top of an A4 page)."""
    doc = fpdf.FPDF(format="A4")
    doc.set_auto_page_break(False)
    if font:
        unicode_font = _unicode_font()
        if unicode_font is None:
            pytest.skip("no Unicode TrueType font")
        doc.add_font("U", "", str(unicode_font))
        doc.set_font("U", size=10)
    else:
        doc.set_font("Helvetica", size=10)
    for lines in pages:
        doc.add_page()
        for y, text in lines:
            doc.text(20, y, text)
    doc.output(str(path))
    return path


def test_pdf_indicator_lists_in_the_bands_are_kept(tmp_path):
    """One address per line down whole pages: those in the top and bottom bands look alike with
    digits aside, but each is a different indicator, so none is a running line."""
    ips = [f"45.{k}.{k % 200}.{(k * 7) % 250}" for k in range(1, 3 * 55 + 1)]
    pages = [
        [(15 + 5 * i, ip) for i, ip in enumerate(ips[n * 55 : (n + 1) * 55])] for n in range(3)
    ]
    for lines in pages:  # a header that repeats is still one
        lines.append((8, "ACME Threat Research | TLP:CLEAR"))
    text = extract(_write_lines(tmp_path / "ips.pdf", pages), "pdf").text
    assert [ip for ip in ips if ip not in text.split()] == []
    assert "ACME" not in text


def test_pdf_one_url_per_line_is_not_joined(tmp_path):
    urls = [
        "hxxp://alpha[.]com/",
        "hxxp://beta[.]net/panel/",
        "hxxps://gamma[.]org/api?id=",
        "http[:]//delta[.]com/x_",
        "www.epsilon-cdn.com",
        "185.220.101[.]4",
        "hxxp://zeta[.]com/a/",
        "b.php?id=1",
    ]
    lines = [(40, "The following C2 URLs were observed:")]
    lines += [(45 + 4.5 * i, url) for i, url in enumerate(urls)]
    text = extract(_write_lines(tmp_path / "urls.pdf", [lines]), "pdf").text
    words = text.split()[6:]  # after "The following C2 URLs were observed:"
    assert words == urls[:-2] + ["hxxp://zeta[.]com/a/b.php?id=1"]  # a URL broken mid-path joins
    pages = [["It connects to alpha-"], ["185.220.101.4 daily ."]]
    across = write_pdf(tmp_path / "across.pdf", pages, running=False)
    assert "alpha- 185.220.101.4 daily ." in extract(across, "pdf").text  # nor across a page


def test_pdf_soft_hyphens_and_zero_width_characters_go(tmp_path):
    assert pdf_module._clean("evil\u00ad[.]com 185.220\u200b.101[.]4 a\u200c\u200d\u2060b") == (
        "evil[.]com 185.220.101[.]4 ab"
    )
    lines = [(40, "Soft hy\u00adphen in evil\u00ad[.]com and 185.220\u200b.101[.]4 too.")]
    text = extract(_write_lines(tmp_path / "soft.pdf", [lines], font=True), "pdf").text
    assert text == "Soft hyphen in evil[.]com and 185.220.101[.]4 too."


def test_pdf_lines_after_characters_outside_the_bmp(tmp_path):
    """PDFium counts text in UTF-16 units: lines after an Old Italic letter keep their place,
    so the paragraph after a gap is still a block of its own."""
    lines = [(40 + 5 * i, f"\U00010300\U00010300 line {i} of paragraph one") for i in range(6)]
    lines.append((90, "Second paragraph with 1.2.3[.]4 in it."))
    result = extract(_write_lines(tmp_path / "astral.pdf", [lines], font=True), "pdf")
    second = result.text.index("Second paragraph")
    assert second in result.block_starts and result.text[second - 2 : second] == "\n\n"


def test_pdf_open_errors_are_its_own(tmp_path):
    """An encrypted PDF read first does not make the next failure an encrypted one."""
    locked = fpdf.FPDF()
    locked.set_font("Helvetica", size=11)
    locked.add_page()
    locked.cell(0, 5, "APT28 used X-Agent .")
    locked.set_encryption(owner_password="owner", user_password="secret")
    locked.output(str(tmp_path / "locked.pdf"))
    catalog = b"<< /Type /Catalog /Pages 2 0 R >>"
    empty = raw_pdf([catalog, b"<< /Type /Pages /Kids [] /Count 0 >>"])
    with pytest.raises(DocumentError, match="encrypted PDF"):
        extract(tmp_path / "locked.pdf", "pdf")
    with pytest.raises(DocumentError, match="^cannot open: no pages, or a page tree PDFium"):
        extract(empty, "pdf")


_FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
_PAGE = (
    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
    b" /Resources << /Font << /F1 3 0 R >> >> /Contents 5 0 R >>"
)


def _stream(data: bytes) -> bytes:
    return b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


def test_pdf_page_limits(tmp_path, monkeypatch):
    """A million pages declared in a few KB fail before any is read; so do a page with too many
    objects, a page with more characters than are left, and a PDF read for too long."""
    kids = b" ".join([b"4 0 R"] * 1000)
    bomb = raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [6 0 R] /Count 1000000 >>",
            _FONT,
            _PAGE.replace(b"/Parent 2 0 R", b"/Parent 6 0 R"),
            _stream(b""),
            b"<< /Type /Pages /Kids [" + kids + b"] /Count 1000000 /Parent 2 0 R >>",
        ]
    )
    bomb = bomb.replace(b"/Kids [6 0 R]", b"/Kids [" + b" ".join([b"6 0 R"] * 1000) + b"]")
    started = time.monotonic()
    with pytest.raises(DocumentError, match="^too many pages: 1000000, over the limit of 2000$"):
        extract(bomb, "pdf")
    assert time.monotonic() - started < 5
    line = b"(" + b"A" * 50 + b") Tj T*\n"
    dense = raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
            _FONT,
            _PAGE,
            _stream(b"BT /F1 1 Tf 1 TL 0 700 Td\n" + line * 300 + b"ET"),
        ]
    )
    too_large = r"^too large: page 1 has 15\d{3} chars, over the 1000 left"
    with pytest.raises(DocumentError, match=too_large):
        extract(dense, "pdf", max_chars=1000)
    monkeypatch.setattr(pdf_module, "MAX_PAGE_OBJECTS", 100)
    too_many = "^page 1: too many objects: 300, over the limit of 100$"
    with pytest.raises(DocumentError, match=too_many):
        extract(dense, "pdf")
    monkeypatch.setattr(pdf_module, "MAX_SECONDS", -1.0)
    with pytest.raises(DocumentError, match="^too slow: 0 s to read 0 of 2 pages"):
        extract(write_pdf(tmp_path / "two.pdf", [["One ."], ["Two ."]]), "pdf")


def test_html_deeply_nested_text_is_kept_or_fails():
    """lxml stops at 255 nested elements by default and drops the rest without a word: 400
    unclosed <font> paragraphs keep all 400 addresses, and deeper nesting fails."""
    def page(n: int) -> bytes:
        paragraphs = "".join(
            f"<p><font>Indicator {i} is 10.0.{i // 256}.{i % 256} seen here.\n" for i in range(n)
        )
        return f"<!DOCTYPE html><html><body><article>{paragraphs}</article></body></html>".encode()

    text = extract(page(400), "html").text
    assert [i for i in range(400) if f"10.0.{i // 256}.{i % 256} " not in text] == []
    with pytest.raises(DocumentError, match="^nesting too deep: over 1000 levels"):
        extract(page(600), "html")


def test_html_too_many_elements_fails_before_extraction(monkeypatch):
    spans = "<span>x</span>" * 2000
    page = f"<!DOCTYPE html><html><body><article><p>{spans}</p></article></body></html>"
    monkeypatch.setattr(html_module, "MAX_ELEMENTS", 1000)
    with pytest.raises(DocumentError, match="^too many elements: 2004, over the limit of 1000$"):
        extract(page.encode(), "html")


@pytest.mark.parametrize("page", [b"   ", b"<!-- only a comment -->", b"\n<html></html>"])
def test_html_without_content_fails_as_a_document(page):
    with pytest.raises(DocumentError, match="no main text"):
        html_module.html_text(page)
