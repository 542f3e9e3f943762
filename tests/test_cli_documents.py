"""`secner annotate` on PDF and HTML reports and indicator lists: pages, offsets into the
extracted text, indicators beside the entities, and the inputs that fail."""

import csv
import json
import os
import threading
from pathlib import Path
from typing import Dict, List

import pytest
import spacy
from typer.testing import CliRunner

pytest.importorskip("pypdfium2")
pytest.importorskip("trafilatura")
fpdf = pytest.importorskip("fpdf")

from report_files import NAV_PAGE, REPORT_PAGES, raw_pdf, write_pdf  # noqa: E402

from spacy_secner.cli import app  # noqa: E402
from spacy_secner.tokenizer import build_cti_tokenizer  # noqa: E402

runner = CliRunner()
IOC_LIST = "Indicators\nhxxp://evil[.]com/gate.php\n185.220.101[.]4\nadmin[at]evil-mail[.]ru\n"


@pytest.fixture(scope="module")
def iocs_model_dir(trained_cnn_nlp, tmp_path_factory) -> Path:
    """The trained pipeline as en_secner has it: threat-report tokenizer, a sentencizer first
    and cti_iocs last."""
    path = tmp_path_factory.mktemp("cnn_iocs_model")
    trained_cnn_nlp.to_disk(path)
    nlp = spacy.load(path)
    nlp.tokenizer = build_cti_tokenizer(nlp)
    nlp.add_pipe("sentencizer", first=True)
    nlp.add_pipe("cti_iocs", last=True)
    nlp.to_disk(path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of reports: a two-page PDF, an HTML page with navigation, an indicator list,
    and four that give no text."""
    folder = tmp_path_factory.mktemp("reports")
    report = write_pdf(folder / "report.pdf", REPORT_PAGES)
    (folder / "blog.html").write_text(NAV_PAGE, encoding="utf-8")
    (folder / "iocs.txt").write_text(IOC_LIST, encoding="utf-8")
    data = report.read_bytes()
    (folder / "truncated.pdf").write_bytes(data[: len(data) // 2])
    scanned = fpdf.FPDF()
    scanned.add_page()
    scanned.rect(20, 20, 100, 150, style="F")
    scanned.output(str(folder / "scanned.pdf"))
    locked = fpdf.FPDF()
    locked.set_font("Helvetica", size=11)
    locked.add_page()
    locked.cell(0, 5, "APT28 used X-Agent .")
    locked.set_encryption(owner_password="owner", user_password="secret")
    locked.output(str(folder / "locked.pdf"))
    broken = NAV_PAGE.encode("utf-8").replace(b"Lazarus", b"Laz\xe9rus")
    (folder / "broken.htm").write_bytes(broken)
    return folder


def run(model_dir: Path, *args: str, **kwargs):
    return runner.invoke(app, ["annotate", "--model", str(model_dir), *args], **kwargs)


def read_jsonl(path: Path) -> List[Dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_reports_in_a_folder(iocs_model_dir, inputs, tmp_path):
    out, failed = tmp_path / "out.jsonl", tmp_path / "failed.jsonl"
    result = run(
        iocs_model_dir, str(inputs), "--keep-text", "-o", str(out), "--errors", str(failed)
    )
    assert result.exit_code == 1, result.output  # some inputs failed; the others are written
    records = {Path(r["id"]).name: r for r in read_jsonl(out)}
    assert sorted(records) == ["blog.html", "iocs.txt", "report.pdf"]
    reasons = {Path(r["id"]).name: r["reason"] for r in read_jsonl(failed)}
    assert reasons == {
        "broken.htm": "HTML: cannot decode as utf-8: byte 0xe9 at offset "
        f"{NAV_PAGE.encode('utf-8').index(b'Lazarus') + 3} "
        "(--encoding-errors replace annotates it anyway)",
        "locked.pdf": "PDF: encrypted PDF: it needs a password",
        "scanned.pdf": "PDF: no text layer: none of its 1 pages has text (a scanned PDF? "
        "OCR is not supported)",
        "truncated.pdf": "PDF: truncated or corrupt PDF: it does not end with %%EOF",
    }
    assert "7 documents read, 3 annotated, 0 skipped, 4 failed" in result.stderr
    for record in records.values():
        assert record["source"] == record["id"]
        for span in record["entities"] + record["iocs"]:
            assert record["text"][span["start"] : span["end"]] == span["text"]

    pdf = records["report.pdf"]
    assert "Page 1 of 2" not in pdf["text"] and "ACME" not in pdf["text"]
    ents = {(e["text"], e["label"], e["page"]) for e in pdf["entities"]}
    assert {("APT28", "HackOrg", 1), ("Lazarus Group", "HackOrg", 2)} <= ents
    assert {(i["value"], i["label"], i["page"]) for i in pdf["iocs"]} == {
        ("CVE-2017-11882", "cve", 1),
        ("http://evil.com/gate.php", "url", 1),
        ("evil.com", "domain", 2),
        ("185.220.101.4", "ipv4", 2),
        ("d41d8cd98f00b204e9800998ecf8427e", "md5", 2),
    }

    html = records["blog.html"]
    assert "Home" not in html["text"] and "All rights reserved" not in html["text"]
    assert all("page" not in e for e in html["entities"] + html["iocs"])
    assert ("APT28", "HackOrg") in {(e["text"], e["label"]) for e in html["entities"]}
    assert [(i["value"], i["label"]) for i in html["iocs"]] == [
        ("http://evil.com/gate.php", "url"),
        ("185.220.101.4", "ipv4"),
        ("evil.com", "domain"),
        ("CVE-2017-11882", "cve"),
    ]
    assert [(i["text"], i["value"], i["label"]) for i in records["iocs.txt"]["iocs"]] == [
        ("hxxp://evil[.]com/gate.php", "http://evil.com/gate.php", "url"),
        ("185.220.101[.]4", "185.220.101.4", "ipv4"),
        ("admin[at]evil-mail[.]ru", "admin@evil-mail.ru", "email"),
    ]
    assert records["iocs.txt"]["text"] == IOC_LIST
    assert "indicators: 12 (" in result.stderr


def test_formats_forced_and_sniffed(iocs_model_dir, inputs, tmp_path):
    """--input-format forces a kind whatever the suffix; auto reads content, stdin included."""
    disguised = tmp_path / "report.bin"
    disguised.write_bytes((inputs / "report.pdf").read_bytes())
    page_as_txt = tmp_path / "page.txt"
    page_as_txt.write_text(NAV_PAGE, encoding="utf-8")
    result = run(iocs_model_dir, str(disguised), "--input-format", "pdf")
    assert result.exit_code == 0, result.output
    assert [i["page"] for i in json.loads(result.stdout)["iocs"]] == [1, 1, 2, 2, 2]
    result = run(iocs_model_dir, str(page_as_txt))  # auto: HTML by its first bytes
    assert result.exit_code == 0, result.output
    assert "<nav>" not in result.stdout and json.loads(result.stdout)["iocs"]
    result = run(iocs_model_dir, str(page_as_txt), "--input-format", "text", "--keep-text")
    assert json.loads(result.stdout)["text"] == NAV_PAGE  # forced: markup and all
    result = run(iocs_model_dir, "-", input=(inputs / "report.pdf").read_bytes())
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["id"] == record["source"] == "<stdin>" and record["iocs"][-1]["page"] == 2
    result = run(iocs_model_dir, str(inputs / "iocs.txt"), "--input-format", "pdf")
    assert result.exit_code == 1 and "PDF: not a PDF (no %PDF- header)" in result.stderr


def test_a_pdf_through_a_pipe_is_sniffed_and_read_whole(iocs_model_dir, inputs):
    """`secner annotate <(curl ...)`: the path of a pipe, whose bytes can be read only once."""
    if not Path("/dev/fd").is_dir():
        pytest.skip("no /dev/fd")
    data = (inputs / "report.pdf").read_bytes()
    read_end, write_end = os.pipe()

    def write() -> None:
        with open(write_end, "wb") as pipe:
            pipe.write(data)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        result = run(iocs_model_dir, f"/dev/fd/{read_end}")
    finally:
        writer.join(timeout=60)
        os.close(read_end)
    assert result.exit_code == 0, result.output
    assert [i["page"] for i in json.loads(result.stdout)["iocs"]] == [1, 1, 2, 2, 2]


def test_a_text_report_quoting_a_pdf_header_stays_text(iocs_model_dir, tmp_path):
    report = tmp_path / "dropper.md"
    report.write_text(
        "The dropper writes a decoy that starts with %PDF-1.7 and calls " + IOC_LIST,
        encoding="utf-8",
    )
    result = run(iocs_model_dir, str(report), "--keep-text")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["text"] == report.read_text(encoding="utf-8") and record["iocs"]


@pytest.mark.parametrize("charset", ["rot13", "hex", "base64", "uu", "zlib", "undefined"])
def test_a_page_declaring_a_charset_that_is_no_text_encoding(iocs_model_dir, tmp_path, charset):
    """The declaration is ignored, as an unknown one is: the page is read as --encoding."""
    page = tmp_path / "page.html"
    page.write_text(
        NAV_PAGE.replace("<head>", f'<head><meta charset="{charset}">', 1), encoding="utf-8"
    )
    assert f'charset="{charset}"' in page.read_text(encoding="utf-8")
    result = run(iocs_model_dir, str(page))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id"] == str(page)


def test_csv_has_indicator_rows_and_no_formulas(iocs_model_dir, inputs, tmp_path):
    feed = tmp_path / "feed.jsonl"
    lines = [{"id": '=HYPERLINK("http://x")', "text": "Beacon to 185.220.101[.]4 ."}]
    feed.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    out = tmp_path / "out.csv"
    result = run(iocs_model_dir, str(inputs / "report.pdf"), str(feed), "-o", str(out))
    assert result.exit_code == 0, result.output
    with out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    iocs = [r for r in rows if r["kind"] == "ioc"]
    assert [(r["value"], r["page"]) for r in iocs][:2] == [
        ("CVE-2017-11882", "1"),
        ("http://evil.com/gate.php", "1"),
    ]
    assert {r["page"] for r in rows if r["kind"] == "entity" and "report" in r["doc_id"]} == {
        "1",
        "2",
    }
    assert iocs[-1]["doc_id"] == '\'=HYPERLINK("http://x")'
    assert (iocs[-1]["label"], iocs[-1]["value"], iocs[-1]["confidence"]) == (
        "ipv4",
        "185.220.101.4",
        "",
    )
    result = run(iocs_model_dir, str(feed), "--keep-text", "-o", str(tmp_path / "x.csv"))
    assert result.exit_code == 2 and "--keep-text" in result.output


def test_pipeline_saved_without_cti_iocs(inputs):
    """en_secner as saved by 0.1.0 (no cti_iocs) reads PDFs too: no "iocs" in its records."""
    saved = Path(__file__).parent / "fixtures" / "saved-0.1.0"
    result = run(saved, str(inputs / "report.pdf"), "--keep-text")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert "iocs" not in record and "indicators:" not in result.stderr
    for ent in record["entities"]:
        assert record["text"][ent["start"] : ent["end"]] == ent["text"]
        assert ent["page"] == (1 if ent["start"] < record["text"].index("Lazarus") else 2)


def test_documents_over_the_limits_fail_alone(iocs_model_dir, inputs, tmp_path):
    """A million pages in a few KB, a PDF with no pages read after an encrypted one, and a page
    nested too deep each fail with their own reason; the report beside them is annotated."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_locked.pdf").write_bytes((inputs / "locked.pdf").read_bytes())
    catalog = b"<< /Type /Catalog /Pages 2 0 R >>"
    empty_tree = b"<< /Type /Pages /Kids [] /Count 0 >>"
    (folder / "b_empty.pdf").write_bytes(raw_pdf([catalog, empty_tree]))
    page = b"<< /Type /Page /Parent 3 0 R /MediaBox [0 0 612 792] >>"
    thousand = b"<< /Type /Pages /Kids [" + b" ".join([b"4 0 R"] * 1000) + b"] /Count 1000 >>"
    million = b"<< /Type /Pages /Kids [" + b" ".join([b"3 0 R"] * 1000) + b"] /Count 1000000 >>"
    (folder / "c_bomb.pdf").write_bytes(raw_pdf([catalog, million, thousand, page]))
    (folder / "d_deep.html").write_text(
        "<html><body><article>" + "<div>" * 1200 + "<p>APT28 used X-Agent .</p></article>"
    )
    (folder / "e_report.pdf").write_bytes((inputs / "report.pdf").read_bytes())
    out, failed = tmp_path / "out.jsonl", tmp_path / "failed.jsonl"
    result = run(iocs_model_dir, str(folder), "-o", str(out), "--errors", str(failed))
    assert result.exit_code == 1, result.output
    assert [Path(r["id"]).name for r in read_jsonl(out)] == ["e_report.pdf"]
    assert {Path(r["id"]).name: r["reason"] for r in read_jsonl(failed)} == {
        "a_locked.pdf": "PDF: encrypted PDF: it needs a password",
        "b_empty.pdf": "PDF: cannot open: no pages, or a page tree PDFium cannot read",
        "c_bomb.pdf": "PDF: too many pages: 1000000, over the limit of 2000",
        "d_deep.html": "HTML: nesting too deep: over 1000 levels of elements",
    }
