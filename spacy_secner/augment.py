"""Data augmentation for training: swap entity mentions for other mentions of the same type."""
import random
from typing import Callable, Dict, Iterator, List, Tuple

from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Example
from spacy.util import registry

Mention = Tuple[Tuple[str, ...], Tuple[bool, ...]]  # words and their trailing spaces


@registry.augmenters("spacy-secner.mention_swap.v1")
def create_mention_swap_augmenter(
    path: str, level: float = 0.3, swap_prob: float = 0.5
) -> Callable[[Language, Example], Iterator[Example]]:
    """Yield each training example, and for a share `level` of them also a copy in which every
    entity is replaced, with probability `swap_prob`, by a random mention of the same type from
    the corpus at `path` (the reference report's first open idea).

    path (str): DocBin the mentions come from: the training corpus, so no dev or test text
        leaks in.
    level (float): Share of examples that also yield an augmented copy.
    swap_prob (float): Chance that each entity of such a copy is swapped.
    Uses Python's `random`, which spaCy seeds from `[training] seed`.
    """
    if not 0.0 <= level <= 1.0 or not 0.0 <= swap_prob <= 1.0:
        raise ValueError(f"level and swap_prob must be in [0, 1], got {level} and {swap_prob}")
    pool: Dict[str, List[Mention]] = {}

    def augment(nlp: Language, example: Example) -> Iterator[Example]:
        yield example
        if not example.reference.ents or random.random() >= level:
            return
        if not pool:
            pool.update(read_mentions(nlp, path))
        swapped = swap_mentions(example.reference, pool, swap_prob)
        if swapped is not None:
            predicted = Doc(nlp.vocab, words=[t.text for t in swapped],
                            spaces=[bool(t.whitespace_) for t in swapped])
            yield Example(predicted, swapped)

    return augment


def read_mentions(nlp: Language, path: str) -> Dict[str, List[Mention]]:
    """Every entity mention of a DocBin, by label (duplicates kept: frequent names stay
    frequent)."""
    pool: Dict[str, List[Mention]] = {}
    for doc in DocBin().from_disk(path).get_docs(nlp.vocab):
        for ent in doc.ents:
            mention = (tuple(t.text for t in ent), tuple(bool(t.whitespace_) for t in ent))
            pool.setdefault(ent.label_, []).append(mention)
    if not pool:
        raise ValueError(f"{path} holds no entities to draw mentions from")
    return pool


def swap_mentions(doc: Doc, pool: Dict[str, List[Mention]], swap_prob: float):
    """A new doc with some entities replaced, or None if none was swapped. The last word of a
    new mention keeps the old mention's trailing space, so the text around it is unchanged."""
    words: List[str] = []
    spaces: List[bool] = []
    tags: List[str] = []
    changed = False
    position = 0
    for ent in doc.ents:
        for token in doc[position : ent.start]:
            words.append(token.text)
            spaces.append(bool(token.whitespace_))
            tags.append("O")
        choices = pool.get(ent.label_)
        if choices and random.random() < swap_prob:
            new_words, new_spaces = random.choice(choices)
            changed = changed or list(new_words) != [t.text for t in ent]
        else:
            new_words = tuple(t.text for t in ent)
            new_spaces = tuple(bool(t.whitespace_) for t in ent)
        words.extend(new_words)
        spaces.extend(new_spaces[:-1] + (bool(ent[-1].whitespace_),))
        tags.extend([f"B-{ent.label_}"] + [f"I-{ent.label_}"] * (len(new_words) - 1))
        position = ent.end
    for token in doc[position:]:
        words.append(token.text)
        spaces.append(bool(token.whitespace_))
        tags.append("O")
    if not changed:
        return None
    return Doc(doc.vocab, words=words, spaces=spaces, ents=tags)
