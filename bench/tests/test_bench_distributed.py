"""`bench_distributed.py`: one in-process run on a tiny pipeline, and the table of runs."""
import json

from conftest import TRAIN_TEXTS
from typer.testing import CliRunner

import bench_distributed


def test_one_in_process_run_writes_records_and_figures(trained_cnn_nlp, tmp_path):
    trained_cnn_nlp.to_disk(tmp_path / "model")
    documents = tmp_path / "documents.jsonl"
    documents.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TRAIN_TEXTS)),
        encoding="utf8",
    )
    records = tmp_path / "records.json"
    result = CliRunner().invoke(
        bench_distributed.app,
        ["one", "--model", str(tmp_path / "model"), "--documents", str(documents)]
        + ["--records", str(records), "--batch-size", "2"],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["engine"] == "process" and figures["docs"] == len(TRAIN_TEXTS)
    assert figures["failed"] == 0 and figures["total_s"] > 0 and figures["peak_rss_mb"] > 0
    written = json.loads(records.read_text(encoding="utf8"))
    assert [e["text"] for e in written["d0"]["entities"]] == ["APT28", "X-Agent", "NATO", "2016"]


def test_render_lists_every_run():
    result = {
        "docs": 200,
        "words": 15943,
        "load_average": [1.0, 2.0],
        "runs": [
            {"engine": "process", "threads": 2, "total_s": 10.0, "docs_per_s": 20.0,
             "first_record_s": 2.0, "peak_rss_mb": 967.7},
            {"engine": "ray", "actors": 2, "total_s": 20.0, "docs_per_s": 10.0,
             "first_record_s": 15.0, "actor_peak_rss_mb": [1030, 1036]},
        ],
    }
    table = bench_distributed.render(result).splitlines()
    assert table[0].startswith("200 documents, 15943 words")
    assert table[-2] == "| process | 2 threads | 10.0 | 20.00 | 2.0 | 968 (process) |"
    assert table[-1] == "| ray | 2 actors | 20.0 | 10.00 | 15.0 | 1036 per actor |"
