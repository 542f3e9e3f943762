"""The speed benchmark's helpers: texts, statistics, report, and one tiny end-to-end run.

No timing is asserted: the numbers only have to exist and add up.
"""

import inspect
import json

import pytest
from conftest import TRAIN_TEXTS, make_examples, make_trf_nlp
from spacy.cli import benchmark_speed

import harness
from harness import (
    check_targets,
    count_words,
    make_documents,
    parse_spacy_benchmark,
    render_markdown,
    rotate,
    summarize,
    training_speed,
)


def test_make_documents_keeps_order_and_balances_sizes():
    sentences = [f"Sentence {i}." for i in range(23)]
    docs = make_documents(sentences, 5)
    assert len(docs) == 5
    assert " ".join(docs) == " ".join(sentences)
    sizes = [doc.count("Sentence") for doc in docs]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 23
    assert make_documents(sentences[:3], 50) == sentences[:3]
    assert make_documents([], 50) == []


def test_words_are_whitespace_words():
    assert count_words(["APT28 used X-Agent.", "  Lazarus  Group "]) == 5


def test_read_test_sentences_detokenizes(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text("APT28 B-HackOrg\nused O\nX-Agent B-Tool\n. O\n\nHello O\n, O\nworld O\n")
    assert harness.read_test_sentences(path) == ["APT28 used X-Agent.", "Hello, world"]
    assert harness.read_test_sentences(path, limit=1) == ["APT28 used X-Agent."]


def test_summarize_rotate_and_ratios():
    stats = summarize([2.0, 1.0, 4.0], words=100)
    assert stats["median_s"] == 2.0 and stats["min_s"] == 1.0
    assert stats["wps_median"] == 50.0 and stats["wps_best"] == 100.0
    assert rotate(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert rotate(["a", "b", "c"], 3) == ["a", "b", "c"]
    by_system = {
        "pipeline": summarize([2.0], 100),
        "hf": summarize([1.0], 100),
        "floor": summarize([4.0], 100),
    }
    ratios = harness.ratios(by_system)
    assert ratios["pipeline/hf"] == 0.5 and ratios["pipeline/floor"] == 2.0


def test_turns_hold_whole_batches():
    """Systems take turns at every batch, or every few batches of about `turn_texts` texts."""
    assert harness.turns(5, 2) == [[0, 2], [2, 4], [4, 5]]
    assert harness.turns(70, 1, 32) == [[0, 32], [32, 64], [64, 70]]
    assert harness.turns(70, 8, 30) == [[0, 24], [24, 48], [48, 70]]
    assert harness.turns(70, 64, 32) == [[0, 64], [64, 70]], "never less than a batch"
    report = {"settings": {"interleave": True, "turn_texts": 32}}
    assert "every 32 texts" in harness.report._turns(report["settings"])
    assert harness.report._turns({"interleave": False}) == "."


def test_memory_helpers():
    assert harness.peak_rss_mb() > 0
    assert isinstance(harness.reset_peak_rss(), bool)
    current = harness.rss_mb()
    assert current is None or current <= harness.peak_rss_mb() + 1


def test_training_speed_from_curves(tmp_path):
    path = tmp_path / "curves.jsonl"
    assert training_speed(path) is None
    records = [
        {"step": 0, "seconds": 2, "words": 500},
        {"step": 100, "seconds": 52, "words": 10500},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    speed = training_speed(path)
    assert speed["words_per_second"] == 200.0 and speed["steps"] == 100
    path.write_text(json.dumps(records[1]) + "\n")
    assert training_speed(path)["words_per_second"] == 10500 / 52


def test_spacy_benchmark_command_matches_spacys_cli():
    command = harness.spacy_benchmark_command(
        "en_secner", "corpus/test.spacy", batch_size=64, n_batches=30
    )
    assert command[:5] == ["python", "-m", "spacy", "benchmark", "speed"]
    params = inspect.signature(benchmark_speed.benchmark_speed_cli).parameters.values()
    declared = {decl for p in params for decl in getattr(p.default, "param_decls", ()) or ()}
    assert {c for c in command if c.startswith("--")} <= declared
    output = "Outliers: 2.0%, extreme outliers: 0.0%\nMean: 1234.5 words/s (95% CI: -1 +1)\n"
    assert parse_spacy_benchmark(output) == 1234.5
    assert parse_spacy_benchmark("Traceback ...") is None


def _fake_report():
    def system(wps):
        return {
            **summarize([1000 / wps], 1000),
            "peak_rss_mb": 500.0,
            "wordpieces": 1200,
            "encoder_inputs": 10,
        }

    row = {"texts": "sentences", "batch_size": 64, "words": 1000}
    row["systems"] = {"pipeline": system(900), "hf": system(1000), "floor": system(1000)}
    row["ratios"] = harness.ratios(row["systems"])
    systems = {
        s: {
            "label": harness.LABELS[s],
            "load_s": 1.0,
            "torch_threads": 2,
            "rss_after_load_mb": 400.0,
            "peak_rss_annotating_mb": 600.0,
            "peak_rss_mb": 800.0,
        }
        for s in harness.SYSTEMS
    }
    return {
        "command": "python bench/bench_speed.py run",
        "machine": harness.machine_info(2),
        "settings": {
            "model": "en_secner",
            "encoder": "minilm",
            "repeats": 5,
            "batch_sizes": [64],
            "max_length": 512,
            "texts": {"sentences": {"texts": 10, "words": 1000}},
        },
        "systems": systems,
        "throughput": [row],
        "spacy_load": {
            "runs": [{}],
            "median_load_s": 2.5,
            "median_import_s": 1.0,
            "median_process_s": 4.0,
        },
        "training": None,
    }


def test_targets_and_markdown():
    report = _fake_report()
    report["targets"] = check_targets(report)
    met = {t["target"].split(" (")[0]: t["met"] for t in report["targets"]}
    assert met["pipeline / encoder >= 0.85"] is True
    assert met["pipeline / HF >= 1.3"] is False
    assert met["peak RSS while annotating <= 1024 MiB"] is True
    assert met["spacy.load < 3.0 s"] is True
    markdown = render_markdown(report)
    assert (
        "| sentences | 64 | 900 (900) | 1,000 (1,000) | 1,000 (1,000) | 0.90 (0.90) |" in markdown
    )
    assert "python bench/bench_speed.py run" in markdown and "**no**" in markdown


def test_profile_parts_add_up(trained_cnn_nlp):
    pytest.importorskip("pyinstrument")
    result = harness.profile_pipeline(
        trained_cnn_nlp, TRAIN_TEXTS * 40, batch_size=8, interval=0.0001
    )
    assert result["parts"] and result["text"]
    # The decoder's functions are named in the parts: a rename would fold them into "other".
    for part in ("ner_crf: BiLSTM and linear", "ner_crf: CRF Viterbi and forward-backward"):
        assert result["parts"].get(part, 0) > 0, part
    assert sum(result["parts"].values()) == pytest.approx(result["seconds"], rel=0.2)


def test_one_worker_round_trip(tiny_bert_dir):
    """The worker protocol with the cheapest system: load, warm-up with details, timed runs."""
    texts = {"sentences": TRAIN_TEXTS}
    result = harness.run_benchmark(
        model="unused",
        encoder=str(tiny_bert_dir),
        texts=texts,
        batch_sizes=[2],
        repeats=2,
        threads=1,
        systems=["floor"],
        log=lambda line: None,
    )
    (row,) = result["throughput"]
    floor = row["systems"]["floor"]
    assert len(floor["seconds"]) == 2 and floor["wps_median"] > 0
    assert floor["encoder_inputs"] == len(TRAIN_TEXTS) and floor["truncated_texts"] == 0
    assert floor["padded_wordpieces"] >= floor["wordpieces"] > row["words"]
    assert row["ratios"] == {}
    assert result["systems"]["floor"]["peak_rss_mb"] >= floor["peak_rss_mb"] > 0


@pytest.mark.slow
def test_end_to_end_on_a_tiny_pipeline(tiny_bert_dir, tmp_path):
    """Every system in its own worker, on a tiny random BERT: the report has every figure."""
    nlp = make_trf_nlp(tiny_bert_dir)
    nlp.initialize(lambda: make_examples(nlp))
    nlp.to_disk(tmp_path / "pipeline")
    texts = {"sentences": TRAIN_TEXTS[:3], "documents": make_documents(TRAIN_TEXTS, 2)}
    lines = []
    result = harness.run_benchmark(
        model=str(tmp_path / "pipeline"),
        encoder=str(tiny_bert_dir),
        texts=texts,
        batch_sizes=[1, 2],
        repeats=1,
        threads=1,
        log=lines.append,
    )
    assert [(r["texts"], r["batch_size"]) for r in result["throughput"]] == [
        ("sentences", 1),
        ("sentences", 2),
        ("documents", 1),
        ("documents", 2),
    ]
    for row in result["throughput"]:
        assert row["words"] == count_words(texts[row["texts"]])
        assert set(row["systems"]) == set(harness.SYSTEMS)
        assert all(v["wps_median"] > 0 for v in row["systems"].values())
        assert set(row["ratios"]) >= {"pipeline/hf", "pipeline/floor"}
        # The same texts reach every encoder: sentences need no windows or truncation.
        if row["texts"] == "sentences":
            pieces = {s: v["wordpieces"] for s, v in row["systems"].items()}
            assert len(set(pieces.values())) == 1, pieces
    for info in result["systems"].values():
        assert info["torch_threads"] == 1 and info["peak_rss_mb"] > 0
    assert len(lines) == 1 + 1 + 1 + 4  # three loads, four rows
    load = harness.measure_load(str(tmp_path / "pipeline"), runs=1, threads=1)
    assert load["median_load_s"] > 0


def test_targets_of_the_tiny_check_and_of_batch_one():
    report = _fake_report()
    (row,) = report["throughput"]
    row["systems"] = {"pipeline": summarize([1.0], 1000), "plain": summarize([0.8], 1000),
                      "hf_spans": summarize([3.0], 1000)}
    row["ratios"] = harness.ratios(row["systems"])
    one = {**row, "batch_size": 1, "systems": {"pipeline": summarize([1.0], 1000), "hf": summarize([0.7], 1000)}}
    one["ratios"] = harness.ratios(one["systems"])
    report["throughput"] = [row, one]
    met = {t["target"]: t["met"] for t in check_targets(report)}
    assert met["pipeline / plain PyTorch >= 0.8 (sentences, batch 64)"] is True
    assert met["pipeline / HF + spans >= 0.4 (sentences, batch 64)"] is True
    assert met["pipeline / HF >= 0.8 (sentences, batch 1)"] is False


def test_bio_spans_read_tags_as_spacy_does():
    from harness.workers import _bio_spans

    tags = ["B-A", "I-A", "O", "I-B", "I-B", "B-B", "I-A", "O"]
    offsets = [[0, 2], [3, 5], [6, 7], [8, 9], [10, 12], [13, 14], [15, 16], [17, 18]]
    assert _bio_spans(tags, offsets) == [(0, 5, "A"), (8, 12, "B"), (13, 14, "B"), (15, 16, "A")]
    assert _bio_spans([], []) == [] and _bio_spans(["I-A"], [[0, 3]]) == [(0, 3, "A")]


@pytest.mark.slow
def test_tiny_check_end_to_end(tmp_path):
    """The `tiny` command: the shipped config on a tiny random encoder beside the plain
    PyTorch model and the HF token classifier, on a few DNRTI-like texts."""
    import subprocess
    import sys
    from pathlib import Path

    dnrti = tmp_path / "dnrti"
    dnrti.mkdir()
    sentence = "APT28 B-HackOrg\nused O\nX-Agent B-Tool\nagainst O\nNATO B-Org\n. O\n\n"
    (dnrti / "test.txt").write_text(sentence * 6, encoding="utf8")
    out = tmp_path / "tiny.json"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "bench/bench_speed.py", "tiny", "--dnrti-dir", str(dnrti), "--docs", "2",
         "--batch-sizes", "4", "--repeats", "1", "--output", str(out)],
        cwd=root, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r["texts"], r["batch_size"]): r for r in report["throughput"]}
    assert set(rows) == {("sentences", 4), ("documents", 4)}
    for row in rows.values():
        assert set(row["systems"]) == {"pipeline", "plain", "hf_spans"}
        assert {"pipeline/plain", "pipeline/hf_spans"} <= set(row["ratios"])
        for info in row["systems"].values():
            assert len(info["seconds"]) == 1 and info["wps_median"] > 0 and info["entities"] > 0
    # Each run was timed batch by batch (3 batches of sentences), the systems taking turns.
    assert report["settings"]["interleave"] is True
    assert rows[("sentences", 4)]["words"] == rows[("documents", 4)]["words"] == 30
    assert "pipeline / plain PyTorch" in proc.stdout and "take turns at every batch" in proc.stdout


def test_primitive_cache_runs_each_capacity_in_a_fresh_process():
    from harness import measure_capacity, render_capacities
    from spacy_secner.onednn import PRIMITIVE_CACHE_CAPACITY

    rows = [measure_capacity(capacity, shapes=3, threads=1) for capacity in (None, 16)]
    assert [r["capacity"] for r in rows] == [PRIMITIVE_CACHE_CAPACITY, 16]
    assert all(r["shapes"] == 3 and r["first_ms"] > 0 and r["second_ms"] > 0 for r in rows)
    table = render_capacities(rows)
    assert table.count("\n") == 1 + len(rows) and f"| {PRIMITIVE_CACHE_CAPACITY} | 3 |" in table
