"""`spacy-secner.mention_swap.v1`: entity mentions swapped for others of the same type."""
import random

import pytest
import spacy
from spacy.tokens import DocBin
from spacy.training import Corpus
from spacy.util import registry

from conftest import TRAIN_DATA, ents_of, make_examples


@pytest.fixture
def corpus_path(tmp_path):
    nlp = spacy.blank("en")
    path = tmp_path / "train.spacy"
    DocBin(docs=[eg.reference for eg in make_examples(nlp, TRAIN_DATA)]).to_disk(path)
    return path


def outside(doc):
    """The words outside entities, in order."""
    inside = {i for ent in doc.ents for i in range(ent.start, ent.end)}
    return [t.text for t in doc if t.i not in inside]


def test_every_swapped_mention_comes_from_the_pool_with_its_label(corpus_path):
    nlp = spacy.blank("en")
    augment = registry.augmenters.get("spacy-secner.mention_swap.v1")(
        path=str(corpus_path), level=1.0, swap_prob=1.0
    )
    pool = {(ent.text, ent.label_) for eg in make_examples(nlp, TRAIN_DATA) for ent in eg.reference.ents}
    random.seed(0)
    swapped_any = False
    for eg in make_examples(nlp, TRAIN_DATA):
        out = list(augment(nlp, eg))
        assert out[0] is eg
        for new in out[1:]:
            swapped_any = True
            assert [t.text for t in new.predicted] == [t.text for t in new.reference]
            assert outside(new.reference) == outside(eg.reference)
            assert [label for _, label in ents_of(new.reference)] == [
                label for _, label in ents_of(eg.reference)
            ]
            assert set(ents_of(new.reference)) <= pool
            assert ents_of(new.reference) != ents_of(eg.reference)
    assert swapped_any


def test_level_zero_yields_only_the_original(corpus_path):
    nlp = spacy.blank("en")
    augment = registry.augmenters.get("spacy-secner.mention_swap.v1")(path=str(corpus_path), level=0.0)
    for eg in make_examples(nlp, TRAIN_DATA):
        assert list(augment(nlp, eg)) == [eg]


def test_corpus_with_the_augmenter_and_gold_tokens(corpus_path):
    nlp = spacy.blank("en")
    augment = registry.augmenters.get("spacy-secner.mention_swap.v1")(
        path=str(corpus_path), level=1.0, swap_prob=1.0
    )
    random.seed(1)
    examples = list(Corpus(str(corpus_path), gold_preproc=True, augmenter=augment)(nlp))
    assert len(TRAIN_DATA) < len(examples) <= 2 * len(TRAIN_DATA)
    for eg in examples:
        assert eg.get_aligned_ner().count("-") == 0  # tokens line up: no misaligned gold


def test_bad_settings_raise(corpus_path):
    with pytest.raises(ValueError, match="level"):
        registry.augmenters.get("spacy-secner.mention_swap.v1")(path=str(corpus_path), level=1.5)
