"""Reports the document tests build: a PDF writer (fpdf2) and a blog page with navigation."""

from pathlib import Path
from typing import Sequence

import fpdf

HEADER = "ACME Threat Research | TLP:CLEAR"


def write_pdf(path: Path, pages: Sequence[Sequence[str]], *, running: bool = True) -> Path:
    """A PDF with one page per item; each item is a list of paragraphs, and a paragraph's
    explicit newlines are line breaks in the PDF. With `running`, every page gets a header and a
    "Page N of M" footer."""
    doc = fpdf.FPDF(format="A4")
    doc.set_auto_page_break(False)
    doc.set_font("Helvetica", size=11)
    for number, paragraphs in enumerate(pages, 1):
        doc.add_page()
        if running:
            doc.set_y(10)
            doc.cell(0, 5, HEADER, align="C")
        doc.set_y(30)
        for paragraph in paragraphs:
            doc.multi_cell(0, 6, paragraph)
            doc.ln(8)
        if running:
            doc.set_y(-15)
            doc.cell(0, 5, f"Page {number} of {len(pages)}", align="C")
    doc.output(str(path))
    return path


REPORT_PAGES = [
    [
        "Executive summary",
        "APT28 used X-\nAgent against NATO in 2016 .",
        "The loader exploited CVE-2017-\n11882 and called hxxp://evil[.]com/\ngate.php every hour.",
    ],
    [
        "Lazarus Group deployed WannaCry ransomware in May 2017 .",
        "Indicators\n- evil[.]com\n- 185.220.101[.]4\n- d41d8cd98f00b204e9800998ecf8427e",
    ],
]


NAV_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8">
<title>APT28 returns | ACME</title></head>
<body><nav><ul><li><a href="/">Home</a></li><li><a href="/blog">Blog</a></li>
<li>Contact us</li></ul></nav>
<main><article><h1>APT28 returns with X-Agent</h1>
<p>In 2016 , APT28 used X-Agent against NATO . The implant called hxxp://evil[.]com/gate.php daily
and reached 185.220.101[.]4 over port 443 when the first stage had finished its checks.</p>
<h2>Indicators</h2><ul><li>evil[.]com</li><li>CVE-2017-11882</li></ul>
<p>Lazarus Group deployed WannaCry ransomware in May 2017 , encrypting files at hospitals.</p>
</article></main>
<footer>© 2024 ACME Corp. All rights reserved. Privacy | Terms</footer></body></html>"""


def raw_pdf(objects: Sequence[bytes]) -> bytes:
    """A PDF of the given objects (1 is the catalog), with its cross-reference table."""
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)
