"""What the pipe asks of the model's decoder: the loss, the best tags and span probabilities.

Each function takes the emission scores of the `ner_crf` model (`bilstm_crf.py`) and runs its
decoder once for the whole batch, on the non-empty sequences only.
"""
import math
from typing import List, Sequence, Tuple

import numpy
from spacy.tokens import Doc
from thinc.api import Model
from thinc.types import Floats2d, Ints1d

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


def decode_by_sentence(
    model: Model, docs: Sequence[Doc], scores: List[Floats2d], confidence: bool
) -> Tuple[List[Ints1d], List[List[float]]]:
    """Viterbi tags (host arrays) and, if `confidence`, entity confidences per doc, with each
    sentence decoded as its own sequence where the doc has sentence boundaries.

    The CRF learned on single sentences, so it gets its learned start and end transitions at
    sentence edges, and no entity runs across a sentence boundary. A batch of sentences also
    decodes in far fewer time steps than whole reports.
    """
    bounds = [sentence_bounds(doc) for doc in docs]
    segments = [
        scores[i][start:end] for i, doc_bounds in enumerate(bounds) for start, end in doc_bounds
    ]
    seg_ids = crf_decode(model, segments)
    seg_found = crf_span_confidence(model, segments, seg_ids) if confidence else None
    ids: List[Ints1d] = []
    found: List[List[float]] = []
    k = 0
    for doc_bounds in bounds:
        n = len(doc_bounds)
        ids.append(seg_ids[k] if n == 1 else numpy.concatenate(seg_ids[k : k + n]))
        if seg_found is None:
            found.append([])
        else:
            found.append([c for seg in seg_found[k : k + n] for c in seg])
        k += n
    return ids, found


def sentence_bounds(doc: Doc) -> List[Tuple[int, int]]:
    """(start, end) token offsets of a doc's sentences, or the whole doc if it has none."""
    if len(doc) and doc.has_annotation("SENT_START"):
        return [(sent.start, sent.end) for sent in doc.sents]
    return [(0, len(doc))]
