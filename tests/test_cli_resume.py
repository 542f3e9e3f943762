"""`secner annotate --resume`: a run killed mid-way continues from its journal, and the output
holds every document exactly once, as an uninterrupted run writes it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
from conftest import TRAIN_TEXTS
from typer.testing import CliRunner

from spacy_secner.cli import app
from spacy_secner.cli.journal import Journal, journal_path

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(trained_cnn_nlp, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cnn_model")
    trained_cnn_nlp.to_disk(path)
    return path


def run(model_dir, *args: str):
    return runner.invoke(app, ["annotate", "--model", str(model_dir), *args])


def write_docs(path: Path, ids: List[str]) -> Path:
    lines = [json.dumps({"id": doc_id, "text": TRAIN_TEXTS[i % 5]}) for i, doc_id in enumerate(ids)]
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    return path


def journal_records(path: Path) -> int:
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def test_a_killed_run_resumes_where_it_stopped(model_dir, tmp_path):
    n = 1000
    docs = write_docs(tmp_path / "docs.jsonl", [f"doc-{i}" for i in range(n)])
    reference = tmp_path / "reference.jsonl"
    assert run(model_dir, str(docs), "-o", str(reference), "--batch-size", "8").exit_code == 0

    out = tmp_path / "out" / "ents.jsonl"
    journal = journal_path(out)
    script = Path(sys.executable).with_name("secner")
    args = [str(script), "annotate", str(docs), "-o", str(out), "--model", str(model_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*args, "--batch-size", "8"], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while journal_records(journal) < 50 and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = journal_records(journal)
    assert 50 <= done < n, "the run was not killed mid-way"
    assert not out.exists()

    # Without --resume the journal is not reused, nor overwritten.
    result = run(model_dir, str(docs), "-o", str(out))
    assert result.exit_code == 2
    assert f"{journal} holds the documents finished by an interrupted run" in result.stderr
    assert journal_records(journal) == done

    # As if it had been killed while writing the output: its temporary file is removed.
    (out.parent / ".ents.jsonl.0badf00d.tmp.jsonl").write_text("half an output")
    result = run(model_dir, str(docs), "-o", str(out), "--batch-size", "8", "--resume")
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == reference.read_bytes()
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == [f"doc-{i}" for i in range(n)]
    assert f"{n} documents read, {n} annotated ({done} from the journal)" in result.stderr
    assert os.listdir(out.parent) == ["ents.jsonl"]  # no journal, no temporary file


def crash_after(monkeypatch, n: int) -> None:
    """Make the run die (as if killed) after `n` documents are in the journal."""
    append = Journal.append

    def append_then_crash(self, record):
        if self.count >= n:
            raise SystemExit("killed")
        append(self, record)

    monkeypatch.setattr(Journal, "append", append_then_crash)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".html"])
def test_duplicate_ids_and_every_format(model_dir, tmp_path, monkeypatch, suffix):
    """The n-th document with an id is matched with the n-th journal record of that id."""
    ids = ["a", "b", "a", "c", "a", "b", "d", "a"]
    docs = write_docs(tmp_path / "docs.jsonl", ids)
    reference = tmp_path / f"reference{suffix}"
    assert run(model_dir, str(docs), "-o", str(reference), "--batch-size", "2").exit_code == 0
    out = tmp_path / f"out{suffix}"
    crash_after(monkeypatch, 3)
    result = run(model_dir, str(docs), "-o", str(out), "--batch-size", "2")
    assert result.exit_code != 0
    assert journal_records(journal_path(out)) == 3
    monkeypatch.undo()
    result = run(model_dir, str(docs), "-o", str(out), "--batch-size", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf8") == reference.read_text(encoding="utf8")
    assert not journal_path(out).exists()


def test_failures_are_reported_again_by_the_resumed_run(model_dir, tmp_path, monkeypatch):
    docs = write_docs(tmp_path / "docs.jsonl", [f"d{i}" for i in range(6)])
    with docs.open("a") as f:
        f.write('{"id": "bad"}\n' + json.dumps({"id": "empty", "text": " "}) + "\n")
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    crash_after(monkeypatch, 4)
    run(model_dir, str(docs), "-o", str(out), "--errors", str(errors), "--batch-size", "2")
    assert not errors.exists() and not out.exists()
    monkeypatch.undo()
    result = run(model_dir, str(docs), "-o", str(out), "--errors", str(errors), "--resume")
    assert result.exit_code == 1
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [
        f"d{i}" for i in range(6)
    ]
    problems = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [(p["id"], p["status"]) for p in problems] == [("bad", "failed"), ("empty", "skipped")]
    assert "8 documents read, 6 annotated (4 from the journal), 1 skipped, 1 failed" in (
        result.stderr
    )


def test_a_line_cut_short_by_the_crash_is_dropped(model_dir, tmp_path, monkeypatch):
    docs = write_docs(tmp_path / "docs.jsonl", [f"d{i}" for i in range(5)])
    out = tmp_path / "out.jsonl"
    crash_after(monkeypatch, 2)
    run(model_dir, str(docs), "-o", str(out))
    monkeypatch.undo()
    journal = journal_path(out)
    with journal.open("a") as f:
        f.write('{"id": "d2", "entities": [{"label": "Hack')  # killed mid-write
    result = run(model_dir, str(docs), "-o", str(out), "--resume")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [
        f"d{i}" for i in range(5)
    ]
    assert "(2 from the journal)" in result.stderr


def test_a_journal_from_other_settings_is_not_resumed(model_dir, tmp_path, monkeypatch):
    docs = write_docs(tmp_path / "docs.jsonl", [f"d{i}" for i in range(5)])
    out = tmp_path / "out.txt"
    crash_after(monkeypatch, 2)
    run(model_dir, str(docs), "-o", str(out))
    monkeypatch.undo()
    result = run(model_dir, str(docs), "-o", str(out), "--format", "csv", "--resume")
    assert result.exit_code == 2
    assert (
        f"{journal_path(out)} was written by a run with format 'jsonl', not 'csv'" in result.stderr
    )
    journal_path(out).write_text("not json\n")
    result = run(model_dir, str(docs), "-o", str(out), "--resume")
    assert result.exit_code == 2
    assert f"{journal_path(out)}:1 is not a journal record" in result.stderr


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".html"])
def test_ids_that_are_not_valid_unicode_resume(model_dir, tmp_path, monkeypatch, suffix):
    """A file name that is not UTF-8 and a JSONL id with a lone surrogate: written escaped, the
    same in both runs, so the resumed run skips exactly the documents in the journal."""
    folder = tmp_path / "in"
    folder.mkdir()
    try:
        (folder / os.fsdecode(b"caf\xe9.txt")).write_text(TRAIN_TEXTS[0], encoding="utf8")
    except (OSError, UnicodeEncodeError):
        pytest.skip("the file system refuses names that are not UTF-8")
    (folder / "plain.txt").write_text(TRAIN_TEXTS[1], encoding="utf8")
    docs = write_docs(tmp_path / "docs.jsonl", ["bad\ud800", "ok", "bad\ud800", "last"])
    inputs = [str(folder), str(docs)]
    reference = tmp_path / f"reference{suffix}"
    assert run(model_dir, *inputs, "-o", str(reference)).exit_code == 0
    out = tmp_path / f"out{suffix}"
    crash_after(monkeypatch, 3)
    assert run(model_dir, *inputs, "-o", str(out), "--batch-size", "1").exit_code != 0
    assert journal_records(journal_path(out)) == 3
    monkeypatch.undo()
    result = run(model_dir, *inputs, "-o", str(out), "--resume")
    assert result.exit_code == 0, result.output
    assert "6 documents read, 6 annotated (3 from the journal)" in result.stderr
    assert out.read_text(encoding="utf8") == reference.read_text(encoding="utf8")


def test_resume_without_a_journal_starts_from_the_first_document(model_dir, tmp_path):
    docs = write_docs(tmp_path / "docs.jsonl", [f"d{i}" for i in range(3)])
    out = tmp_path / "out.jsonl"
    result = run(model_dir, str(docs), "-o", str(out), "--resume")
    assert result.exit_code == 0
    assert "nothing to resume" in result.stderr
    assert len(out.read_text().splitlines()) == 3


def test_leftover_temporaries_are_those_of_atomic_path(tmp_path):
    from spacy_secner.atomic import atomic_path, leftover_temporaries

    out = tmp_path / "ents[1].csv"
    with atomic_path(out) as tmp:
        tmp.write_text("x")
        assert leftover_temporaries(out) == [tmp]
    assert leftover_temporaries(out) == []
    kept = [".ents[1].csv.journal", ".ents[1].csv.12345678.tmp.jsonl", "ents[1].csv", ".x.tmp.csv"]
    for name in kept:
        (tmp_path / name).write_text("x")
    assert leftover_temporaries(out) == []
