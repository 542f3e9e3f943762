"""`secner annotate` on hostile input: CSV cells a spreadsheet would run, markup in ids and
text, and errors reported in one line, before the model loads where they can be."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import List

import pytest
from conftest import TRAIN_TEXTS
from typer.testing import CliRunner

from spacy_secner.cli import app
from spacy_secner.cli.escapes import HIDDEN, visible
from spacy_secner.cli.writers import CsvWriter, neutralize_cell

runner = CliRunner()

FORMULAS = [
    '=HYPERLINK("http://evil.example","x")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1,2)",
    "\t=1+2",
    "\r=1+2",
    # Full-width forms, which spreadsheets in East Asian locales read as the ASCII ones.
    "＝1+1",
    "＋cmd|' /C calc'!A0",
    "－2+3",
    "＠SUM(1,2)",
]


@pytest.fixture(scope="module")
def model_dir(trained_cnn_nlp, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cnn_model")
    trained_cnn_nlp.to_disk(path)
    return path


def run(model_dir, *args: str, input=None):
    return runner.invoke(app, ["annotate", "--model", str(model_dir), *args], input=input)


def write_jsonl(path: Path, records: List[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf8")
    return path


@pytest.mark.parametrize("value", FORMULAS)
def test_formula_cells_are_neutralized(value):
    assert neutralize_cell(value) == "'" + value


@pytest.mark.parametrize("value", ["APT28", "", "'=quoted already", "a=b", " =1", "1-2"])
def test_other_cells_are_kept(value):
    assert neutralize_cell(value) == value


def shown(value: str) -> str:
    """A formula cell as CSV output shows it: quoted, or a carriage return written as `\\r`
    (no longer a formula)."""
    return value.replace("\r", "\\r") if value.startswith("\r") else "'" + value


def test_csv_writer_neutralizes_every_text_cell_and_quotes_every_field():
    out = io.StringIO()
    writer = CsvWriter(out)
    entities = [
        {"label": "@Label", "text": value, "start": i, "end": i + 1, "confidence": 0.5}
        for i, value in enumerate(FORMULAS)
    ]
    writer.write_record({"id": "=cmd|' /C calc'!A0", "entities": entities})
    plain = {"label": "Tool", "text": "X", "start": 0, "end": 1, "confidence": None}
    writer.write_record({"id": "doc", "entities": [plain]})
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["doc_id", "label", "text", "start", "end", "confidence", "kind", "value", "page"]
    assert [row[2] for row in rows[1:-1]] == [shown(value) for value in FORMULAS]
    assert {row[0] for row in rows[1:-1]} == {"'=cmd|' /C calc'!A0"}
    assert {row[1] for row in rows[1:-1]} == {"'@Label"}
    assert rows[-1] == ["doc", "Tool", "X", "0", "1", "", "entity", "", ""]
    # Every field quoted (OWASP), quotes inside doubled.
    expected = "".join(
        ",".join('"' + field.replace('"', '""') + '"' for field in row) + "\r\n" for row in rows
    )
    assert out.getvalue() == expected


def test_csv_output_of_hostile_ids(model_dir, tmp_path):
    docs = [{"id": value, "text": TRAIN_TEXTS[0]} for value in FORMULAS]
    path = write_jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / "ents.csv"
    result = run(model_dir, str(path), "-o", str(out))
    assert result.exit_code == 0, result.output
    with out.open(encoding="utf8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {row["doc_id"] for row in rows} == {shown(value) for value in FORMULAS}
    for row in rows:
        for column in ("doc_id", "label", "text"):
            assert not row[column].startswith(("=", "+", "-", "@", "\t", "\r"))
        assert TRAIN_TEXTS[0][int(row["start"]) : int(row["end"])] == row["text"]


class Elements(HTMLParser):
    """Every start tag, and all the text outside tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: List[str] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text += data


def test_html_report_escapes_ids_and_text(model_dir, tmp_path):
    hostile_id = '<script>alert("id")</script><img src=x onerror=alert(1)>'
    hostile_text = '<script>alert("text")</script> ' + TRAIN_TEXTS[0] + " <b>bold</b> & co"
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": hostile_id, "text": hostile_text}])
    report = tmp_path / "report.html"
    result = run(model_dir, str(path), "-o", str(report))
    assert result.exit_code == 0, result.output
    markup = report.read_text(encoding="utf8")
    parsed = Elements()
    parsed.feed(markup)
    assert "script" not in parsed.tags and "img" not in parsed.tags and "b" not in parsed.tags
    # Both are shown as text, as they were written.
    assert hostile_id in parsed.text
    assert '<script>alert("text")</script>' in parsed.text
    assert "<b>bold</b" in parsed.text and "& co" in parsed.text
    assert "mark" in parsed.tags  # the entities are still marked


class Marks(HTMLParser):
    """The text of each entity displaCy marks (before its label)."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: List[str] = []
        self.depth = 0  # 1 inside a mark, 2 inside its label

    def handle_starttag(self, tag, attrs):
        if tag == "mark" or (tag == "span" and self.depth):
            self.depth += 1
            if tag == "mark":
                self.marks.append("")

    def handle_endtag(self, tag):
        if self.depth and tag in ("mark", "span"):
            self.depth -= 1

    def handle_data(self, data):
        if self.depth == 1:
            self.marks[-1] += data


HIDING_ID = "invoice\u202efdp.exe\x1b]8;;http://evil.example\x07"
HIDING_TEXT = "\u202eredaolnwod\u202c \x1b[2J\x08 " + TRAIN_TEXTS[0] + " \u2066x\u2069 \x85"


def test_characters_that_hide_text_are_escaped_in_csv_and_html(model_dir, tmp_path):
    """Bidirectional overrides and control characters in ids and texts: CSV cells and the HTML
    page show them as escapes, and the page still marks the entities the CSV lists."""
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": HIDING_ID, "text": HIDING_TEXT}])
    tables, page = tmp_path / "ents.csv", tmp_path / "report.html"
    for out in (tables, page):
        result = run(model_dir, str(path), "-o", str(out))
        assert result.exit_code == 0, result.output
        assert not HIDDEN.search(out.read_text(encoding="utf8"))
    with tables.open(encoding="utf8", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["kind"] == "entity"]
    assert rows and {row["doc_id"] for row in rows} == {
        "invoice\\u202efdp.exe\\x1b]8;;http://evil.example\\x07"
    }
    for row in rows:  # offsets into the text as it was; the cell as it is shown
        assert row["text"] == visible(HIDING_TEXT[int(row["start"]) : int(row["end"])])
    marks = Marks()
    marks.feed(page.read_text(encoding="utf8"))
    assert [m.strip() for m in marks.marks] == [row["text"] for row in rows]
    parsed = Elements()
    parsed.feed(page.read_text(encoding="utf8"))
    assert "\\u202eredaolnwod\\u202c \\x1b[2J\\x08 " in parsed.text
    assert "invoice\\u202efdp.exe" in parsed.text


def test_run_messages_escape_what_inputs_hide(model_dir, tmp_path):
    """A failure line names the document with its control characters escaped: an id cannot
    clear or rewrite the analyst's terminal."""
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": "\x1b[2J" + HIDING_ID, "text": " "}])
    result = run(model_dir, str(path), "-o", str(tmp_path / "ents.csv"))
    assert result.exit_code == 0, result.output
    assert not HIDDEN.search(result.stderr)
    assert "skipped: \\x1b[2Jinvoice\\u202efdp.exe" in result.stderr


def test_output_whose_parent_is_a_file_fails_in_one_line_before_loading(tmp_path):
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "out.jsonl"
    # The model does not exist: the output is checked before the pipeline is loaded.
    for option in ("-o", "--errors"):
        result = run(tmp_path / "no-model", "-", option, str(target), input="x")
        assert result.exit_code == 2
        (line,) = result.stderr.splitlines()
        assert line == (
            f"secner annotate: error: {'--output' if option == '-o' else '--errors'}: cannot "
            f"create {target}: {tmp_path / 'afile'} is not a directory"
        )
    deeper = tmp_path / "afile" / "sub" / "out.jsonl"
    result = run(tmp_path / "no-model", "-", "-o", str(deeper), input="x")
    assert result.exit_code == 2
    assert f"{tmp_path / 'afile'} is not a directory" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any directory")
def test_output_without_permission_fails_in_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = run(tmp_path / "no-model", "-", "-o", str(locked / "out.jsonl"), input="x")
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"secner annotate: error: --output: cannot create {locked / 'out.jsonl'}: no "
        f"permission to write in {locked}"
    ]


@pytest.fixture(scope="module")
def corrupt_model_dir(model_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corrupt") / "model"
    shutil.copytree(model_dir, path)
    weights = path / "ner_crf" / "model"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return path


def run_console_script(*args: str, input: str = "") -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("secner")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(script), "annotate", *args],
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_a_corrupt_model_is_one_line_and_debug_shows_the_traceback(corrupt_model_dir):
    proc = run_console_script("-", "--model", str(corrupt_model_dir), input="APT28 .")
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    prefix = f"secner annotate: error: --model: cannot load the pipeline {corrupt_model_dir}"
    assert line.startswith(prefix)
    assert "corrupt or truncated" in line
    assert line.endswith("(--debug shows the traceback)")

    proc = run_console_script("-", "--model", str(corrupt_model_dir), "--debug", input="APT28 .")
    assert proc.returncode == 2
    assert "Traceback (most recent call last):" in proc.stderr
    assert "corrupt or truncated" in proc.stderr.splitlines()[-1]
    # A plain traceback: no local variables (rich prints them as `name = value` in a box).
    assert "locals" not in proc.stderr and "│" not in proc.stderr


def test_usage_errors_are_one_line(model_dir, tmp_path):
    cases = [
        (["-", "--encoding", "no-such-codec"], "--encoding: unknown encoding 'no-such-codec'"),
        ([str(tmp_path / "missing.txt")], f"no such file or directory: {tmp_path / 'missing.txt'}"),
        (["-", "--resume"], "--resume needs --output"),
    ]
    for args, message in cases:
        result = run(model_dir, *args, input="x")
        assert result.exit_code == 2, args
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"secner annotate: error: {message}")


def test_tracebacks_never_show_locals():
    assert app.pretty_exceptions_show_locals is False
