"""PDF text extraction: pypdfium2 (what `spacy_secner.documents` uses) against pdfplumber.

    python bench/bench_documents.py run [--pages 10,40,200] [--out FILE.json]

Writes threat-report-like PDFs with fpdf2 (running header and footer, paragraphs with
indicators, words hyphenated at line ends, an indicator list per page), then reads each one in
a fresh process per reader, so peak memory is that reader's alone:
- `pypdfium2`: the bare library, each page's text (`get_text_range`);
- `documents`: `spacy_secner.documents.extract` (pypdfium2 plus headers, footers, paragraphs,
  hyphens);
- `pdfplumber`: each page's `extract_text()` (pdfminer.six layout analysis).
"planted" counts the strings written into the report that come out whole (whitespace
collapsed): indicators and the hyphenated names; "running" counts header/footer lines left in.
Needs the `documents`, `test` (fpdf2) and `compare` (pdfplumber) extras.
"""

import importlib
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import typer

ROOT = Path(__file__).parent.parent
HEADER = "Threat Research Report | TLP:CLEAR"
PARAGRAPH = (
    "In wave {n}, the operators behind APT{n} sent spear-\nphishing e-mails that dropped the X-\n"
    "Agent implant. It beaconed to hxxp://update-{n}[.]example-cdn[.]com/gate.php and to "
    "185.220.{m}[.]{n}, exploited CVE-2017-11882 and persisted under "
    "HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run. Analysts saw lateral movement "
    "over SMB to file servers and the staging of archives in C:\\ProgramData\\Intel\\u{n}.exe "
    "before exfiltration over HTTPS."
)
PLANTED = (
    "spear-phishing",
    "X-Agent",
    "hxxp://update-{n}[.]example-cdn[.]com/gate.php",
    "185.220.{m}[.]{n}",
    "CVE-2017-11882",
    "HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run",
    "C:\\ProgramData\\Intel\\u{n}.exe",
    "d41d8cd98f00b204e9800998ecf8{n:04d}",
)
IMPORTS = {
    "pypdfium2": "pypdfium2",
    "documents": "spacy_secner.documents.pdf",
    "pdfplumber": "pdfplumber",
}
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def write_report(path: Path, n_pages: int) -> List[str]:
    """A report of `n_pages` pages; RETURNS the strings planted in it."""
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_font("Helvetica", size=10)
    planted = []
    for page in range(1, n_pages + 1):
        pdf.add_page()
        pdf.set_y(10)
        pdf.cell(0, 5, HEADER, align="C")
        pdf.set_y(25)
        for k in range(3):
            n, m = page * 3 + k, (page + k) % 250
            pdf.multi_cell(0, 5, PARAGRAPH.format(n=n, m=m))
            pdf.ln(4)
            planted += [s.format(n=n, m=m) for s in PLANTED[:-1]]
        pdf.multi_cell(
            0, 5, "Indicators\n- " + PLANTED[-1].format(n=page) + "\n- evil-" + str(page) + "[.]net"
        )
        planted.append(PLANTED[-1].format(n=page))
        pdf.set_y(-15)
        pdf.cell(0, 5, f"Page {page} of {n_pages}", align="C")
    pdf.output(str(path))
    return planted


def read_text(reader: str, path: Path) -> str:
    if reader == "pypdfium2":
        import pypdfium2 as pdfium

        pdf = pdfium.PdfDocument(str(path))
        parts = []
        for index in range(len(pdf)):
            page = pdf[index]
            textpage = page.get_textpage()
            parts.append(textpage.get_text_range())
            textpage.close()
            page.close()
        pdf.close()
        return "\n".join(parts)
    if reader == "documents":
        from spacy_secner.documents import extract

        return extract(path, "pdf").text
    if reader == "pdfplumber":
        import pdfplumber

        parts = []
        with pdfplumber.open(str(path)) as pdf:
            for page in pdf.pages:
                parts.append(page.extract_text() or "")
                page.close()  # frees the page's cached layout objects
        return "\n".join(parts)
    raise ValueError(reader)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@app.command()
def worker(reader: str, path: Path, planted_file: Path) -> None:
    """Read one PDF with one reader; print seconds, peak RSS and what came out whole. The
    reader's modules are imported first: neither their import time nor their memory counts."""
    importlib.import_module(IMPORTS[reader])
    baseline = _peak_rss_mib()
    start = time.perf_counter()
    text = read_text(reader, path)
    seconds = time.perf_counter() - start
    flat = " ".join(text.split())
    planted = json.loads(planted_file.read_text(encoding="utf-8"))
    result = {
        "seconds": seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "peak_rss_growth_mib": _peak_rss_mib() - baseline,
        "chars": len(text),
        "planted_whole": sum(1 for s in planted if s in flat),
        "planted": len(planted),
        "running_lines_left": flat.count(HEADER) + len(re.findall(r"Page \d+ of \d+", flat)),
    }
    print(json.dumps(result))


@app.command("run")
def main(
    pages: str = typer.Option("10,40,200", help="Report lengths in pages"),
    readers: str = typer.Option("pypdfium2,documents,pdfplumber"),
    out: Optional[Path] = typer.Option(None, dir_okay=False, help="Write the figures as JSON"),
) -> None:
    results: Dict[str, Dict[str, Dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n_pages in (int(p) for p in pages.split(",")):
            path = Path(tmp) / f"report-{n_pages}.pdf"
            planted_file = Path(tmp) / f"planted-{n_pages}.json"
            planted_file.write_text(json.dumps(write_report(path, n_pages)), encoding="utf-8")
            for reader in readers.split(","):
                proc = subprocess.run(
                    [sys.executable, __file__, "worker", reader, str(path), str(planted_file)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["pages_per_s"] = n_pages / row["seconds"]
                results.setdefault(str(n_pages), {})[reader] = row
    lines = [
        "| pages | reader | s | pages/s | peak RSS MiB (growth while reading) | planted whole "
        "| running lines left |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n_pages, rows in results.items():
        for reader, row in rows.items():
            lines.append(
                f"| {n_pages} | {reader} | {row['seconds']:.2f} | {row['pages_per_s']:.1f} | "
                f"{row['peak_rss_mib']:.0f} (+{row['peak_rss_growth_mib']:.0f}) | "
                f"{row['planted_whole']}/{row['planted']} | {row['running_lines_left']} |"
            )
    typer.echo("\n".join(lines))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    app()
