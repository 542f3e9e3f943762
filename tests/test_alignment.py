"""Tokens to wordpieces with array operations: the same arrays as spacy-transformers' own."""
import random

import numpy
import pytest
import spacy
import torch
from spacy_transformers.align import get_alignment_via_offset_mapping
from spacy_transformers.data_classes import FullTransformerBatch, WordpieceBatch
from spacy_transformers.layers.transformer_model import huggingface_tokenize
from transformers import AutoTokenizer
from transformers.file_utils import ModelOutput

from spacy_secner.encoders import embedded_encoder
from spacy_secner.layers.alignment import offset_alignment, split_by_doc
from spacy_secner.span_getters import get_sent_strided_spans

from conftest import TRAIN_TEXTS

ODD_TEXTS = [
    "APT28 used X-Agent against NATO in 2016 . Lazarus  Group\n\ndeployed WannaCry .",
    "",
    "don't stop-believing 1.2.3[.]4 hxxp://evil[.]com/a?b=c émigré 😀 日本語 C:\\Windows\\x.exe",
    "   ",
    "a" * 300 + " b . " + "c d e f g h i j k l m n o p . " * 6,
    "\n",
    "[CLS] [SEP] [PAD] [UNK] tokens in the text .",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 dropped .",
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(embedded_encoder(), use_fast=True)


@pytest.fixture(scope="module")
def nlp():
    nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "spacy-secner.cti_tokenizer.v1"}}})
    nlp.add_pipe("sentencizer")
    return nlp


def random_texts(seed: int, n: int):
    """Texts of training words, punctuation and odd spacing, some with several sentences."""
    rng = random.Random(seed)
    words = [w for t in TRAIN_TEXTS for w in t.split()] + ["(C2)", "n't", "-", "..", "’s", "€5"]
    spaces = [" ", " ", " ", "", "  ", "\n", "\t"]
    return ["".join(rng.choice(words) + rng.choice(spaces) for _ in range(rng.randint(0, 60))) for _ in range(n)]


@pytest.mark.parametrize("window,stride", [(128, 96), (16, 12), (5, 2)])
def test_offset_alignment_equals_spacy_transformers(nlp, tokenizer, window, stride):
    docs = list(nlp.pipe(ODD_TEXTS + random_texts(window, 40)))
    spans = [s for doc_spans in get_sent_strided_spans(docs, window, stride) for s in doc_spans]
    encoding = huggingface_tokenize(tokenizer, [span.text for span in spans])
    expected = get_alignment_via_offset_mapping(spans, encoding["offset_mapping"])
    got = offset_alignment(spans, encoding["offset_mapping"])
    assert got.data.dtype == expected.data.dtype and got.lengths.dtype == expected.lengths.dtype
    numpy.testing.assert_array_equal(got.lengths, expected.lengths)
    numpy.testing.assert_array_equal(got.dataXd, expected.dataXd)
    assert len(got.data) > len(spans)


def test_offset_alignment_of_nothing(nlp):
    got = offset_alignment([], numpy.zeros((0, 0, 2), dtype="int64"))
    assert len(got.data) == 0 and len(got.lengths) == 0


def test_split_by_doc_equals_spacy_transformers(nlp, tokenizer):
    docs = list(nlp.pipe(ODD_TEXTS + random_texts(1, 20)))
    nested = get_sent_strided_spans(docs, 16, 12)
    spans = [s for doc_spans in nested for s in doc_spans]
    encoding = huggingface_tokenize(tokenizer, [span.text for span in spans])
    wordpieces = WordpieceBatch.from_batch_encoding(encoding)
    align = get_alignment_via_offset_mapping(spans, encoding["offset_mapping"])
    shape = wordpieces.input_ids.shape
    output = ModelOutput(
        last_hidden_state=torch.randn(*shape, 4),
        pooler_output=torch.randn(shape[0], 4),
        hidden_states=(torch.randn(*shape, 4), torch.randn(*shape, 4)),
    )
    batch = FullTransformerBatch(spans=nested, wordpieces=wordpieces, model_output=output, align=align)
    expected, got = batch.split_by_doc(), split_by_doc(batch)
    assert len(got) == len(expected) == len(docs)
    for a, b in zip(got, expected):
        assert a.wordpieces.strings == b.wordpieces.strings
        assert a.wordpieces.lengths == b.wordpieces.lengths
        numpy.testing.assert_array_equal(a.wordpieces.input_ids, b.wordpieces.input_ids)
        numpy.testing.assert_array_equal(a.align.dataXd, b.align.dataXd)
        numpy.testing.assert_array_equal(a.align.lengths, b.align.lengths)
        assert list(a.model_output.keys()) == list(b.model_output.keys())
        for key in b.model_output:
            if isinstance(b.model_output[key], list):
                for x, y in zip(a.model_output[key], b.model_output[key]):
                    numpy.testing.assert_array_equal(x, y)
            else:
                numpy.testing.assert_array_equal(a.model_output[key], b.model_output[key])
