"""Annotation on Ray (`spacy_secner.distributed`, `secner annotate --engine ray`), against a real
local Ray cluster of 2 CPUs, started once for the whole pytest run."""

import json
import os
import re
from pathlib import Path
from typing import Dict, List

import pytest
import spacy
from conftest import GOLD_ENTS, TRAIN_TEXTS
from typer.testing import CliRunner

import ray_components  # noqa: F401  (registers the test components here too)

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'spacy-secner[ray]'")

from spacy_secner.cli import app  # noqa: E402
from spacy_secner.cli.writers import document_record, entity_records  # noqa: E402
from spacy_secner.distributed import (  # noqa: E402
    SCHEMA,
    annotate_dataset,
    annotate_rows,
    row_result,
)

pytestmark = pytest.mark.slow

TESTS_DIR = Path(__file__).parent
runner = CliRunner()
BOOM = "BOOM goes this report about APT28 ."


@pytest.fixture(scope="session")
def ray_cluster():
    """A local cluster whose workers import `ray_components` when they start.

    Every Ray process imports jsonschema, which imports rfc3987-syntax where it is installed
    (the stix extra brings it): 3 s of CPU building a parser, in each of Ray's agents and
    workers. On a busy 2-core machine that made the node miss Ray's fixed 30 s start-up limit,
    so the cluster's processes find a stand-in that fails to import (`ray_stubs/`).
    """
    path = os.pathsep.join([str(TESTS_DIR / "ray_stubs"), str(TESTS_DIR), str(TESTS_DIR.parent)])
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = path  # Ray's agents inherit the environment at ray.init
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            runtime_env={
                "env_vars": {"PYTHONPATH": path},
                "worker_process_setup_hook": "ray_components.setup",
            },
        )
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def load_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("loads") / "loads.txt"


@pytest.fixture(scope="module")
def model_dir(trained_cnn_nlp, load_log, tmp_path_factory) -> Path:
    """The trained tiny pipeline with `cti_iocs`, plus a component that fails on "BOOM" and one
    that logs each load of the pipeline to `load_log`."""
    path = tmp_path_factory.mktemp("ray_model")
    trained_cnn_nlp.to_disk(path)
    nlp = spacy.load(path)
    nlp.add_pipe("cti_iocs")
    nlp.add_pipe("secner_test_ray_fail_on_boom")
    nlp.add_pipe("secner_test_load_log", config={"path": str(load_log)})
    nlp.to_disk(path)
    load_log.unlink()  # the log starts empty: nlp.add_pipe above logged once
    return path


INDICATORS = ["It called 203.0.113.7 .", "It used hxxp://evil[.]example.com/x .", ""]


def good_texts(n: int) -> List[str]:
    """`n` distinct documents of one to three training sentences, some with indicators."""
    texts = []
    for i in range(n):
        sentences = [TRAIN_TEXTS[(i + k) % len(TRAIN_TEXTS)] for k in range(1 + i % 3)]
        texts.append(" ".join(sentences) + f" Report {i} . " + INDICATORS[i % 3])
    return texts


def read_log(path: Path) -> List[str]:
    return path.read_text(encoding="utf8").split() if path.exists() else []


def expected_records(model_dir: Path, texts: Dict[str, str]) -> Dict[str, Dict]:
    """The records of in-process `nlp.pipe` on the same pipeline, by id."""
    nlp = spacy.load(model_dir)
    ids = list(texts)
    docs = nlp.pipe(texts[i] for i in ids)
    return {i: document_record(i, doc) for i, doc in zip(ids, docs)}


def test_annotate_rows_keeps_order_and_isolates_failures(model_dir):
    nlp = spacy.load(model_dir)
    ids = ["a", "b", None, "c", "d", "e", 7]
    texts = [TRAIN_TEXTS[0], BOOM, TRAIN_TEXTS[1], "  \n", b"\xff\xfe bad", None, TRAIN_TEXTS[2]]
    rows = annotate_rows(nlp, ids, texts, batch_size=2, max_chars=100)
    assert [(r["id"], r["status"]) for r in rows] == [
        ("a", "annotated"),
        ("b", "failed"),
        ("", "failed"),
        ("c", "skipped"),
        ("d", "failed"),
        ("e", "failed"),
        ("7", "annotated"),
    ]
    assert [(e["text"], e["label"]) for e in rows[0]["entities"]] == GOLD_ENTS[0]
    assert row_result(rows[0])[1]["entities"] == entity_records(nlp(TRAIN_TEXTS[0]))
    assert row_result(rows[6]) == ("7", document_record("7", nlp(TRAIN_TEXTS[2])))
    assert rows[6]["iocs"] == [] and rows[6]["text"] is None
    assert rows[1]["error"] == "pipeline error: RuntimeError: this doc goes boom"
    assert rows[2]["error"] == "no id"
    assert rows[3]["error"] == "empty"
    assert rows[4]["error"].startswith("cannot decode as utf-8: byte 0xff at offset 0")
    assert rows[5]["error"] == 'no "text" string'
    too_long = annotate_rows(nlp, ["x"], [TRAIN_TEXTS[0]], max_chars=10)
    assert too_long[0]["error"] == f"too large: {len(TRAIN_TEXTS[0])} chars > limit of 10"
    # Lone surrogates, which Arrow and UTF-8 cannot hold: an id's escaped, a text's a failure.
    odd = annotate_rows(nlp, ["bad\ud800", "f"], [TRAIN_TEXTS[0], "x\udc00y"])
    assert [(r["id"], r["status"]) for r in odd] == [("bad\\ud800", "annotated"), ("f", "failed")]
    assert odd[1]["error"].startswith("not valid Unicode: lone surrogate U+DC00 at offset 1")


def test_dataset_on_two_actors_equals_in_process(ray_cluster, model_dir, load_log):
    texts = {f"doc-{i}": text for i, text in enumerate(good_texts(40))}
    expected = expected_records(model_dir, texts)
    megabyte = ("APT28 used X-Agent against NATO in 2016 . " * 30_000)[: 1 << 20]
    rows = [{"id": i, "text": text.encode("utf8")} for i, text in texts.items()]
    bad = {
        "invalid-utf8": b"APT28 \xff\xfe used X-Agent",
        "empty": b"",
        "blank": b" \n\t",
        "megabyte": megabyte.encode("utf8"),
        "boom": BOOM.encode("utf8"),
    }
    rows[10:10] = [{"id": i, "text": value} for i, value in bad.items()]
    ds = ray.data.from_items(rows, override_num_blocks=6)
    out = annotate_dataset(ds, str(model_dir), actors=2, batch_size=4)
    result = out.take_all()

    assert out.schema().names == SCHEMA.names
    assert len(result) == len(rows)
    assert sorted(r["id"] for r in result) == sorted(str(r["id"]) for r in rows)  # none lost
    by_id = {row["id"]: row for row in result}
    for doc_id, record in expected.items():
        row = by_id[doc_id]
        assert row["status"] == "annotated" and row["error"] is None
        assert row_result(row) == (doc_id, record)
    assert sum(len(r["entities"]) for r in expected.values()) > 40
    assert sum(len(r["iocs"]) for r in expected.values()) > 20
    status = {i: (by_id[i]["status"], by_id[i]["error"]) for i in bad}
    assert status["invalid-utf8"][0] == "failed"
    assert status["invalid-utf8"][1].startswith("cannot decode as utf-8: byte 0xff at offset 6")
    assert status["empty"] == ("skipped", "empty")
    assert status["blank"] == ("skipped", "empty")
    assert status["megabyte"] == ("failed", f"too large: {1 << 20} chars > limit of 1000000")
    assert status["boom"] == ("failed", "pipeline error: RuntimeError: this doc goes boom")
    # 45 rows in batches of 4 on a pool of 2 actors: each actor that ran loaded the pipeline
    # once (the other line of the log is the load in this process, for `expected`). Ray Data
    # may finish the blocks on one actor before the second is scheduled on a busy machine.
    loads = [pid for pid in read_log(load_log) if pid != str(os.getpid())]
    assert 1 <= len(loads) <= 2 and len(set(loads)) == len(loads)


def message(result) -> str:
    """The output of a command with the frame and line breaks of typer's error box taken out."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


def summary_lines(stderr: str) -> List[str]:
    """The summary of `secner annotate`, without its timing (and without Ray's own log lines)."""
    kept = [
        re.sub(r" in [0-9.]+ s \([0-9.]+ docs/s\)", "", line)
        for line in stderr.splitlines()
        if line.startswith(("secner annotate:", "  failed:", "  skipped:", "entities:"))
    ]
    assert kept, stderr
    return kept


def write_inputs(directory: Path) -> List[str]:
    """Text files and a JSONL file with good and bad documents; RETURNS the CLI's arguments."""
    texts = directory / "texts"
    texts.mkdir()
    for i, text in enumerate(good_texts(12)):
        (texts / f"report-{i:02d}.txt").write_text(text, encoding="utf8")
    (texts / "report-03b.txt").write_bytes(b"APT28 \xff used X-Agent .")
    (texts / "report-05b.txt").write_text("", encoding="utf8")
    (texts / "report-07b.txt").write_text(BOOM, encoding="utf8")
    lines = [json.dumps({"id": f"j{i}", "text": text}) for i, text in enumerate(good_texts(6))]
    ioc_text = "Fancy Bear used 198.51.100.9 and evil[.]example.org ."
    lines[0] = json.dumps({"id": "j0", "text": ioc_text})
    lines[2:2] = ["{not json", json.dumps({"id": "no-text"}), json.dumps({"id": "e", "text": ""})]
    jsonl = directory / "feed.jsonl"
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf8")
    return [str(texts), str(jsonl)]


def test_cli_ray_engine_writes_what_in_process_writes(ray_cluster, model_dir, tmp_path):
    inputs = write_inputs(tmp_path)
    # Pieces of at most 12 tokens: long documents are cut alike in process and in the actors.
    base = ["annotate", "--model", str(model_dir), "--batch-size", "4", *inputs]
    base += ["--max-piece-tokens", "12"]
    for fmt, options in (("jsonl", ["--actors", "2", "--keep-text"]), ("csv", ["--actors", "1"])):
        here, there = tmp_path / f"here.{fmt}", tmp_path / f"there.{fmt}"
        keep = options[2:]
        in_process = runner.invoke(
            app, [*base, *keep, "-o", str(here), "--errors", f"{here}.errors"]
        )
        on_ray = runner.invoke(
            app,
            [*base, *options, "-o", str(there), "--errors", f"{there}.errors", "--engine", "ray"],
        )
        assert in_process.exit_code == 1, in_process.output
        assert on_ray.exit_code == 1, on_ray.output
        assert there.read_text(encoding="utf8") == here.read_text(encoding="utf8")
        assert Path(f"{there}.errors").read_text() == Path(f"{here}.errors").read_text()
        assert summary_lines(on_ray.stderr) == summary_lines(in_process.stderr)
    records = [json.loads(line) for line in (tmp_path / "there.jsonl").read_text().splitlines()]
    assert len(records) == 12 + 6
    assert all(r["text"] and "iocs" in r for r in records)
    assert {"label": "ipv4", "value": "198.51.100.9"}.items() <= records[12]["iocs"][0].items()
    assert summary_lines(on_ray.stderr)[0] == (
        "secner annotate: 24 documents read, 18 annotated, 2 skipped, 4 failed"
    )
    assert not list(tmp_path.glob(".there.*"))  # no temporary file left beside the output


def test_cli_ray_engine_resumes_an_interrupted_run(ray_cluster, model_dir, tmp_path, monkeypatch):
    """The journal holds the actors' records: a run killed mid-way resumes on Ray to the file an
    uninterrupted run in process writes."""
    from spacy_secner.cli.journal import Journal

    inputs = write_inputs(tmp_path)
    base = ["annotate", "--model", str(model_dir), "--batch-size", "4", *inputs]
    reference = tmp_path / "reference.jsonl"
    assert runner.invoke(app, [*base, "-o", str(reference)]).exit_code == 1
    out = tmp_path / "out.jsonl"
    ray_options = ["-o", str(out), "--engine", "ray", "--actors", "1"]
    append = Journal.append

    def append_then_die(self, record):
        if self.count >= 5:
            raise SystemExit("killed")
        append(self, record)

    monkeypatch.setattr(Journal, "append", append_then_die)
    runner.invoke(app, [*base, *ray_options])
    monkeypatch.undo()
    assert not out.exists()
    result = runner.invoke(app, [*base, *ray_options, "--resume"])
    assert result.exit_code == 1, result.output
    assert out.read_text(encoding="utf8") == reference.read_text(encoding="utf8")
    assert "18 annotated (5 from the journal)" in result.stderr
    assert not list(tmp_path.glob(".out.*"))  # neither the journal nor a temporary file


def test_cli_rejects_what_ray_cannot_do(model_dir, tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(TRAIN_TEXTS[0], encoding="utf8")
    base = ["annotate", "--model", str(model_dir), str(path)]
    result = runner.invoke(app, [*base, "--engine", "ray", "-o", str(tmp_path / "a.html")])
    assert result.exit_code == 2 and "html is written by --engine process only" in message(result)
    result = runner.invoke(app, [*base, "--engine", "ray", "--format", "stix"])
    assert result.exit_code == 2 and "stix is written by --engine process only" in message(result)
    result = runner.invoke(app, [*base, "--actors", "2"])
    assert result.exit_code == 2 and "need --engine ray" in message(result)
    result = runner.invoke(app, [*base, "--engine", "ray", "--model", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no pipeline package or directory" in message(result)
    assert not (tmp_path / "a.html").exists()
