"""The embedded MiniLM encoder: found offline, trains with `ner_crf`, saves and loads."""
from pathlib import Path

import pytest
import spacy
from conftest import (
    TRAIN_TEXTS,
    load_in_fresh_process,
    make_examples,
    make_trf_nlp,
    offsets_of,
    train_until_gold,
)

from spacy_secner.encoders import embedded_encoder


def test_embedded_encoder_is_a_local_model_directory():
    path = Path(embedded_encoder())
    assert path.is_dir()
    # A transformers model directory that loads offline (weights and tokenizer included).
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(path).model_type == "bert"
    assert AutoTokenizer.from_pretrained(path)("APT28")["input_ids"]
    assert spacy.registry.misc.get("spacy-secner.embedded_encoder.v1")() == str(path)


@pytest.mark.slow
def test_minilm_pipeline_trains_offline_and_loads_in_fresh_process(tmp_path):
    # Fine-tuning rates: the pretrained encoder at 5e-5, the fresh BiLSTM-CRF head 20x faster.
    nlp = make_trf_nlp(None, head_learn_rate_factor=20.0)
    assert nlp.config["components"]["transformer"]["model"]["name"] == {
        "@misc": "spacy-secner.embedded_encoder.v1"
    }
    result = train_until_gold(nlp, make_examples(nlp), max_steps=80, learn_rate=5e-5)
    assert result["losses"][-1] < 0.5 * result["losses"][0]
    assert result["predicted"] == result["gold"]
    expected = [[list(e) for e in offsets_of(doc)] for doc in nlp.pipe(TRAIN_TEXTS)]
    assert any(expected)  # something to compare
    nlp.to_disk(tmp_path / "pipeline")
    result = load_in_fresh_process(tmp_path / "pipeline", TRAIN_TEXTS, tmp_path)
    assert result["pipe_names"] == ["transformer", "ner_crf"]
    assert result["ents"] == expected
