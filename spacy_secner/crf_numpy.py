"""`BIOCRF`'s passes in numpy, for emissions on the CPU.

The passes loop over time steps with a few small array operations per step (a batch of one
sentence: 27 tags, about 25 steps). On tensors that small the cost is the call, not the
arithmetic, and a numpy call costs a fraction of a torch one: the same passes in numpy take
less than half the time for one sentence and are no slower for 64. They compute exactly what
`BIOCRF._passes` and `BIOCRF._span_log_probs` compute, operation for operation (the Viterbi
scores to the bit; the float64 sums up to rounding), and the GPU keeps the torch versions.
"""
from typing import Any, List, Optional, Tuple

import numpy

# Up to this many sequences, the Viterbi pass keeps its back-pointers (an argmax over every pair
# of tags at each step) and the paths follow them in plain Python; for more, recomputing only
# the back-pointers the paths need (`_trace_back` in `pytorch_bilstm_crf`) costs less.
POINTER_MAX_ROWS = 2


def passes(
    emissions: numpy.ndarray,
    lengths: numpy.ndarray,
    start: numpy.ndarray,
    trans: numpy.ndarray,
    end: numpy.ndarray,
    *,
    sums: bool,
    pointers: bool = False,
) -> Tuple[numpy.ndarray, Optional[Tuple[Any, ...]], Optional[List[numpy.ndarray]]]:
    """The Viterbi scores (n, T, K); with `sums`, the fields of the forward and backward
    tables, as `BIOCRF._passes` computes them (see there for the method); with `pointers`, the
    best previous tag of each tag at each step after the first ((n, K) per step), from
    pytorch-crf's own sums (score + transition + emission, in float32) and tie-break (the first
    best previous tag). The scores are the same either way: rounding is monotonic."""
    n, steps, n_tags = emissions.shape
    score = start + emissions[:, 0]
    all_scores = [score]
    kept: Optional[List[numpy.ndarray]] = [] if pointers else None
    if pointers:
        sequences, tags = numpy.arange(n)[:, None], numpy.arange(n_tags)
    if sums:
        rows = numpy.arange(n)
        e = emissions.astype(numpy.float64)
        back = numpy.maximum(lengths[:, None] - 1 - numpy.arange(steps), 0)
        both = numpy.stack([e, e[rows[:, None], back]])  # (2, n, T, K)
        e_max = both.max(3, keepdims=True)
        p_emit = numpy.exp(both - e_max)
        t64, s64, end64 = (a.astype(numpy.float64) for a in (trans, start, end))
        t_max = t64.max()
        p_trans = numpy.exp(t64 - t_max)
        ends = numpy.stack([s64, end64])
        ends_max = ends.max(1, keepdims=True)
        state = numpy.exp(ends - ends_max)[:, None, :] * p_emit[:, :, 0]
        norm = state.sum(2, keepdims=True)
        state = state / norm
        states, norms = [state], [norm]
        matrices = numpy.stack([p_trans, p_trans.T])
    for t in range(1, steps):
        if kept is not None:
            candidates = score[:, :, None] + trans
            candidates += emissions[:, t, None, :]
            best = candidates.argmax(1)
            kept.append(best)
            score = candidates[sequences, best, tags]
        else:
            score = (score[:, :, None] + trans).max(1) + emissions[:, t]
        all_scores.append(score)
        if sums:
            state = numpy.matmul(state, matrices) * p_emit[:, :, t]
            norm = state.sum(2, keepdims=True)
            state = state / norm
            states.append(state)
            norms.append(norm)
    scores = numpy.stack(all_scores, 1)
    if not sums:
        return scores, None, kept
    log_scale = (numpy.log(numpy.concatenate(norms, 2)) + e_max[..., 0] + t_max).cumsum(2)
    log_scale = log_scale - t_max + ends_max[:, :, None]
    table = numpy.stack(states, 2)  # (2, n, T, K)
    return scores, (table, log_scale, p_trans, t_max, back, (s64, t64, end64)), kept


def follow_pointers(
    pointers: List[numpy.ndarray], last: numpy.ndarray, lengths: numpy.ndarray
) -> numpy.ndarray:
    """The Viterbi paths (n, T), from each sequence's best last tag back along the
    back-pointers of `passes`; positions past a sequence's end hold 0."""
    n = len(lengths)
    paths = numpy.zeros((n, len(pointers) + 1), dtype="int64")
    table = numpy.stack(pointers, 1).tolist() if pointers else [[] for _ in range(n)]
    for i, (tag, length) in enumerate(zip(last.tolist(), lengths.tolist())):
        path = [tag] * length
        for t in range(length - 1, 0, -1):
            tag = table[i][t - 1][tag]
            path[t - 1] = tag
        paths[i, :length] = path
    return paths


def span_log_probs(
    tables: Any,
    emissions: numpy.ndarray,
    lengths: numpy.ndarray,
    tags: numpy.ndarray,
    spans: numpy.ndarray,
) -> numpy.ndarray:
    """Each span's log-probability from the tables of `passes`, as `BIOCRF._span_log_probs`."""
    start, trans, end = tables.scores
    e = emissions.astype(numpy.float64)
    rows = numpy.arange(e.shape[0])
    forward, backward = tables.table[0], tables.table[1]
    f_scale, b_scale = tables.log_scale[0], tables.log_scale[1]
    last = lengths - 1
    end_max = end.max()
    log_z = numpy.log(forward[rows, last] @ numpy.exp(end - end_max))
    log_z = log_z + f_scale[rows, last] + end_max
    path = numpy.maximum(tags, 0)
    own = numpy.take_along_axis(e, path[:, :, None], 2)[:, :, 0]
    own[:, 1:] += trans[path[:, :-1], path[:, 1:]]
    cumulated = own.cumsum(1)

    seq, first, stop, barred = spans.T
    span_last = stop - 1
    first_tag, last_tag = path[seq, first], path[seq, span_last]
    inner = e[seq, first, first_tag] + cumulated[seq, span_last] - cumulated[seq, first]
    before = numpy.maximum(first - 1, 0)
    # Both sides of each `where` are computed, as torch does; the unused one may take log(0).
    with numpy.errstate(divide="ignore"):
        into = numpy.log((forward[seq, before] * tables.p_trans[:, first_tag].T).sum(1))
        into = into + f_scale[seq, before] + tables.t_max
        left = numpy.where(first == 0, start[first_tag], into)
        after = numpy.maximum(lengths[seq] - 1 - stop, 0)
        out_of = tables.p_trans[last_tag] * backward[seq, after]
        out_of[numpy.arange(len(seq)), barred] = 0.0
        out_of = numpy.log(out_of.sum(1)) + b_scale[seq, after] + tables.t_max
    right = numpy.where(stop == lengths[seq], end[last_tag], out_of)
    return left + inner + right - log_z[seq]
