"""PDF and HTML to text: pages, blocks, hyphenation, headers and footers, and the inputs that
give no text. Every file is built here (fpdf2 writes the PDFs)."""

import os
from pathlib import Path
from typing import List

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
from spacy_secner.documents import pdf as pdf_module  # noqa: E402
from spacy_secner.tokenizer import build_cti_tokenizer  # noqa: E402
from report_files import HEADER, NAV_PAGE, REPORT_PAGES, write_pdf  # noqa: E402


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

    def counting(source):
        for page in real(source):
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
