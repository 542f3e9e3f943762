"""Plain PyTorch modules behind `ner_crf`: a packed BiLSTM emitter and a BIO-constrained CRF.

Nothing here imports spaCy or thinc; `architectures.py` wraps these modules for thinc.
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torchcrf import CRF

from . import crf_numpy, lstm_onednn

# Added to the score of a forbidden transition. Finite, so log-sum-exp never sees -inf - -inf.
FORBIDDEN_SCORE = -10000.0


def bio_allowed_transitions(tags: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which starts, transitions and ends are valid BIO.

    tags (Sequence[str]): Tag names such as "O", "B-Tool", "I-Tool".
    RETURNS (Tuple[Tensor, Tensor, Tensor]): Boolean masks (n,), (n, n) and (n,) of what is
        allowed: `I-X` may only follow `B-X` or `I-X`, and no sequence starts with `I-`.
    """
    n = len(tags)
    start = torch.ones(n, dtype=torch.bool)
    trans = torch.ones(n, n, dtype=torch.bool)
    end = torch.ones(n, dtype=torch.bool)
    for j, tag in enumerate(tags):
        if tag.startswith("I-"):
            start[j] = False
            for i, prev in enumerate(tags):
                if prev == "O" or prev[2:] != tag[2:]:
                    trans[i, j] = False
    return start, trans, end


class AddForbiddenScore(nn.Module):
    """Parametrization that pins forbidden transitions to a very low score.

    Used through `torch.nn.utils.parametrize`, so pytorch-crf's own likelihood, normalizer and
    Viterbi code see the constrained scores without being rewritten.
    """

    def __init__(self, allowed: torch.Tensor) -> None:
        super().__init__()
        # Not persistent: the mask follows from the tags, so state dicts hold only learned weights.
        self.register_buffer("penalty", (~allowed).float() * FORBIDDEN_SCORE, persistent=False)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return scores + self.penalty


def bio_inside_tags(tags: Sequence[str]) -> torch.Tensor:
    """For each tag, the `I-` tag of its entity type (-1 for "O"): what `bio_entities` needs to
    read entities from tag indices, and the tag that must not follow an entity."""
    index = {tag: i for i, tag in enumerate(tags)}
    return torch.tensor([index.get("I-" + tag[2:], -1) if tag != "O" else -1 for tag in tags])


def bio_entities(paths: numpy.ndarray, lengths: numpy.ndarray, inside: numpy.ndarray) -> numpy.ndarray:
    """The entities of BIO tag paths, read as seqeval and spaCy read them (an `I-X` that does
    not continue an `X` entity starts one), for all sequences at once.

    paths (numpy.ndarray): (n, T) tag indices; positions from `lengths` on are ignored.
    inside (numpy.ndarray): `bio_inside_tags`.
    RETURNS (numpy.ndarray): (m, 4) int64 rows of sequence, start, end (exclusive) and the tag
        at the start, sorted by sequence and start.
    """
    n, width = paths.shape
    real = numpy.arange(width)[None, :] < lengths[:, None]
    tags = numpy.where(real, paths, 0)
    kind = numpy.where(real, inside[tags], -1)  # the entity type, as its I- tag; -1: none
    before = numpy.concatenate([numpy.full((n, 1), -1), kind[:, :-1]], axis=1)
    # A position continues the entity before it if it holds that entity's I- tag.
    continues = (kind >= 0) & (tags == kind) & (before == kind)
    after = numpy.concatenate([continues[:, 1:], numpy.zeros((n, 1), dtype=bool)], axis=1)
    seq, first = numpy.nonzero((kind >= 0) & ~continues)
    _, last = numpy.nonzero((kind >= 0) & ~after)
    return numpy.stack([seq, first, last + 1, tags[seq, first]], axis=1).astype("int64")


class BIODecoder(nn.Module):
    """What the decoders share: one call that gives the best paths, their entities and (with
    `confidence`) each entity's log-probability. Subclasses give `_best_paths` and
    `_span_log_probs`."""

    def __init__(self, tags: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        inside = bio_inside_tags(tags) if tags is not None else torch.zeros(0, dtype=torch.long)
        # Not persistent: it follows from the tags, so state dicts hold only learned weights.
        self.register_buffer("inside_tag", inside, persistent=False)

    def annotate(
        self, emissions: torch.Tensor, mask: torch.Tensor, confidence: bool
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The best paths (padded with -1), their entities as (m, 4) rows of sequence, start,
        end and start tag, and the log-probability of each entity (empty without
        `confidence`), in float64. Paths and entities are on the CPU, where the pipe reads
        them; the log-probabilities too."""
        if not len(self.inside_tag):
            raise ValueError("This decoder was built without its tags: it cannot read entities")
        lengths = mask.long().sum(1)
        paths, tables = self._best_paths(emissions, mask, keep_tables=confidence)
        # The paths are on the host: read and mask them there. For one sentence, torch calls
        # between the decoder's numpy passes would cost as much as the passes.
        host_lengths = lengths.cpu().numpy()
        inside = self.inside_tag.cpu().numpy()
        found = bio_entities(paths, host_lengths, inside)
        paths[numpy.arange(paths.shape[1])[None, :] >= host_lengths[:, None]] = -1
        paths_t, entities = torch.from_numpy(paths), torch.from_numpy(found)
        if not confidence or not len(found):
            return paths_t, entities, torch.zeros(0, dtype=torch.float64)
        spans = numpy.stack([found[:, 0], found[:, 1], found[:, 2], inside[found[:, 3]]], 1)
        device = emissions.device
        log_probs = self._span_log_probs(
            tables, emissions, lengths, paths_t.to(device), torch.from_numpy(spans).to(device)
        )
        return paths_t, entities, log_probs.cpu()

    def _best_paths(
        self, emissions: torch.Tensor, mask: torch.Tensor, keep_tables: bool
    ) -> Tuple[numpy.ndarray, Any]:
        raise NotImplementedError

    def _span_log_probs(
        self,
        tables: Any,
        emissions: torch.Tensor,
        lengths: torch.Tensor,
        tags: torch.Tensor,
        spans: torch.Tensor,
    ) -> torch.Tensor:
        raise NotImplementedError


class BIOCRF(BIODecoder):
    """pytorch-crf's linear-chain CRF over BIO tags, optionally limited to valid transitions.

    Called with gold `tags` it returns their negative log-likelihood (the mean over sequences,
    or one value per sequence with `per_sequence`); with `tags` and `spans`, the log-probability
    of each span (see `span_log_probs`); with `entities`, what `annotate` returns; without
    `tags`, the Viterbi path padded with -1.
    """

    # Decode emissions on the CPU with the numpy passes of `crf_numpy` (same results, a
    # fraction of the per-call cost); False keeps the torch passes everywhere.
    numpy_on_cpu = True

    def __init__(self, tags: Sequence[str], *, constrained: bool = True) -> None:
        super().__init__(tags)
        self.crf = CRF(len(tags), batch_first=True)
        if constrained:
            start, trans, end = bio_allowed_transitions(tags)
            for name, allowed in (
                ("start_transitions", start),
                ("transitions", trans),
                ("end_transitions", end),
            ):
                parametrize.register_parametrization(self.crf, name, AddForbiddenScore(allowed))

    def __getstate__(self) -> Dict[str, Any]:
        # torch pickles a parametrized module only through its state dict, and spaCy pickles
        # pipelines (`n_process` outside fork, copies): the CRF travels as its size, its raw
        # score parameters and its constraints, and `__setstate__` rebuilds it. The tensors are
        # the module's own, not copies: multiprocessing shares a tensor through a file
        # descriptor that lives only as long as the tensor.
        state = self.__dict__.copy()
        crf = state["_modules"]["crf"]
        if parametrize.is_parametrized(crf):
            modules = dict(state["_modules"])
            del modules["crf"]
            state["_modules"] = modules
            state["_crf"] = {
                "num_tags": crf.num_tags,
                "batch_first": crf.batch_first,
                "parameters": {
                    name: chain.original for name, chain in crf.parametrizations.items()
                },
                "steps": {name: list(chain) for name, chain in crf.parametrizations.items()},
                "plain": {name: p for name, p in crf.named_parameters(recurse=False)},
            }
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        pickled = state.pop("_crf", None)
        super().__setstate__(state)
        if pickled is None:
            return
        crf = CRF(pickled["num_tags"], batch_first=pickled["batch_first"])
        for name, parameter in {**pickled["plain"], **pickled["parameters"]}.items():
            setattr(crf, name, parameter)
        for name, steps in pickled["steps"].items():
            for step in steps:
                parametrize.register_parametrization(crf, name, step)
        self.crf = crf

    def forward(
        self,
        emissions: torch.Tensor,
        mask: torch.Tensor,
        tags: Optional[torch.Tensor] = None,
        per_sequence: bool = False,
        spans: Optional[torch.Tensor] = None,
        entities: bool = False,
        confidence: bool = False,
    ) -> Any:
        if entities:
            return self.annotate(emissions, mask, confidence)
        if tags is not None and spans is not None:
            return self.span_log_probs(emissions, mask, tags, spans)
        if tags is not None:
            reduction = "none" if per_sequence else "mean"
            # pytorch-crf reads the transitions at every time step; cached, each constrained
            # parameter is computed once per call (and backpropagated once), not per read.
            with parametrize.cached():
                return -self.crf(emissions, tags, mask=mask, reduction=reduction)
        return self.viterbi(emissions, mask)

    def _host_scores(self) -> Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
        """The transition, start and end scores as host arrays, constraints applied: the same
        sums as the parametrizations' (score + penalty, in float32), without their module
        calls."""
        arrays = []
        for name in ("transitions", "start_transitions", "end_transitions"):
            chain = (
                self.crf.parametrizations[name]
                if parametrize.is_parametrized(self.crf, name)
                else None
            )
            if chain is None or not all(isinstance(step, AddForbiddenScore) for step in chain):
                arrays.append(getattr(self.crf, name).detach().numpy())
                continue
            value = chain.original.detach().numpy()
            for step in chain:
                value = value + step.penalty.numpy()
            arrays.append(value)
        return arrays[0], arrays[1], arrays[2]

    def viterbi(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The best tag sequences, padded with -1: pytorch-crf's `decode`, batched."""
        paths, _ = self._best_paths(emissions, mask, keep_tables=False)
        lengths = mask.long().sum(1).cpu().numpy()
        paths[numpy.arange(paths.shape[1])[None, :] >= lengths[:, None]] = -1
        return torch.from_numpy(paths).to(emissions.device)

    def span_log_probs(
        self, emissions: torch.Tensor, mask: torch.Tensor, tags: torch.Tensor, spans: torch.Tensor
    ) -> torch.Tensor:
        """Log-probability that each span is labelled exactly as in `tags`.

        spans (Tensor): (n, 4) rows of sequence index, start, end (exclusive), and the tag that
            must not follow the span (its type's `I-` tag, which would extend it).
        RETURNS (Tensor): (n,) log P(tags[start:end] and no such tag at `end`), in float64.
        """
        lengths = mask.long().sum(1)
        tables = _SumTables(*self._passes(emissions, lengths, maxes=False, sums=True)[1:])
        return self._span_log_probs(tables, emissions, lengths, tags, spans)

    def _best_paths(
        self, emissions: torch.Tensor, mask: torch.Tensor, keep_tables: bool
    ) -> Tuple[numpy.ndarray, Any]:
        lengths = mask.long().sum(1)
        if self.numpy_on_cpu and emissions.device.type == "cpu":
            return self._best_paths_numpy(emissions, lengths.numpy(), keep_tables)
        scores, *sums = self._passes(emissions, lengths, maxes=True, sums=keep_tables)
        rows = torch.arange(len(lengths), device=emissions.device)
        last = (scores[rows, lengths - 1] + self.crf.end_transitions).argmax(1)
        paths = _trace_back(
            scores.cpu().numpy(),
            emissions.detach().cpu().numpy(),
            self.crf.transitions.detach().cpu().numpy(),
            last.cpu().numpy(),
            lengths.cpu().numpy(),
        )
        return paths, (_SumTables(*sums) if keep_tables else None)

    def _best_paths_numpy(
        self, emissions: torch.Tensor, lengths: numpy.ndarray, keep_tables: bool
    ) -> Tuple[numpy.ndarray, Any]:
        """`_best_paths` with the passes in numpy (emissions on the CPU)."""
        e = emissions.detach().numpy()
        trans, start, end = self._host_scores()
        pointers = len(lengths) <= crf_numpy.POINTER_MAX_ROWS
        scores, sums, kept = crf_numpy.passes(
            e, lengths, start, trans, end, sums=keep_tables, pointers=pointers
        )
        last = (scores[numpy.arange(len(lengths)), lengths - 1] + end).argmax(1)
        if kept is not None:
            paths = crf_numpy.follow_pointers(kept, last, lengths)
        else:
            paths = _trace_back(scores, e, trans, last, lengths)
        return paths, (_SumTables(*sums) if keep_tables else None)

    def _passes(
        self, emissions: torch.Tensor, lengths: torch.Tensor, *, maxes: bool, sums: bool
    ) -> Tuple[Any, ...]:
        """The Viterbi pass (`maxes`) and the forward and backward passes (`sums`), in one loop
        over the time steps, for all sequences at once.

        Viterbi: the best score ending in each tag at each position, computed as pytorch-crf
        computes it (its maximum over the previous tag, with no back-pointers: `_trace_back`
        finds the few it needs). Forward and backward: in probability space,
        float64, rescaled at each step, as one batched matrix product per step for both
        directions. The backward pass runs on each sequence reversed, so that every sequence
        starts at step 0 and no step needs a mask: what a pass computes past a sequence's
        end is never read. RETURNS: Viterbi scores (n, T, K), then the `_SumTables` fields
        (None where not asked for).
        """
        crf = self.crf
        # Each read of a constrained parameter recomputes its penalty: read each once.
        trans, start, end = crf.transitions, crf.start_transitions, crf.end_transitions
        n, steps, _ = emissions.shape
        scores = None
        if maxes:
            score = start + emissions[:, 0]
            all_scores = [score]
        if sums:
            rows = torch.arange(n, device=emissions.device)
            e = emissions.double()
            # Emissions of each sequence read backwards (positions past its start repeat it).
            back = (lengths[:, None] - 1 - torch.arange(steps, device=e.device)).clamp(min=0)
            both = torch.stack([e, e[rows[:, None], back]])  # (2, n, T, K)
            e_max = both.amax(3, keepdim=True)
            p_emit = (both - e_max).exp()
            t64, s64, end64 = trans.double(), start.double(), end.double()
            t_max = t64.max()
            p_trans = (t64 - t_max).exp()
            ends = torch.stack([s64, end64])  # forward starts, backward starts
            ends_max = ends.amax(1, keepdim=True)
            state = (ends - ends_max).exp()[:, None, :] * p_emit[:, :, 0]
            norm = state.sum(2, keepdim=True)
            state = state / norm
            states, norms = [state], [norm]
            matrices = torch.stack([p_trans, p_trans.T])
        for t in range(1, steps):
            if maxes:
                # = max(score + trans + emission) to the last bit: rounding is monotonic.
                score = (score.unsqueeze(2) + trans).amax(1) + emissions[:, t]
                all_scores.append(score)
            if sums:
                state = torch.bmm(state, matrices) * p_emit[:, :, t]
                norm = state.sum(2, keepdim=True)
                state = state / norm
                states.append(state)
                norms.append(norm)
        if maxes:
            scores = torch.stack(all_scores, 1)
        if not sums:
            return scores, None, None, None, None, None, None
        # log of what each stored state was divided by, cumulated: the log scale of the states.
        log_scale = (torch.cat(norms, 2).log() + e_max.squeeze(3) + t_max).cumsum(2)
        log_scale = log_scale - t_max + ends_max[:, :, None]
        table = torch.stack(states, 2)  # (2, n, T, K)
        return scores, table, log_scale, p_trans, t_max, back, (s64, t64, end64)

    def _span_log_probs(
        self,
        tables: "_SumTables",
        emissions: torch.Tensor,
        lengths: torch.Tensor,
        tags: torch.Tensor,
        spans: torch.Tensor,
    ) -> torch.Tensor:
        """Each span's clamped partition function in closed form, from the tables: the forward
        mass into its first tag, its own path score, and the backward mass out of its last tag,
        over the partition function."""
        if isinstance(tables.table, numpy.ndarray):
            return torch.from_numpy(
                crf_numpy.span_log_probs(
                    tables,
                    emissions.detach().numpy(),
                    lengths.numpy(),
                    tags.numpy(),
                    spans.numpy(),
                )
            )
        start, trans, end = tables.scores
        e = emissions.double()
        n, steps, _ = e.shape
        rows = torch.arange(n, device=e.device)
        forward, backward = tables.table[0], tables.table[1]
        f_scale, b_scale = tables.log_scale[0], tables.log_scale[1]
        # alpha[t] = log(forward[t]) + f_scale[t]; the same for backward read backwards, which
        # holds emission + beta at each position (beta: the backward score after it).
        last = lengths - 1
        log_z = (forward[rows, last] @ (end - end.max()).exp()).log() + f_scale[rows, last] + end.max()
        path = tags.clamp(min=0)
        own = e.gather(2, path.unsqueeze(2)).squeeze(2)
        own[:, 1:] += trans[path[:, :-1], path[:, 1:]]
        cumulated = own.cumsum(1)

        seq, first, stop, barred = spans.unbind(1)
        span_last = stop - 1
        first_tag, last_tag = path[seq, first], path[seq, span_last]
        inner = e[seq, first, first_tag] + cumulated[seq, span_last] - cumulated[seq, first]
        before = (first - 1).clamp(min=0)
        into = (forward[seq, before] * tables.p_trans[:, first_tag].T).sum(1).log()
        into = into + f_scale[seq, before] + tables.t_max
        left = torch.where(first == 0, start[first_tag], into)
        # The backward table of position `stop`, read backwards: index last - stop.
        after = (lengths[seq] - 1 - stop).clamp(min=0)
        out_of = tables.p_trans[last_tag] * backward[seq, after]
        out_of = out_of.scatter(1, barred.unsqueeze(1), 0.0).sum(1).log()
        out_of = out_of + b_scale[seq, after] + tables.t_max
        right = torch.where(stop == lengths[seq], end[last_tag], out_of)
        return left + inner + right - log_z[seq]


class _SumTables:
    """The forward and backward tables of a CRF pass (see `BIOCRF._passes`)."""

    def __init__(self, table, log_scale, p_trans, t_max, back, scores) -> None:  # noqa: D107
        self.table, self.log_scale, self.p_trans, self.t_max = table, log_scale, p_trans, t_max
        self.back, self.scores = back, scores


def _trace_back(
    scores: numpy.ndarray,
    emissions: numpy.ndarray,
    trans: numpy.ndarray,
    last: numpy.ndarray,
    lengths: numpy.ndarray,
) -> numpy.ndarray:
    """Viterbi paths from the best scores (n, T, K), going back one position at a time for all
    sequences at once, on the host (the paths are read there).

    Each step recomputes the back-pointer of the one tag on each path, with pytorch-crf's own
    sums (score + transition, then + emission, in float32) and its tie-break (the first best
    previous tag), so the paths are pytorch-crf's. Keeping every back-pointer instead costs an
    argmax over all tag pairs at every step: less than this only for a batch of one or two
    sequences, where the numpy pass keeps them (`crf_numpy.POINTER_MAX_ROWS`).
    """
    n, steps, _ = scores.shape
    paths = numpy.zeros((n, steps), dtype="int64")
    rows = numpy.arange(n)
    tag = last.copy()
    for t in range(steps - 1, -1, -1):
        tag = numpy.where(lengths - 1 == t, last, tag)
        paths[:, t] = tag
        if t:
            into = scores[:, t - 1] + trans[:, tag].T + emissions[rows, t, tag][:, None]
            tag = into.argmax(1)
    return paths


class SoftmaxTagger(BIODecoder):
    """Independent per-token softmax over the emissions: the baseline a CRF has to beat.

    Same calls and results as `BIOCRF`: the negative log-likelihood of gold `tags` (summed over
    each sequence's tokens, then averaged over sequences, as the CRF's is), the log-probability
    of `spans`, what `annotate` returns (given its tags), or the best tag of each token (padded
    with -1). It has no weights and sees no neighbouring tags, so its paths can hold orphan
    `I-` tags, which the pipe reads as starts.
    """

    def forward(
        self,
        emissions: torch.Tensor,
        mask: torch.Tensor,
        tags: Optional[torch.Tensor] = None,
        per_sequence: bool = False,
        spans: Optional[torch.Tensor] = None,
        entities: bool = False,
        confidence: bool = False,
    ) -> Any:
        if entities:
            return self.annotate(emissions, mask, confidence)
        log_probs = emissions.log_softmax(-1)
        if tags is not None and spans is not None:
            return self.span_log_probs(log_probs.double(), mask, tags, spans)
        if tags is not None:
            own = log_probs.gather(2, tags.clamp(min=0).unsqueeze(2)).squeeze(2)
            nll = -(own * mask).sum(1)
            return nll if per_sequence else nll.mean()
        return torch.where(mask, log_probs.argmax(-1), torch.full_like(mask, -1, dtype=torch.long))

    def _best_paths(
        self, emissions: torch.Tensor, mask: torch.Tensor, keep_tables: bool
    ) -> Tuple[numpy.ndarray, Any]:
        log_probs = emissions.log_softmax(-1)
        return log_probs.argmax(-1).cpu().numpy(), log_probs.double() if keep_tables else None

    def _span_log_probs(
        self,
        tables: Any,
        emissions: torch.Tensor,
        lengths: torch.Tensor,
        tags: torch.Tensor,
        spans: torch.Tensor,
    ) -> torch.Tensor:
        mask = lengths_to_mask(lengths, emissions.shape[1])
        return self.span_log_probs(tables, mask, tags, spans)

    @staticmethod
    def span_log_probs(
        log_probs: torch.Tensor, mask: torch.Tensor, tags: torch.Tensor, spans: torch.Tensor
    ) -> torch.Tensor:
        """log P(tags[start:end]) + log P(no `barred` tag at `end`); rows as in `BIOCRF`."""
        own = log_probs.gather(2, tags.clamp(min=0).unsqueeze(2)).squeeze(2).cumsum(1)
        seq, first, stop, barred = spans.unbind(1)
        before = torch.where(
            first == 0, torch.zeros_like(own[seq, 0]), own[seq, (first - 1).clamp(min=0)]
        )
        inner = own[seq, stop - 1] - before
        lengths = mask.long().sum(1)
        after = stop.clamp(max=log_probs.shape[1] - 1)
        p_barred = log_probs[seq, after, barred].exp().clamp(max=1 - 1e-12)
        right = torch.where(stop == lengths[seq], torch.zeros_like(inner), torch.log1p(-p_barred))
        return inner + right


# At inference on the CPU, `BiLSTMEmitter` runs a batch padded while its padded steps are at most
# this many times its real ones. Padded, every step of the batch is computed, each for about
# 0.6-0.8 of what a packed step costs on one thread, so more padding than this loses.
PADDED_MAX_WASTE = 1.2


class BiLSTMEmitter(nn.Module):
    """BiLSTM over token vectors, then a linear layer to one emission score per tag.

    Sequences are packed, so a sequence's scores never depend on the padding of its batch.
    At inference on the CPU, a batch with little padding runs padded instead (see
    `_padded_lstm`), which gives the same scores faster, and a batch without padding or a
    padded one runs each direction with its weights kept in oneDNN's layout (`lstm_onednn`).
    With depth 0 the BiLSTM is left out and the linear layer reads the token vectors directly.
    """

    def __init__(
        self, n_in: int, n_tags: int, *, hidden_size: int, depth: int, dropout: float
    ) -> None:
        super().__init__()
        self.lstm: Optional[nn.LSTM] = None
        width = n_in
        # One-direction LSTMs that `_padded_lstm` calls with `self.lstm`'s weights, by input
        # width. Held in a plain dict and built on the meta device: they own no weights, are
        # not submodules, and so never reach the state dict or a device move.
        self._one_way: Dict[int, nn.LSTM] = {}
        if depth > 0:
            self.lstm = nn.LSTM(
                n_in,
                hidden_size,
                num_layers=depth,
                bidirectional=True,
                batch_first=True,
                dropout=dropout if depth > 1 else 0.0,
            )
            width = 2 * hidden_size
            for n in {n_in, width}:
                self._one_way[n] = nn.LSTM(n, hidden_size, batch_first=True, device="meta")
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(width, n_tags)

    def forward(self, X: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.lstm is not None:
            host_lengths = lengths.cpu()
            # Training always takes the packed path, so gradients and dropout are PyTorch's own.
            inference = not torch.is_grad_enabled() or not self.training
            route = self._inference_route(X, host_lengths) if inference else "packed"
            if route == "whole":
                X = lstm_onednn.bidirectional(self.lstm, X)
            elif route == "padded":
                X = self._padded_lstm(X, host_lengths)
            else:
                # cuDNN wants the weights in one block; after a device move they are not, and
                # each call would copy them (a no-op once they are).
                self.lstm.flatten_parameters()
                packed = pack_padded_sequence(
                    X, host_lengths, batch_first=True, enforce_sorted=False
                )
                output, _ = self.lstm(packed)
                X, _ = pad_packed_sequence(output, batch_first=True, total_length=X.shape[1])
        return self.linear(self.dropout(X))

    def _inference_route(self, X: torch.Tensor, lengths: torch.Tensor) -> str:
        """How to run the BiLSTM in inference: "whole" (no padding in the batch, so the LSTM
        reads X as it is), "padded" (`_padded_lstm`) or "packed"."""
        n, steps, _ = X.shape
        if X.device.type != "cpu":
            # cuDNN's packed LSTM is fast; the padded path is unmeasured there.
            return "packed"
        if bool((lengths == steps).all()):
            return "whole"
        # Sentences batched together differ a lot in length (DNRTI: 5-100 tokens, mean 24):
        # padded, such a batch computes ~3 times the real steps and is 2 times slower than packed.
        # Documents cut to similar lengths are 10-20% faster padded.
        if n * steps <= PADDED_MAX_WASTE * int(lengths.sum()):
            return "padded"
        return "packed"

    def _padded_lstm(self, X: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The BiLSTM's output on a padded batch, equal to the packed one (zeros past each end).

        An LSTM reads steps in order, so padding after a sequence's end cannot change its real
        steps. The forward direction reads X as it is; the reverse direction reads each sequence
        reversed within its own length (padding still at the end), through a one-direction LSTM
        with the reverse weights, and is turned back the same way. No inter-layer dropout: this
        runs only in inference.
        """
        assert self.lstm is not None
        n, steps, _ = X.shape
        hidden = self.lstm.hidden_size
        t = torch.arange(steps, device=X.device)
        lengths = lengths.to(X.device)
        # Reverses each sequence within its length and leaves the padding in place; its own
        # inverse, so one index turns the reverse direction's output back too.
        order = torch.where(t[None, :] < lengths[:, None], lengths[:, None] - 1 - t, t)[:, :, None]
        for layer in range(self.lstm.num_layers):
            forward = self._one_way_pass(layer, X, reverse_weights=False)
            reverse = self._one_way_pass(
                layer, X.gather(1, order.expand(-1, -1, X.shape[2])), reverse_weights=True
            )
            # Both halves written in place: half the memory traffic of a gather, cat and mask.
            X = forward.new_empty(n, steps, 2 * hidden)
            X[:, :, :hidden] = forward
            torch.gather(reverse, 1, order.expand(-1, -1, hidden), out=X[:, :, hidden:])
        # pad_packed_sequence gives zeros past each end: so does this (whatever the padding held).
        for i, length in enumerate(lengths.tolist()):
            if length < steps:
                X[i, length:] = 0.0
        return X

    def _one_way_pass(self, layer: int, X: torch.Tensor, *, reverse_weights: bool) -> torch.Tensor:
        """One layer's forward or reverse weights run forwards over X (batch first) from zero
        states: through `lstm_onednn` where it applies, else a one-direction `nn.LSTM`."""
        assert self.lstm is not None
        if lstm_onednn.applies(self.lstm, X):
            try:
                steps = X.transpose(0, 1).contiguous()
                return lstm_onednn.direction(
                    self.lstm, layer, steps, reverse_weights=reverse_weights, reverse=False
                ).transpose(0, 1)
            except lstm_onednn.OPERATOR_ERRORS as error:
                lstm_onednn.fail(self.lstm, error)
        suffix = "_reverse" if reverse_weights else ""
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        weights = {f"{name}_l0": getattr(self.lstm, f"{name}_l{layer}{suffix}") for name in names}
        output, _ = functional_call(self._one_way[X.shape[2]], weights, (X,))
        return output

    def train(self, mode: bool = True) -> "BiLSTMEmitter":
        # Training steps write the weights in ways torch may not see (`lstm_onednn`), and each
        # starts with a switch to training mode.
        if self.lstm is not None:
            lstm_onednn.forget(self.lstm)
        return super().train(mode)


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean (batch, max_len) mask of real positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
