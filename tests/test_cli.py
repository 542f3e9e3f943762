"""`secner annotate`: inputs, output formats, bad inputs, atomic output and exit codes."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import spacy
from conftest import GOLD_ENTS, TRAIN_TEXTS
from spacy.language import Language
from spacy.tokens import Doc
from typer.testing import CliRunner

from spacy_secner.cli import readers, writers
from spacy_secner.cli import app

runner = CliRunner()


@Language.component("secner_test_fail_on_boom")
def fail_on_boom(doc: Doc) -> Doc:
    if "BOOM" in doc.text:
        raise RuntimeError("this doc goes boom")
    return doc


@pytest.fixture(scope="module")
def model_dir(trained_cnn_nlp, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cnn_model")
    trained_cnn_nlp.to_disk(path)
    return path


@pytest.fixture(scope="module")
def fragile_model_dir(model_dir, tmp_path_factory) -> Path:
    """The trained pipeline plus a component that raises on any text with "BOOM" in it."""
    path = tmp_path_factory.mktemp("fragile_model")
    nlp = spacy.load(model_dir)
    nlp.add_pipe("secner_test_fail_on_boom")
    nlp.to_disk(path)
    return path


def run(model_dir: Path, *args: str, input: Optional[str] = None):
    return runner.invoke(app, ["annotate", "--model", str(model_dir), *args], input=input)


def read_jsonl(text: str) -> List[Dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def check_offsets(records: List[Dict], texts: Dict[str, str]) -> None:
    for record in records:
        for ent in record["entities"]:
            assert texts[record["id"]][ent["start"] : ent["end"]] == ent["text"]
            assert ent["confidence"] is None or 0.0 <= ent["confidence"] <= 1.0


def pairs(record: Dict) -> List[Tuple[str, str]]:
    return [(ent["text"], ent["label"]) for ent in record["entities"]]


def write_texts(directory: Path, texts: Dict[str, str]) -> Dict[str, str]:
    """Write each text to directory/name; RETURNS the texts by path as the CLI names them."""
    by_id = {}
    for name, text in texts.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf8")
        by_id[str(path)] = text
    return by_id


def test_help_lists_annotate():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "annotate" in result.stdout


def test_text_file_to_jsonl(model_dir, tmp_path):
    # A trailing newline: offsets stay those of the file's text.
    texts = write_texts(tmp_path, {"a.txt": TRAIN_TEXTS[0] + "\n"})
    result = run(model_dir, str(tmp_path / "a.txt"))
    assert result.exit_code == 0, result.output
    records = read_jsonl(result.stdout)
    assert [r["id"] for r in records] == [str(tmp_path / "a.txt")]
    assert pairs(records[0]) == GOLD_ENTS[0]
    check_offsets(records, texts)
    assert "1 document read, 1 annotated, 0 skipped, 0 failed" in result.stderr
    assert "HackOrg 1" in result.stderr


def test_directory_is_searched_recursively_with_glob(model_dir, tmp_path):
    texts = write_texts(
        tmp_path / "in",
        {"b.txt": TRAIN_TEXTS[1], "deep/er/c.txt": TRAIN_TEXTS[2], "notes.md": TRAIN_TEXTS[3]},
    )
    result = run(model_dir, str(tmp_path / "in"))
    assert result.exit_code == 0, result.output
    records = read_jsonl(result.stdout)
    assert [r["id"] for r in records] == [
        str(tmp_path / "in" / "b.txt"),
        str(tmp_path / "in" / "deep" / "er" / "c.txt"),
    ]
    assert [pairs(r) for r in records] == GOLD_ENTS[1:3]
    check_offsets(records, texts)
    result = run(model_dir, str(tmp_path / "in"), "--glob", "*.md")
    assert [r["id"] for r in read_jsonl(result.stdout)] == [str(tmp_path / "in" / "notes.md")]
    result = run(model_dir, str(tmp_path / "in"), "--glob", "*.rst")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "no input files (none matched --glob '*.rst')" in result.stderr


def test_jsonl_input_keeps_ids(model_dir, tmp_path):
    lines = [{"id": f"doc-{i}", "text": text} for i, text in enumerate(TRAIN_TEXTS)]
    lines[4]["id"] = 7  # written back as a string
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n", encoding="utf8")
    result = run(model_dir, str(path))
    assert result.exit_code == 0, result.output
    records = read_jsonl(result.stdout)
    assert [r["id"] for r in records] == ["doc-0", "doc-1", "doc-2", "doc-3", "7"]
    assert [pairs(r) for r in records] == GOLD_ENTS
    check_offsets(records, {str(line["id"]): line["text"] for line in lines})


def test_stdin_text_and_jsonl(model_dir):
    result = run(model_dir, "-", input=TRAIN_TEXTS[3])
    assert result.exit_code == 0, result.output
    records = read_jsonl(result.stdout)
    assert [(r["id"], pairs(r)) for r in records] == [("<stdin>", GOLD_ENTS[3])]
    jsonl = json.dumps({"id": "x", "text": TRAIN_TEXTS[4]}) + "\n"
    result = run(model_dir, "-", "--input-format", "jsonl", input=jsonl)
    assert [(r["id"], pairs(r)) for r in read_jsonl(result.stdout)] == [("x", GOLD_ENTS[4])]


def test_csv_output_one_row_per_entity(model_dir, tmp_path):
    texts = write_texts(tmp_path, {f"{i}.txt": text for i, text in enumerate(TRAIN_TEXTS)})
    out = tmp_path / "out" / "ents.csv"
    result = run(model_dir, *texts, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    with out.open(encoding="utf8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "doc_id",
        "label",
        "text",
        "start",
        "end",
        "confidence",
        "kind",
        "value",
        "page",
    ]
    expected = [(path, ent) for path, ents in zip(texts, GOLD_ENTS) for ent in ents]
    assert [(r["doc_id"], (r["text"], r["label"])) for r in rows] == expected
    for row in rows:
        assert texts[row["doc_id"]][int(row["start"]) : int(row["end"])] == row["text"]
        assert row["confidence"] == "" or 0.0 <= float(row["confidence"]) <= 1.0
        assert (row["kind"], row["value"], row["page"]) == ("entity", "", "")


def test_confidence_is_null_when_the_pipe_gives_none(model_dir, tmp_path):
    # A setting changed through the config, as spaCy saves and loads it.
    nlp = spacy.load(model_dir, config={"components": {"ner_crf": {"confidence": False}}})
    nlp.to_disk(tmp_path / "no_confidence")
    result = run(tmp_path / "no_confidence", "-", input=TRAIN_TEXTS[0])
    entities = read_jsonl(result.stdout)[0]["entities"]
    assert [ent["text"] for ent in entities] == [text for text, _ in GOLD_ENTS[0]]
    assert all(ent["confidence"] is None for ent in entities)


class MarkCollector(HTMLParser):
    """The text of each <mark> (entity text and label), the <h2> titles and the <meta> tags."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: List[str] = []
        self.titles: List[str] = []
        self.metas: List[Dict[str, Optional[str]]] = []
        self._in: Optional[str] = None

    def handle_starttag(self, tag, attrs):
        if tag in ("mark", "h2"):
            self._in = tag
            (self.marks if tag == "mark" else self.titles).append("")
        elif tag == "meta":
            self.metas.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in:
            target = self.marks if self._in == "mark" else self.titles
            target[-1] += data


def parse_html(markup: str) -> MarkCollector:
    parser = MarkCollector()
    parser.feed(markup)
    return parser


HTML_TEXTS = {f"<doc {i}>": text for i, text in enumerate(TRAIN_TEXTS[:3])}
HTML_TEXTS["Kaspersky’s report"] = TRAIN_TEXTS[3]
HTML_ENTS = [ent for ents in GOLD_ENTS[:4] for ent in ents]


def write_html_report(model_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "docs.jsonl"
    records = [{"id": k, "text": v} for k, v in HTML_TEXTS.items()]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    report = tmp_path / "report.html"
    result = run(model_dir, str(path), "-o", str(report))
    assert result.exit_code == 0, result.output
    return report


def test_html_report(model_dir, tmp_path):
    markup = write_html_report(model_dir, tmp_path).read_text(encoding="utf8")
    parsed = parse_html(markup)
    assert {"charset": "utf-8"} in parsed.metas
    # Doc ids are escaped: "<doc 0>" is a title, not a tag.
    assert parsed.titles == list(HTML_TEXTS)
    expected = HTML_ENTS
    assert [tuple(mark.split()[:-1]) for mark in parsed.marks] == [
        tuple(text.split()) for text, _ in expected
    ]
    assert [mark.split()[-1] for mark in parsed.marks] == [label for _, label in expected]
    assert f"background: {writers.DNRTI_COLORS['HackOrg']}" in markup


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="chromium is not installed (test_html_report checks the markup without it)",
)
def test_html_report_renders_in_a_browser(model_dir, tmp_path):
    """The page as headless Chromium renders it: every entity marked, the UTF-8 title read
    as UTF-8, not a guessed encoding."""
    report = write_html_report(model_dir, tmp_path)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--dump-dom",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = parse_html(proc.stdout)
    rendered = " ".join(" ".join(mark.split()) for mark in dom.marks)
    for text, _ in HTML_ENTS:
        assert text in rendered
    assert dom.titles[-1] == "Kaspersky’s report"  # read as UTF-8, not a guessed encoding


def test_bad_inputs_are_reported_and_the_rest_annotated(model_dir, tmp_path):
    good = write_texts(
        tmp_path / "in", {"good.txt": TRAIN_TEXTS[0], "sub/good2.txt": TRAIN_TEXTS[1]}
    )
    (tmp_path / "in" / "latin1.txt").write_bytes("Café APT28 à NATO".encode("latin-1"))
    (tmp_path / "in" / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "in" / "empty.txt").write_text("")
    (tmp_path / "in" / "blank.txt").write_text("  \n\n")
    (tmp_path / "in" / "huge.txt").write_text("APT28 " * 100)
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(
        json.dumps({"id": "j1", "text": TRAIN_TEXTS[2]})
        + '\n{"id": "j2", "text": \n'
        + '["not", "an", "object"]\n'
        + json.dumps({"id": "j4"})
        + "\n"
        + json.dumps({"id": "j5", "text": TRAIN_TEXTS[3]})
        + "\n",
        encoding="utf8",
    )
    errors = tmp_path / "errors.jsonl"
    out = tmp_path / "out.jsonl"
    args = [str(tmp_path / "in"), str(jsonl), "-o", str(out), "--errors", str(errors)]
    result = run(model_dir, *args, "--max-chars", "300")
    assert result.exit_code == 1, result.output
    records = read_jsonl(out.read_text(encoding="utf8"))
    assert [r["id"] for r in records] == [
        str(tmp_path / "in" / "good.txt"),
        str(tmp_path / "in" / "sub" / "good2.txt"),
        "j1",
        "j5",
    ]
    assert [pairs(r) for r in records] == [GOLD_ENTS[0], GOLD_ENTS[1], GOLD_ENTS[2], GOLD_ENTS[3]]
    check_offsets(records, {**good, "j1": TRAIN_TEXTS[2], "j5": TRAIN_TEXTS[3]})
    problems = {p["id"]: (p["status"], p["reason"]) for p in read_jsonl(errors.read_text())}
    name = lambda n: str(tmp_path / "in" / n)  # noqa: E731
    assert problems == {
        name("latin1.txt"): (
            "failed",
            "cannot decode as utf-8: byte 0xe9 at offset 3 "
            "(--encoding-errors replace annotates it anyway)",
        ),
        name("image.txt"): ("failed", "binary file (contains NUL bytes)"),
        name("empty.txt"): ("skipped", "empty"),
        name("blank.txt"): ("skipped", "empty"),
        name("huge.txt"): ("failed", "too large: 600 chars > limit of 300"),
        f"{jsonl}:2": ("failed", "invalid JSON: Expecting value at column 22"),
        f"{jsonl}:3": ("failed", "not a JSON object but list"),
        "j4": ("failed", f'{jsonl}:4: no "text" string'),
    }
    assert "12 documents read, 4 annotated, 2 skipped, 6 failed" in result.stderr
    assert f"failed: {name('image.txt')}: binary file (contains NUL bytes)" in result.stderr

    # --encoding-errors replace annotates the undecodable file; -q prints only the failures.
    result = run(model_dir, *args, "--max-chars", "300", "--encoding-errors", "replace", "-q")
    assert result.exit_code == 1
    assert str(tmp_path / "in" / "latin1.txt") in [r["id"] for r in read_jsonl(out.read_text())]
    assert "documents read" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 5


def test_huge_file_is_not_read(model_dir, tmp_path):
    path = tmp_path / "huge.txt"
    path.write_text("x" * 50)
    result = run(model_dir, str(path), "--max-chars", "10")
    assert result.exit_code == 1
    assert "too large: 50 bytes, over the limit of 10 chars" in result.stderr


def test_a_jsonl_line_past_the_byte_limit_fails_alone(model_dir, tmp_path, monkeypatch):
    """A JSONL line longer than any document it may hold fails as too large without being held
    whole; the lines after it are read and keep their numbers."""
    from spacy_secner.cli import readers

    monkeypatch.setattr(readers, "jsonl_line_limit", lambda max_chars: 4 * max_chars)
    path = tmp_path / "feed.jsonl"
    lines = [
        {"id": "a", "text": TRAIN_TEXTS[0]},
        {"id": "long", "text": "x" * 5000},
        {"id": "b", "text": TRAIN_TEXTS[1]},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    errors = tmp_path / "errors.jsonl"
    result = run(model_dir, str(path), "--max-chars", "1000", "--errors", str(errors))
    assert result.exit_code == 1
    assert [r["id"] for r in read_jsonl(result.stdout)] == ["a", "b"]
    (failure,) = read_jsonl(errors.read_text())
    assert failure["id"] == f"{path}:2"
    assert failure["reason"] == "too large: a line over 4000 bytes, the limit for 1000 chars"


def test_bounded_lines_never_hold_a_long_line():
    import io

    from spacy_secner.cli.readers import bounded_lines

    data = b"ab\n" + b"x" * 100 + b"\n\ncd\n" + b"y" * 11
    assert list(bounded_lines(io.BytesIO(data), 10)) == [b"ab\n", None, b"\n", b"cd\n", None]
    assert list(bounded_lines(io.BytesIO(b"0123456789\n" + b"z" * 10), 10)) == [
        b"0123456789\n",
        b"z" * 10,
    ]


def test_a_doc_the_pipeline_fails_on_fails_alone(fragile_model_dir, tmp_path):
    lines = [{"id": str(i), "text": text} for i, text in enumerate(TRAIN_TEXTS)]
    lines.insert(2, {"id": "boom", "text": "APT28 goes BOOM ."})
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run(fragile_model_dir, str(path), "--batch-size", "2")
    assert result.exit_code == 1, result.output
    records = read_jsonl(result.stdout)
    assert [(r["id"], pairs(r)) for r in records] == [
        (str(i), ents) for i, ents in enumerate(GOLD_ENTS)
    ]
    assert "failed: boom: pipeline error: RuntimeError: this doc goes boom" in result.stderr


def test_usage_errors_exit_2(model_dir, tmp_path):
    assert run(model_dir, str(tmp_path / "missing.txt")).exit_code == 2
    assert run(model_dir, "-", "--encoding", "no-such-codec").exit_code == 2
    assert run(tmp_path / "no-model", "-", input="x").exit_code == 2
    assert run(model_dir, "-", "--format", "xml").exit_code == 2


@pytest.mark.parametrize(
    "encoding, reason",
    [
        ("no-such-codec", "unknown encoding 'no-such-codec'"),
        ("hex", "'hex' is not a text encoding"),
        ("rot13", "'rot13' is not a text encoding"),
        ("utf-16", "'utf-16' does not read ASCII bytes as ASCII"),
        ("utf-32", "'utf-32' does not read ASCII bytes as ASCII"),
    ],
)
def test_encodings_that_cannot_read_the_inputs_exit_2_before_loading(tmp_path, encoding, reason):
    """The pipeline named does not exist: the error must come before it is loaded."""
    path = tmp_path / "a.txt"
    path.write_text(TRAIN_TEXTS[0], encoding="utf8")
    result = run(tmp_path / "no-model", str(path), "--encoding", encoding)
    assert result.exit_code == 2
    assert f"error: --encoding: {reason}" in result.stderr


def test_an_input_is_never_the_output(tmp_path):
    feed = tmp_path / "feed.jsonl"
    feed.write_text(json.dumps({"id": "a", "text": TRAIN_TEXTS[0]}) + "\n", encoding="utf8")
    (tmp_path / "link.jsonl").symlink_to(feed)
    before = feed.read_bytes()
    for option, target in [("-o", feed), ("--errors", feed), ("-o", tmp_path / "link.jsonl")]:
        result = run(tmp_path / "no-model", str(feed), option, str(target))
        assert result.exit_code == 2
        shown = "--output" if option == "-o" else "--errors"
        assert f"error: {shown}: {target} is an input file" in result.stderr
    assert feed.read_bytes() == before
    # A file found under an input directory is an input too (before the model loads).
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "apt28.txt").write_text(TRAIN_TEXTS[0], encoding="utf8")
    for option in ("-o", "--errors"):
        result = run(tmp_path / "no-model", str(reports), option, str(reports / "apt28.txt"))
        assert result.exit_code == 2, result.output
        assert f"{reports / 'apt28.txt'} is an input file" in result.stderr
    assert (reports / "apt28.txt").read_text(encoding="utf8") == TRAIN_TEXTS[0]


def non_utf8_name(directory: Path) -> Path:
    """A file whose name is not valid UTF-8 (`café.txt` in Latin-1), where the OS allows one."""
    path = directory / os.fsdecode(b"caf\xe9.txt")
    try:
        path.write_text(TRAIN_TEXTS[1], encoding="utf8")
    except (OSError, UnicodeEncodeError):
        pytest.skip("the file system refuses names that are not UTF-8")
    return path


def test_ids_that_are_not_valid_unicode(model_dir, tmp_path):
    """UTF-8 cannot encode a lone surrogate: ids are escaped, texts fail by their line."""
    folder = tmp_path / "in"
    folder.mkdir()
    non_utf8_name(folder)
    feed = tmp_path / "feed.jsonl"
    lines = [
        {"id": "bad\ud800", "text": TRAIN_TEXTS[2]},
        {"id": "broken-text", "text": "APT28 \udc00 ."},
        {"id": "ok", "text": TRAIN_TEXTS[3]},
    ]
    feed.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="ascii")
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    result = run(model_dir, str(folder), str(feed), "-o", str(out), "--errors", str(errors))
    assert result.exit_code == 1, result.output
    records = read_jsonl(out.read_text(encoding="utf8"))
    assert [r["id"] for r in records] == [f"{folder}{os.sep}caf\\xe9.txt", "bad\\ud800", "ok"]
    assert [pairs(r) for r in records] == [GOLD_ENTS[1], GOLD_ENTS[2], GOLD_ENTS[3]]
    (problem,) = read_jsonl(errors.read_text(encoding="utf8"))
    assert problem == {
        "id": "broken-text",
        "status": "failed",
        "reason": f"{feed}:2: not valid Unicode: lone surrogate U+DC00 at offset 6 "
        "(--encoding-errors replace annotates it anyway)",
    }
    result = run(model_dir, str(feed), "--encoding-errors", "replace", "--keep-text")
    assert result.exit_code == 0, result.output
    assert read_jsonl(result.stdout)[1]["text"] == "APT28 \ufffd ."


def pipe_holding(data: bytes) -> Path:
    """A pipe with `data` in it and its write end closed, as `<(...)` gives: its path can be
    opened more than once, and the bytes are there once only."""
    if not Path("/dev/fd").is_dir():
        pytest.skip("no /dev/fd")
    read_end, write_end = os.pipe()
    assert len(data) <= 60_000  # fits in the pipe's buffer: no writer thread needed
    os.write(write_end, data)
    os.close(write_end)
    return Path(f"/dev/fd/{read_end}")


def test_a_pipe_is_read_once_and_whole(model_dir):
    text = " ".join(TRAIN_TEXTS) * 60  # more than a read buffer or two
    pipe = pipe_holding(text.encode("utf8"))
    try:
        result = run(model_dir, str(pipe), "--keep-text")
    finally:
        os.close(int(pipe.name))
    assert result.exit_code == 0, result.output
    (record,) = read_jsonl(result.stdout)
    assert record["id"] == str(pipe) and record["text"] == text


def test_a_pipe_past_the_byte_limit_is_not_read_to_its_end(model_dir):
    pipe = pipe_holding(b"APT28 " * 5000)
    try:
        result = run(model_dir, str(pipe), "--max-chars", "1000")
    finally:
        os.close(int(pipe.name))
    assert result.exit_code == 1
    assert f"failed: {pipe}: too large: over 4000 bytes, the limit for 1000 chars" in (
        result.stderr
    )


def test_output_is_replaced_only_when_the_run_completes(model_dir, tmp_path, monkeypatch):
    texts = write_texts(tmp_path / "in", {f"{i}.txt": text for i, text in enumerate(TRAIN_TEXTS)})
    out = tmp_path / "out" / "ents.jsonl"
    journal = tmp_path / "out" / ".ents.jsonl.journal"
    out.parent.mkdir()
    out.write_text("previous run\n")
    write_record = writers.JsonlWriter.write_record
    written = []

    def crash_on_third(self, record):
        if len(written) == 2:
            raise RuntimeError("simulated crash")
        written.append(record["id"])
        write_record(self, record)

    # A crash while the output is written: the old output stays, the journal is kept.
    monkeypatch.setattr(writers.JsonlWriter, "write_record", crash_on_third)
    result = run(model_dir, str(tmp_path / "in"), "-o", str(out))
    assert result.exit_code == 1
    assert written == list(texts)[:2]
    assert out.read_text() == "previous run\n"
    assert sorted(os.listdir(out.parent)) == [journal.name, "ents.jsonl"]
    (line,) = result.stderr.splitlines()
    assert "RuntimeError: simulated crash" in line
    assert f"the 5 finished documents are kept in {journal}: rerun with --resume" in line

    monkeypatch.setattr(writers.JsonlWriter, "write_record", write_record)
    result = run(model_dir, str(tmp_path / "in"), "-o", str(out), "--resume")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in read_jsonl(out.read_text())] == list(texts)
    assert os.listdir(out.parent) == ["ents.jsonl"]

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("spacy_secner.cli.annotate.Journal.append", interrupt)
    before = out.read_text()
    result = run(model_dir, str(tmp_path / "in"), "-o", str(out))
    assert result.exit_code == 130
    assert f"interrupted, {out} not written" in result.stderr
    assert out.read_text() == before
    assert os.listdir(out.parent) == ["ents.jsonl"]  # no journal: nothing was finished

    monkeypatch.undo()
    new = tmp_path / "out" / "new.jsonl"
    assert run(model_dir, str(tmp_path / "in"), "-o", str(new)).exit_code == 0
    assert len(read_jsonl(new.read_text())) == len(TRAIN_TEXTS)
    umask = os.umask(0)
    os.umask(umask)
    assert new.stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_error_reading_the_inputs_ends_the_run(model_dir, tmp_path, monkeypatch):
    """Unlike a pipeline error, it cannot be retried: no later document may go missing quietly."""

    def broken_reader(*args, **kwargs):
        yield readers.Document("a", TRAIN_TEXTS[0])
        raise OSError("disk on fire")

    monkeypatch.setattr("spacy_secner.cli.annotate.read_inputs", broken_reader)
    out = tmp_path / "out.jsonl"
    result = run(model_dir, "-", "-o", str(out), input="")
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert "reading the inputs failed: disk on fire" in line
    assert os.listdir(tmp_path) == []


def test_n_process_2_gives_the_same_output(fragile_model_dir, tmp_path):
    """Also when a worker process raises: the batch it had is retried in the main process."""
    lines = [{"id": str(i), "text": TRAIN_TEXTS[i % 5]} for i in range(40)]
    lines[13] = {"id": "boom", "text": "BOOM"}
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    one = run(fragile_model_dir, str(path), "--batch-size", "4")
    two = run(fragile_model_dir, str(path), "--batch-size", "4", "--n-process", "2")
    assert one.exit_code == two.exit_code == 1, two.output
    assert two.stdout == one.stdout
    expected = [GOLD_ENTS[i % 5] for i in range(40) if i != 13]
    assert [pairs(r) for r in read_jsonl(two.stdout)] == expected
    assert "failed: boom: pipeline error: RuntimeError: this doc goes boom" in two.stderr


def test_console_script_reads_stdin(model_dir):
    """The installed `secner` entry point, in a process of its own."""
    script = Path(sys.executable).with_name("secner")
    assert script.exists(), "reinstall the package (pip install -e .) for the secner script"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(script), "annotate", "-", "--model", str(model_dir), "--format", "csv"]
    proc = subprocess.run(
        args, input=TRAIN_TEXTS[0], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    assert [(row[2], row[1]) for row in rows[1:]] == GOLD_ENTS[0]
    assert "1 document read" in proc.stderr


def test_n_process_2_after_torch_used_threads(tiny_bert_dir, tmp_path):
    """`--n-process 2` once this process has run torch on several threads (loading a real
    encoder does): forked workers must not wait for the parent's OpenMP threads, forever."""
    from conftest import make_grouped_trf_nlp

    make_grouped_trf_nlp(tiny_bert_dir, 64).to_disk(tmp_path / "trf")
    texts = [{"id": str(i), "text": TRAIN_TEXTS[i % 5]} for i in range(12)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in texts))
    script = f"""
import sys, torch
torch.set_num_threads(2)
torch.nn.functional.layer_norm(torch.randn(20000, 384), (384,))  # OpenMP's threads start here
from spacy_secner.cli import app
sys.argv = ["secner", "annotate", {str(path)!r}, "--model", {str(tmp_path / "trf")!r},
            "--batch-size", "4", "--n-process", sys.argv[1]]
app()
"""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    outputs = []
    for processes in ("1", "2"):
        proc = subprocess.run(
            [sys.executable, "-c", script, processes],
            capture_output=True, text=True, env=env, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(proc.stdout)
    assert outputs[1] == outputs[0] and len(read_jsonl(outputs[0])) == 12
