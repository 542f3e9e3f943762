"""`bench_speed.py decoding`: the CRF decoder's numpy and torch passes side by side."""
import pytest
from conftest import TRAIN_TEXTS

from harness.decoding import render_decoding, time_decoding
from spacy_secner.pytorch_bilstm_crf import BIOCRF


def test_time_decoding_compares_both_passes_and_restores(trained_trf_nlp):
    texts = {"sentences": TRAIN_TEXTS, "documents": [" ".join(TRAIN_TEXTS)]}
    rows = time_decoding(trained_trf_nlp, texts, batch_sizes=[1, 4], repeats=2)
    assert [(r["texts"], r["batch_size"]) for r in rows] == [
        (name, size) for name in texts for size in (1, 4)
    ]
    for row in rows:
        assert row["upstream_s"] > 0 and row["numpy_ner_s"] > 0 and row["torch_ner_s"] > 0
        assert row["ner_speedup"] == pytest.approx(row["torch_ner_s"] / row["numpy_ner_s"])
        # The trained pipeline finds its entities either way, with the same confidences.
        assert row["entities"] > 0 and row["same_entities"]
        assert row["max_confidence_diff"] < 1e-9
    assert BIOCRF.numpy_on_cpu is True
    table = render_decoding(rows)
    assert table.count("\n") == 1 + len(rows) and "| documents | 4 |" in table


def test_time_decoding_needs_ner_crf(trained_trf_nlp):
    with trained_trf_nlp.select_pipes(disable=["ner_crf"]):
        with pytest.raises(ValueError, match="no ner_crf"):
            time_decoding(trained_trf_nlp, {"s": TRAIN_TEXTS}, batch_sizes=[1], repeats=1)
