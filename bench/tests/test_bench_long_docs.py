"""The long-document benchmark: its reports, and one tiny run of every mode. No timing or memory
figure is asserted: they only have to exist."""

import json

from conftest import make_grouped_trf_nlp
from typer.testing import CliRunner

import bench_long_docs

SENTENCES = [
    ("APT28 B-HackOrg", "used O", "X-Agent B-Tool", ". O"),
    ("Lazarus B-HackOrg", "Group I-HackOrg", "struck O", "banks B-Org", ". O"),
]


def write_dnrti(directory):
    directory.mkdir()
    text = "\n\n".join("\n".join(lines) for lines in SENTENCES) + "\n"
    (directory / "test.txt").write_text(text, encoding="utf8")
    return directory


def test_reports_are_whole_sentences_on_one_line_within_the_size(tmp_path):
    dnrti = write_dnrti(tmp_path / "dnrti")
    report = bench_long_docs.make_report(str(dnrti), 1)
    assert 1000 - 40 < len(report) <= 1000
    assert "\n" not in report
    assert report.startswith("APT28 used X-Agent. Lazarus Group struck banks. APT28 used")
    assert report.endswith(".")


def test_each_mode_on_a_tiny_pipeline(tiny_bert_dir, tmp_path):
    dnrti = write_dnrti(tmp_path / "dnrti")
    model = tmp_path / "model"
    make_grouped_trf_nlp(tiny_bert_dir, 512).to_disk(model)
    runner = CliRunner()
    rows = []
    for mode in ("pieces", "whole"):
        args = ["measure", "--model", str(model), "--size-kb", "1", "--mode", mode]
        result = runner.invoke(bench_long_docs.app, [*args, "--dnrti-dir", str(dnrti)])
        assert result.exit_code == 0, result.output
        rows.append(json.loads(result.stdout))
    # The command in a process of its own, its peak memory its own (one process: they are slow
    # to start).
    output = tmp_path / "long_docs.json"
    args = ["run", "--model", str(model), "--sizes", "1", "--modes", "cli", "--threads", "1"]
    result = runner.invoke(
        bench_long_docs.app, [*args, "--dnrti-dir", str(dnrti), "--output", str(output)]
    )
    assert result.exit_code == 0, result.output
    rows += json.loads(output.read_text())["rows"]
    assert [row["mode"] for row in rows] == ["pieces", "whole", "cli"]
    # A 1 KB report fits in one piece: the same entities in every mode.
    assert len({row["entities"] for row in rows}) == 1
    assert all(row["peak_rss_mb"] > 0 and row["seconds"] > 0 for row in rows)
    assert "| cli | 1 KB |" in result.stdout


def test_accuracy_whole_and_in_pieces(tiny_bert_dir, tmp_path):
    dnrti = write_dnrti(tmp_path / "dnrti")
    model = tmp_path / "model"
    make_grouped_trf_nlp(tiny_bert_dir, 512).to_disk(model)
    output = tmp_path / "accuracy.json"
    args = ["accuracy", "--model", str(model), "--max-piece-tokens", "2048,3"]
    result = CliRunner().invoke(
        bench_long_docs.app, [*args, "--dnrti-dir", str(dnrti), "--output", str(output)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text())
    assert report["gold"] == 4  # APT28, X-Agent, Lazarus Group, banks
    rows = {row["run"]: row for row in report["rows"]}
    assert list(rows) == ["whole", "pieces 2048", "pieces 3"]
    # The document fits in one piece of 2048 tokens: the same entities as whole.
    assert rows["pieces 2048"] == {**rows["whole"], "run": "pieces 2048"}
    assert all(0.0 <= row["f1"] <= 1.0 for row in rows.values())
