"""The IOC benchmark: its hand-labelled sentences are well formed, and it counts right."""

from pathlib import Path

import pytest

import bench_iocs
from spacy_secner.iocs import IOC_LABELS

DATA = Path(bench_iocs.__file__).parent / "data" / "iocs.jsonl"


def test_labelled_sentences_are_well_formed():
    rows = bench_iocs.read_data(DATA)
    assert len(rows) >= 40
    golds = [g for _, gold in rows for g in gold]
    assert {label for _, _, label, _ in golds} == set(IOC_LABELS)
    assert sum(not gold for _, gold in rows) >= 10  # sentences with no indicator at all
    for text, gold in rows:
        spans = sorted((start, end) for start, end, _, _ in gold)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), text  # no overlaps


def test_scores_count_spans_labels_and_values(tmp_path):
    text = "Beacon to 8.8.8[.]8 from svchost.exe in version 1.2.3.4 ."
    rows = [(text, [(10, 19, "ipv4", "8.8.8.8")]), ("No indicator here .", [])]
    result = bench_iocs.score_ours(rows)
    assert result["micro"]["precision"] == result["micro"]["recall"] == 1.0
    assert result["per_type"]["ipv4"]["values_right"] == 1 and result["errors"] == []
    wrong = [(text, [(10, 19, "domain", "8.8.8.8"), (25, 36, "file_path", "svchost.exe")])]
    result = bench_iocs.score_ours(wrong)
    assert result["micro"]["precision"] == 0.0 and result["micro"]["support"] == 2
    assert {(e["kind"], e["text"]) for e in result["errors"]} == {
        ("false positive", "8.8.8[.]8"),
        ("missed", "8.8.8[.]8"),
        ("missed", "svchost.exe"),
    }
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "abc", "iocs": [["xyz", "url", "xyz"]]}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        bench_iocs.read_data(bad)
