"""What the pipe asks of the model's decoder: the loss, the best tags and span probabilities.

Each function takes the emission scores of the `ner_crf` model (`bilstm_crf.py`) and runs its
decoder once for the whole batch, on the non-empty sequences only.
"""
import math
from typing import List, NamedTuple, Sequence, Tuple

import numpy
from spacy.tokens import Doc
from thinc.api import Model
from thinc.types import Floats2d, Ints1d, Ints2d

from ..batching import padded_batches
from ..bio import entity_bounds


def crf_loss(
    model: Model, scores: List[Floats2d], gold: List[Ints1d]
) -> Tuple[float, List[Floats2d]]:
    """Mean CRF negative log-likelihood per sequence and its gradient for the scores.

    The CRF's transitions are weights of the loss itself: their gradient is accumulated here and
    applied by the next `finish_update`, like every other weight of the model.
    """
    keep = [i for i, s in enumerate(scores) if len(s)]
    d_scores = [model.ops.alloc2f(*s.shape) for s in scores]
    if not keep:
        return 0.0, d_scores
    decoder = model.get_ref("decoder")
    loss, backprop = decoder.begin_update(([scores[i] for i in keep], [gold[i] for i in keep], None))
    for i, d in zip(keep, backprop(1.0)):
        d_scores[i] = d
    return loss, d_scores


def crf_nll(model: Model, scores: List[Floats2d], gold: List[Ints1d]) -> float:
    """Mean CRF negative log-likelihood per sequence, without gradients (e.g. a dev loss)."""
    keep = [i for i, s in enumerate(scores) if len(s)]
    if not keep:
        return 0.0
    return model.get_ref("decoder").predict(([scores[i] for i in keep], [gold[i] for i in keep], None))


def crf_decode(model: Model, scores: List[Floats2d]) -> List[Ints1d]:
    """Best tag sequence for each doc (Viterbi), as tag indices in host (numpy) arrays."""
    keep = [i for i, s in enumerate(scores) if len(s)]
    paths = [numpy.zeros((0,), dtype="int64") for _ in scores]
    if keep:
        decoded = model.get_ref("decoder").predict(([scores[i] for i in keep], None, None))
        for i, path in zip(keep, decoded):
            paths[i] = path
    return paths


def crf_span_confidence(
    model: Model, scores: List[Floats2d], paths: List[Ints1d]
) -> List[List[float]]:
    """The CRF's marginal probability of each decoded entity, per doc in entity order.

    P(tokens i..j-1 form exactly this entity) sums the probability of every tag sequence that
    agrees with the entity: its own tags inside and no `I-X` right after it (which would
    extend it). One forward-backward pass over the batch gives all of them.
    """
    tags = model.attrs["tags"]
    inside = {i: tags.index("I-" + tag[2:]) for i, tag in enumerate(tags) if tag != "O"}
    keep = [i for i, s in enumerate(scores) if len(s)]
    spans = []
    for row, doc_i in enumerate(keep):
        path = paths[doc_i].tolist()
        for start, end in entity_bounds([tags[t] for t in path]):
            spans.append((row, start, end, inside[path[start]]))
    confidences: List[List[float]] = [[] for _ in scores]
    if not spans:
        return confidences
    X = ([scores[i] for i in keep], [paths[i] for i in keep], numpy.asarray(spans, dtype="int64"))
    log_probs = model.get_ref("decoder").predict(X)
    for (row, *_), log_p in zip(spans, log_probs.tolist()):
        confidences[keep[row]].append(min(1.0, math.exp(log_p)))
    return confidences


class DocEntities(NamedTuple):
    """What the decoder found in a batch of docs, per doc: the best tag indices, the entities
    as (m, 3) rows of start token, end token and label index (into the pipe's labels), and
    each entity's confidence (empty without confidences)."""

    tag_ids: List[Ints1d]
    entities: List[Ints2d]
    confidences: List[List[float]]


def decode_entities(
    model: Model,
    docs: Sequence[Doc],
    scores: List[Floats2d],
    confidence: bool,
    *,
    max_padded: int = 16384,
) -> DocEntities:
    """The decoded entities of `docs`, with each sentence decoded as its own sequence where a
    doc has sentence boundaries.

    The CRF learned on single sentences, so it gets its learned start and end transitions at
    sentence edges, and no entity runs across a sentence boundary. The sentences of all docs
    are decoded together, in groups of similar length of at most `max_padded` padded tokens:
    a decoder call costs a few operations per time step of its longest sentence, whatever the
    number of sentences. The decoder reads the entities off the paths and scores them in the
    same call (`BIODecoder.annotate`); here they only move from sentences to docs, with array
    operations.
    """
    owner, offset, length = _segments(docs)
    n_docs = len(docs)
    empty = DocEntities(
        [numpy.zeros((0,), dtype="int64") for _ in docs],
        [numpy.zeros((0, 3), dtype="int64") for _ in docs],
        [[] for _ in docs],
    )
    if not len(owner):
        return empty
    what = "confidences" if confidence else "entities"
    decoder = model.get_ref("decoder")
    # Segments cover their docs in order: their tags, joined, are the docs' tags.
    flat_tags = numpy.zeros((int(length.sum()),), dtype="int64")
    seg_start = numpy.cumsum(length) - length
    found_parts, prob_parts = [], []
    for group in padded_batches(length.tolist(), max_padded):
        rows = numpy.asarray(group, dtype="int64")
        segments = [scores[owner[k]][offset[k] : offset[k] + length[k]] for k in group]
        paths, found, log_probs = decoder.predict((segments, None, what))
        steps = numpy.arange(paths.shape[1])[None, :]
        real = steps < length[rows][:, None]
        flat_tags[(seg_start[rows][:, None] + steps)[real]] = paths[real]
        found[:, 0] = rows[found[:, 0]]
        found_parts.append(found)
        prob_parts.append(log_probs)
    found = numpy.concatenate(found_parts)
    order = numpy.argsort(found[:, 0], kind="stable")  # segment order, starts in order within
    found = found[order]
    doc_ends = numpy.cumsum([len(doc) for doc in docs]).tolist()
    tag_ids = [flat_tags[end - len(doc) : end] for doc, end in zip(docs, doc_ends)]
    seg = found[:, 0]
    entity_rows = numpy.stack(
        [found[:, 1] + offset[seg], found[:, 2] + offset[seg], (found[:, 3] - 1) // 2], axis=1
    )
    bounds = numpy.searchsorted(owner[seg], numpy.arange(n_docs + 1))
    entities = [entity_rows[bounds[i] : bounds[i + 1]] for i in range(n_docs)]
    if confidence:
        log_probs = numpy.concatenate(prob_parts)[order]
        probs = numpy.minimum(numpy.exp(log_probs), 1.0).tolist()
        confidences = [probs[bounds[i] : bounds[i + 1]] for i in range(n_docs)]
    else:
        confidences = empty.confidences
    return DocEntities(tag_ids, entities, confidences)


def decode_by_sentence(
    model: Model, docs: Sequence[Doc], scores: List[Floats2d], confidence: bool
) -> Tuple[List[Ints1d], List[List[float]]]:
    """Viterbi tags (host arrays) and, if `confidence`, entity confidences per doc, with each
    sentence decoded as its own sequence where the doc has sentence boundaries (see
    `decode_entities`)."""
    found = decode_entities(model, docs, scores, confidence)
    return found.tag_ids, found.confidences


def _segments(docs: Sequence[Doc]) -> Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """The doc, start token and length of each sentence of the non-empty docs, in order (a doc
    without sentence boundaries is one segment)."""
    owner, offset, length = [], [], []
    for i, doc in enumerate(docs):
        n = len(doc)
        if not n:
            continue
        starts = [0]
        if doc.has_annotation("SENT_START"):
            flags = doc.to_array("SENT_START")
            starts = numpy.flatnonzero(flags == 1)
            if not len(starts) or starts[0] != 0:
                starts = numpy.concatenate([[0], starts])
            starts = starts.tolist()
        owner += [i] * len(starts)
        offset += starts
        length += numpy.diff(starts + [n]).tolist()
    as_array = lambda values: numpy.asarray(values, dtype="int64")  # noqa: E731
    return as_array(owner), as_array(offset), as_array(length)

