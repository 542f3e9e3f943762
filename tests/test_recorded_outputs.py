"""Entities and confidences stay what they were: the saved pipeline of `tests/fixtures` on
texts whose outputs were recorded before the decoder and the pipe's overhead were vectorised
(`tests/fixtures/record_saved_outputs.py`)."""
from pathlib import Path

import pytest
import spacy
import srsly

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def recorded():
    return srsly.read_json(FIXTURES / "saved-0.1.0-outputs.json")


@pytest.fixture(scope="module")
def saved_nlp():
    return spacy.load(FIXTURES / "saved-0.1.0")


def assert_same(got, expected):
    assert len(got) == len(expected)
    for doc_got, doc_expected in zip(got, expected):
        assert [e[:3] for e in doc_got] == [e[:3] for e in doc_expected]
        # float32 encoder and BiLSTM: the batch's padding moves the last digits.
        assert [e[3] for e in doc_got] == pytest.approx([e[3] for e in doc_expected], abs=1e-6)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_saved_pipeline_gives_the_recorded_outputs(saved_nlp, recorded, batch_size):
    docs = saved_nlp.pipe(recorded["texts"], batch_size=batch_size)
    got = [[[e.start_char, e.end_char, e.label_, e._.confidence] for e in doc.ents] for doc in docs]
    assert sum(map(len, got)) > 500, "the recorded texts hold many entities"
    assert_same(got, recorded["ents"])


def test_recorded_outputs_do_not_depend_on_chunking(recorded):
    """Small `max_batch_tokens`: the head runs on many chunks, long documents alone."""
    nlp = spacy.load(FIXTURES / "saved-0.1.0", config={"components": {"ner_crf": {"max_batch_tokens": 40}}})
    docs = nlp.pipe(recorded["texts"], batch_size=64)
    got = [[[e.start_char, e.end_char, e.label_, e._.confidence] for e in doc.ents] for doc in docs]
    assert_same(got, recorded["ents"])
