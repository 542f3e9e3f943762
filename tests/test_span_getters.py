"""`spacy-secner.sent_strided_spans.v1`: strided windows that never cross a sentence."""
import pytest
import spacy
from spacy.tokens import Doc
from spacy_transformers.span_getters import get_strided_spans
from spacy_transformers.util import registry

from spacy_secner.span_getters import configure_sent_strided_spans

NAME = "spacy-secner.sent_strided_spans.v1"


def bounds(spans):
    return [[(s.start, s.end) for s in doc_spans] for doc_spans in spans]


@pytest.mark.parametrize("window,stride", [(4, 3), (5, 5), (8, 2), (1, 1)])
def test_without_sentences_it_is_strided_spans(window, stride):
    nlp = spacy.blank("en")
    docs = [Doc(nlp.vocab, words=[f"w{i}" for i in range(n)]) for n in (0, 1, 3, 4, 5, 9, 17)]
    ours = registry.span_getters.get(NAME)(window=window, stride=stride)(docs)
    assert bounds(ours) == bounds(get_strided_spans(docs, window=window, stride=stride))


def test_windows_stay_inside_sentences_and_cover_every_token():
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    text = "APT28 used X-Agent . " + " ".join(f"w{i}" for i in range(11)) + " . Turla struck ."
    doc = nlp(text)
    sents = [(s.start, s.end) for s in doc.sents]
    assert len(sents) == 3
    spans = configure_sent_strided_spans(window=4, stride=3)([doc])[0]
    for span in spans:
        assert any(start <= span.start and span.end <= end for start, end in sents), span
    covered = {i for span in spans for i in range(span.start, span.end)}
    assert covered == set(range(len(doc)))
    # The long middle sentence (12 tokens) is strided like a doc of its own.
    start, end = sents[1]
    assert end - start == 12
    middle = [(s.start - start, s.end - start) for s in spans if start <= s.start < end]
    assert middle == [(0, 4), (3, 7), (6, 10), (9, 12)]


@pytest.mark.parametrize("window,stride", [(0, 1), (4, 5), (4, 0)])
def test_bad_settings_raise(window, stride):
    with pytest.raises(ValueError, match="window"):
        configure_sent_strided_spans(window=window, stride=stride)
