"""Grouping a batch's items into sub-batches of similar length, with spaCy's own batcher."""
from typing import List, Sequence

from spacy.training.batchers import minibatch_by_padded_size


def padded_batches(lengths: Sequence[int], max_padded: int) -> List[List[int]]:
    """Indices into `lengths`, grouped by length so that each group's padded size (its longest
    item x its number of items) stays within `max_padded`; an item longer than that goes alone.
    Every index appears exactly once, and the whole batch is sorted at once (one buffer).
    """
    positions = [_Position(i, length) for i, length in enumerate(lengths)]
    groups = minibatch_by_padded_size(positions, max_padded, buffer=max(len(positions), 1))
    return [[p.index for p in group] for group in groups]


class _Position:
    """An item's place in its batch, sized like the item, for spaCy's length batcher."""

    __slots__ = ("index", "length")

    def __init__(self, index: int, length: int) -> None:
        self.index, self.length = index, length

    def __len__(self) -> int:
        return self.length
