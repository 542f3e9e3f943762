"""`pipe_in_pieces`: long docs annotated in pieces of sentences, joined back; short docs as
`nlp.pipe` annotates them."""

import json
from pathlib import Path
from typing import List, Tuple

import pytest
import spacy
import srsly
from conftest import TRAIN_TEXTS, make_cnn_nlp, make_examples, make_grouped_trf_nlp
from conftest import train_until_gold
from spacy.language import Language
from spacy.tokens import Doc, Span

from spacy_secner.long_docs import piece_bounds, pipe_in_pieces, pipes_before_split

# Sentences joined every way a report joins them: spaces, newlines, blank lines, no space at
# all after a full stop, and trailing whitespace.
SEPARATORS = [" ", "\n", "\n\n", "  ", " \t "]
LONG_TEXT = "".join(
    TRAIN_TEXTS[i % len(TRAIN_TEXTS)] + SEPARATORS[i % len(SEPARATORS)] for i in range(40)
) + "APT28 used X-Agent.Lazarus Group deployed WannaCry ransomware in May 2017.\n"

if not Span.has_extension("test_note"):
    Span.set_extension("test_note", default=None)


@Language.component("secner_test_span_groups")
def mark_entities(doc: Doc) -> Doc:
    """Copies the entities into a span group, each with a span extension, as `cti_iocs` does."""
    doc.spans["marks"] = list(doc.ents)
    for span in doc.spans["marks"]:
        span._.test_note = f"{span.label_}:{span.text}"
    return doc


@pytest.fixture(scope="module")
def sent_cnn_nlp() -> Language:
    """sentencizer -> ner_crf (CNN) trained to reproduce the five sentences."""
    nlp = make_cnn_nlp()
    nlp.add_pipe("sentencizer", first=True)
    result = train_until_gold(nlp, make_examples(nlp))
    assert result["predicted"] == result["gold"]
    return nlp


@pytest.fixture(scope="module")
def sent_trf_nlp(tiny_bert_dir) -> Language:
    """sentencizer -> transformer (tiny BERT, sentence windows) -> ner_crf, initialized."""
    return make_grouped_trf_nlp(tiny_bert_dir, 512)


def annotations(doc: Doc) -> List[Tuple]:
    return [(e.start_char, e.end_char, e.label_, e._.confidence) for e in doc.ents]


def sentence_starts(doc: Doc) -> List[int]:
    return [sent.start for sent in doc.sents]


def make_sentenced_doc(n_tokens: int, starts: List[int]) -> Doc:
    vocab = spacy.blank("en").vocab
    return Doc(vocab, words=["w"] * n_tokens, sent_starts=[i in starts for i in range(n_tokens)])


@pytest.mark.parametrize(
    "n_tokens,starts,max_tokens,expected",
    [
        (10, [0, 4, 8], 10, [(0, 10)]),
        (10, [0, 4, 8], 9, [(0, 8), (8, 10)]),
        (10, [0, 4, 8], 5, [(0, 4), (4, 8), (8, 10)]),
        # A sentence longer than a piece is cut, and its tail starts the next piece.
        (12, [0, 2, 9], 3, [(0, 2), (2, 5), (5, 8), (8, 9), (9, 12)]),
        (12, [0, 2, 9], 4, [(0, 2), (2, 6), (6, 9), (9, 12)]),
        (7, [0], 3, [(0, 3), (3, 6), (6, 7)]),
    ],
)
def test_piece_bounds(n_tokens, starts, max_tokens, expected):
    assert piece_bounds(make_sentenced_doc(n_tokens, starts), max_tokens) == expected


def test_piece_bounds_cover_the_doc_in_whole_sentences(sent_cnn_nlp):
    doc = sent_cnn_nlp.get_pipe("sentencizer")(sent_cnn_nlp.make_doc(LONG_TEXT))
    starts = set(sentence_starts(doc))
    for max_tokens in (1, 7, 15, 40, 1000):
        bounds = piece_bounds(doc, max_tokens)
        assert [start for start, _ in bounds] == [0, *[end for _, end in bounds[:-1]]]
        assert bounds[-1][1] == len(doc)
        assert all(0 < end - start <= max_tokens for start, end in bounds)
        longest = max(sent.end - sent.start for sent in doc.sents)
        if max_tokens >= longest:
            assert all(start in starts for start, _ in bounds)


def test_pipes_before_split(sent_cnn_nlp):
    assert [name for name, _ in pipes_before_split(sent_cnn_nlp)] == ["sentencizer"]
    assert pipes_before_split(make_cnn_nlp()) == []


@pytest.mark.parametrize("nlp_name", ["sent_cnn_nlp", "sent_trf_nlp"])
def test_docs_that_fit_are_annotated_as_by_nlp_pipe(nlp_name, request):
    nlp = request.getfixturevalue(nlp_name)
    texts = [*TRAIN_TEXTS, LONG_TEXT, "", " \n"]
    expected = list(nlp.pipe(texts, batch_size=3))
    got = list(pipe_in_pieces(nlp, texts, batch_size=3, max_piece_tokens=10_000))
    assert [doc.text for doc in got] == texts
    assert [annotations(doc) for doc in got] == [annotations(doc) for doc in expected]
    assert any(doc.ents for doc in got)
    if nlp.has_pipe("transformer"):
        # Their transformer output is kept, as nlp.pipe keeps it.
        for doc, ref in zip(got, expected):
            assert doc._.trf_data.wordpieces.strings == ref._.trf_data.wordpieces.strings


@pytest.mark.parametrize("nlp_name", ["sent_cnn_nlp", "sent_trf_nlp"])
def test_a_long_doc_is_its_pieces_annotated_alone_and_joined(nlp_name, request):
    nlp = request.getfixturevalue(nlp_name)
    max_tokens = 30
    (doc,) = pipe_in_pieces(nlp, [LONG_TEXT], max_piece_tokens=max_tokens, batch_size=4)
    reference = nlp.get_pipe("sentencizer")(nlp.make_doc(LONG_TEXT))
    bounds = piece_bounds(reference, max_tokens)
    assert len(bounds) > 5
    # The same text, tokens and sentences as the doc annotated whole.
    assert doc.text == LONG_TEXT
    assert [t.text for t in doc] == [t.text for t in reference]
    assert [t.whitespace_ for t in doc] == [t.whitespace_ for t in reference]
    assert sentence_starts(doc) == sentence_starts(reference)
    # Entities and confidences: those of each piece annotated on its own, shifted.
    expected = []
    for start, end in bounds:
        span = reference[start:end]
        piece = nlp(span.as_doc())
        expected += [
            (s + span.start_char, e + span.start_char, label, confidence)
            for s, e, label, confidence in annotations(piece)
        ]
    # Batched with other pieces, the floats may differ in the last bits.
    assert [a[:3] for a in annotations(doc)] == [e[:3] for e in expected]
    assert [a[3] for a in annotations(doc)] == pytest.approx([e[3] for e in expected], abs=1e-5)
    assert doc.ents and all(0.0 <= ent._.confidence <= 1.0 for ent in doc.ents)
    if nlp.has_pipe("transformer"):
        # The transformer output of the pieces is what took memory: it is not kept.
        assert doc._.trf_data is None


def test_pieces_never_exceed_the_limit(sent_trf_nlp, monkeypatch):
    """What bounds memory: the transformer and ner_crf only ever see pieces, at most
    `batch_size` of them at a time."""
    seen: List[List[int]] = []
    ner = sent_trf_nlp.get_pipe("ner_crf")
    predict = ner.predict

    def spy(docs):
        docs = list(docs)
        seen.append([len(doc) for doc in docs])
        return predict(docs)

    monkeypatch.setattr(ner, "predict", spy)
    texts = [LONG_TEXT, TRAIN_TEXTS[0], LONG_TEXT * 3]
    docs = list(pipe_in_pieces(sent_trf_nlp, texts, max_piece_tokens=25, batch_size=4))
    assert [doc.text for doc in docs] == texts
    assert seen and max(max(lengths) for lengths in seen) <= 25
    assert max(len(lengths) for lengths in seen) <= 4
    assert sum(map(sum, seen)) == sum(len(doc) for doc in docs)


def test_span_groups_and_extensions_survive_the_join(sent_cnn_nlp, tmp_path):
    sent_cnn_nlp.to_disk(tmp_path / "nlp")
    nlp = spacy.load(tmp_path / "nlp")
    nlp.add_pipe("secner_test_span_groups")
    (doc,) = pipe_in_pieces(nlp, [LONG_TEXT], max_piece_tokens=20)
    assert len(doc.spans["marks"]) == len(doc.ents) > 10
    assert [(s.start_char, s.end_char, s.label_) for s in doc.spans["marks"]] == [
        (e.start_char, e.end_char, e.label_) for e in doc.ents
    ]
    assert [s._.test_note for s in doc.spans["marks"]] == [
        f"{e.label_}:{e.text}" for e in doc.ents
    ]


def test_what_a_doc_brings_survives_the_pieces():
    """A Doc given with token and span extensions and span groups (set by the caller or by the
    pipes before the split) gets them back whole, however it is cut."""
    from spacy.tokens import Token

    if not Token.has_extension("secner_test_mark"):
        Token.set_extension("secner_test_mark", default=None)
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    text = " ".join(f"Sentence number {i} is here ." for i in range(20))

    def given() -> Doc:
        doc = nlp.make_doc(text)
        doc[3]._.secner_test_mark, doc[60]._.secner_test_mark = "X", "Y"
        doc.spans["given"] = [Span(doc, 0, 2, "A"), Span(doc, 61, 63, "B")]
        doc.user_data["plain"] = 1
        return doc

    def seen(doc: Doc):
        return (
            [(t.i, t._.secner_test_mark) for t in doc if t._.secner_test_mark],
            [(s.start, s.end, s.label_) for s in doc.spans.get("given", [])],
            doc.user_data.get("plain"),
        )

    (whole,) = pipe_in_pieces(nlp, [given()], max_piece_tokens=10_000)
    (cut,) = pipe_in_pieces(nlp, [given()], max_piece_tokens=20)
    assert seen(cut) == seen(whole) == ([(3, "X"), (60, "Y")], [(0, 2, "A"), (61, 63, "B")], 1)


def test_a_pipeline_without_sentences_is_cut_every_n_tokens(trained_cnn_nlp):
    (doc,) = pipe_in_pieces(trained_cnn_nlp, [LONG_TEXT], max_piece_tokens=16)
    assert doc.text == LONG_TEXT
    reference = trained_cnn_nlp.make_doc(LONG_TEXT)
    assert [t.text for t in doc] == [t.text for t in reference]
    assert not doc.has_annotation("SENT_START")  # the cuts are not made sentence boundaries
    expected = []
    for start in range(0, len(reference), 16):
        span = reference[start : start + 16]
        piece = trained_cnn_nlp(span.as_doc())
        expected += [(e.start_char + span.start_char, e.label_) for e in piece.ents]
    assert [(e.start_char, e.label_) for e in doc.ents] == expected
    assert doc.ents


def test_tuples_docs_and_multiprocessing(sent_cnn_nlp):
    texts = [LONG_TEXT, TRAIN_TEXTS[1], LONG_TEXT[:300]]
    single = list(pipe_in_pieces(sent_cnn_nlp, texts, max_piece_tokens=20, batch_size=2))
    tuples = list(
        pipe_in_pieces(
            sent_cnn_nlp,
            [(text, i) for i, text in enumerate(texts)],
            as_tuples=True,
            max_piece_tokens=20,
            batch_size=2,
            n_process=2,
        )
    )
    assert [context for _, context in tuples] == [0, 1, 2]
    assert [annotations(doc) for doc, _ in tuples] == [annotations(doc) for doc in single]
    docs = [sent_cnn_nlp.make_doc(text) for text in texts]
    from_docs = list(pipe_in_pieces(sent_cnn_nlp, docs, max_piece_tokens=20, batch_size=2))
    assert [annotations(doc) for doc in from_docs] == [annotations(doc) for doc in single]


FIXTURES = Path(__file__).parent / "fixtures"


def test_same_entities_as_recorded_by_0_1_0():
    """A pipeline of en_secner's shape saved by spacy-secner 0.1.0 gives, through
    pipe_in_pieces and through `secner annotate`, the entities and confidences it gave then
    with nlp.pipe: its texts fit in one piece."""
    from typer.testing import CliRunner

    from spacy_secner.cli import app

    recorded = srsly.read_json(FIXTURES / "saved-0.1.0.json")
    nlp = spacy.load(FIXTURES / "saved-0.1.0")
    docs = list(pipe_in_pieces(nlp, recorded["texts"]))
    assert any(recorded["ents"])
    for doc, expected in zip(docs, recorded["ents"], strict=True):
        assert [a[:3] for a in annotations(doc)] == [tuple(e[:3]) for e in expected]
        assert [a[3] for a in annotations(doc)] == pytest.approx([e[3] for e in expected], abs=1e-6)

    texts = recorded["texts"]
    jsonl = "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts))
    args = ["annotate", "-", "--input-format", "jsonl", "--model", str(FIXTURES / "saved-0.1.0")]
    result = CliRunner().invoke(app, args, input=jsonl)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    for record, expected in zip(records, recorded["ents"], strict=True):
        got = [(e["start"], e["end"], e["label"]) for e in record["entities"]]
        assert got == [tuple(e[:3]) for e in expected]
        confidences = [e["confidence"] for e in record["entities"]]
        assert confidences == pytest.approx([e[3] for e in expected], abs=5.1e-5)  # 4 decimals


def test_secner_annotate_cuts_long_documents(sent_cnn_nlp, tmp_path):
    from typer.testing import CliRunner

    from spacy_secner.cli import app

    sent_cnn_nlp.to_disk(tmp_path / "nlp")
    (tmp_path / "report.txt").write_text(LONG_TEXT, encoding="utf8")
    args = ["annotate", str(tmp_path / "report.txt"), "--model", str(tmp_path / "nlp")]
    for max_tokens in (30, 10_000):
        result = CliRunner().invoke(app, [*args, "--max-piece-tokens", str(max_tokens)])
        assert result.exit_code == 0, result.output
        (record,) = [json.loads(line) for line in result.stdout.splitlines()]
        (doc,) = pipe_in_pieces(sent_cnn_nlp, [LONG_TEXT], max_piece_tokens=max_tokens)
        if max_tokens > len(doc):
            assert annotations(doc) == annotations(sent_cnn_nlp(LONG_TEXT))
        got = [(e["start"], e["end"], e["label"], e["text"]) for e in record["entities"]]
        assert got == [(e.start_char, e.end_char, e.label_, e.text) for e in doc.ents]
        assert all(LONG_TEXT[s:e] == text for s, e, _, text in got)


def test_bad_settings(sent_cnn_nlp):
    with pytest.raises(ValueError, match="max_piece_tokens"):
        list(pipe_in_pieces(sent_cnn_nlp, ["x"], max_piece_tokens=0))
