"""Plain PyTorch modules behind `ner_crf`: a packed BiLSTM emitter and a BIO-constrained CRF.

Nothing here imports spaCy or thinc; `architectures.py` wraps these modules for thinc.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torchcrf import CRF

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


class BIOCRF(nn.Module):
    """pytorch-crf's linear-chain CRF over BIO tags, optionally limited to valid transitions.

    Called with gold `tags` it returns their negative log-likelihood (the mean over sequences,
    or one value per sequence with `per_sequence`); with `tags` and `spans`, the log-probability
    of each span (see `span_log_probs`); without `tags`, the Viterbi path padded with -1.
    """

    def __init__(self, tags: Sequence[str], *, constrained: bool = True) -> None:
        super().__init__()
        self.crf = CRF(len(tags), batch_first=True)
        if constrained:
            start, trans, end = bio_allowed_transitions(tags)
            for name, allowed in (
                ("start_transitions", start),
                ("transitions", trans),
                ("end_transitions", end),
            ):
                parametrize.register_parametrization(self.crf, name, AddForbiddenScore(allowed))

    def forward(
        self,
        emissions: torch.Tensor,
        mask: torch.Tensor,
        tags: Optional[torch.Tensor] = None,
        per_sequence: bool = False,
        spans: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if tags is not None and spans is not None:
            return self.span_log_probs(emissions, mask, tags, spans)
        if tags is not None:
            reduction = "none" if per_sequence else "mean"
            return -self.crf(emissions, tags, mask=mask, reduction=reduction)
        return self.viterbi(emissions, mask)

    def viterbi(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The best tag sequences, padded with -1: pytorch-crf's `decode`, batched.

        pytorch-crf traces each sequence back in Python, one `.item()` per token; on a GPU
        every one of them waits for the device. Here the trace-back is one tensor operation per
        time step for the whole batch, and the result stays a tensor.
        """
        crf = self.crf
        trans = crf.transitions  # read once: each read recomputes the constraint penalty
        n_seq, n_steps, _ = emissions.shape
        score = crf.start_transitions + emissions[:, 0]
        history = []
        for t in range(1, n_steps):
            step, best_prev = (score.unsqueeze(2) + trans + emissions[:, t].unsqueeze(1)).max(1)
            score = torch.where(mask[:, t, None], step, score)
            history.append(best_prev)
        lengths = mask.long().sum(1)
        tag = (score + crf.end_transitions).argmax(1)
        paths = torch.full((n_seq, n_steps), -1, dtype=torch.long, device=emissions.device)
        rows = torch.arange(n_seq, device=emissions.device)
        for t in range(n_steps - 1, -1, -1):
            inside = t < lengths
            paths[:, t] = torch.where(inside, tag, paths[:, t])
            if t:
                tag = torch.where(inside, history[t - 1][rows, tag], tag)
        return paths

    def span_log_probs(
        self, emissions: torch.Tensor, mask: torch.Tensor, tags: torch.Tensor, spans: torch.Tensor
    ) -> torch.Tensor:
        """Log-probability that each span is labelled exactly as in `tags`.

        spans (Tensor): (n, 4) rows of sequence index, start, end (exclusive), and the tag that
            must not follow the span (its type's `I-` tag, which would extend it).
        RETURNS (Tensor): (n,) log P(tags[start:end] and no such tag at `end`), in float64.

        pytorch-crf computes the partition function but keeps no forward or backward table, so
        both are computed here once per batch; each span's clamped partition function then
        follows in closed form: the forward score into its first tag, its own path score, and
        the backward score out of its last tag.
        """
        crf = self.crf
        e = emissions.double()
        start, trans, end = (
            crf.start_transitions.double(),
            crf.transitions.double(),
            crf.end_transitions.double(),
        )
        n_seq, n_steps, _ = e.shape
        lengths = mask.long().sum(1)
        alphas = [start + e[:, 0]]
        for t in range(1, n_steps):
            step = torch.logsumexp(alphas[-1].unsqueeze(2) + trans, dim=1) + e[:, t]
            alphas.append(torch.where(mask[:, t, None], step, alphas[-1]))
        alpha = torch.stack(alphas, 1)
        betas = [end.expand(n_seq, -1)]
        for t in range(n_steps - 2, -1, -1):
            step = torch.logsumexp(trans + (e[:, t + 1] + betas[0]).unsqueeze(1), dim=2)
            is_last = (lengths - 1 == t)[:, None]
            betas.insert(0, torch.where(is_last, end.expand(n_seq, -1), step))
        beta = torch.stack(betas, 1)
        rows = torch.arange(n_seq, device=e.device)
        log_z = torch.logsumexp(alpha[rows, lengths - 1] + end, dim=1)
        # Score of each sequence's own path, cumulated over positions.
        path = tags.clamp(min=0)
        own = e.gather(2, path.unsqueeze(2)).squeeze(2)
        own[:, 1:] += trans[path[:, :-1], path[:, 1:]]
        cumulated = own.cumsum(1)

        seq, first, stop, barred = spans.unbind(1)
        last = stop - 1
        first_tag, last_tag = path[seq, first], path[seq, last]
        inner = e[seq, first, first_tag] + cumulated[seq, last] - cumulated[seq, first]
        into = torch.logsumexp(alpha[seq, (first - 1).clamp(min=0)] + trans[:, first_tag].T, dim=1)
        left = torch.where(first == 0, start[first_tag], into)
        after = stop.clamp(max=n_steps - 1)
        out_of = trans[last_tag] + e[seq, after] + beta[seq, after]
        out_of = out_of.scatter(1, barred.unsqueeze(1), float("-inf"))
        right = torch.where(stop == lengths[seq], end[last_tag], torch.logsumexp(out_of, dim=1))
        return left + inner + right - log_z[seq]


class SoftmaxTagger(nn.Module):
    """Independent per-token softmax over the emissions: the baseline a CRF has to beat.

    Same calls and results as `BIOCRF`: the negative log-likelihood of gold `tags` (summed over
    each sequence's tokens, then averaged over sequences, as the CRF's is), the log-probability
    of `spans`, or the best tag of each token (padded with -1). It has no weights and sees no
    neighbouring tags, so its paths can hold orphan `I-` tags, which the pipe reads as starts.
    """

    def forward(
        self,
        emissions: torch.Tensor,
        mask: torch.Tensor,
        tags: Optional[torch.Tensor] = None,
        per_sequence: bool = False,
        spans: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        log_probs = emissions.log_softmax(-1)
        if tags is not None and spans is not None:
            return self.span_log_probs(log_probs.double(), mask, tags, spans)
        if tags is not None:
            own = log_probs.gather(2, tags.clamp(min=0).unsqueeze(2)).squeeze(2)
            nll = -(own * mask).sum(1)
            return nll if per_sequence else nll.mean()
        return torch.where(mask, log_probs.argmax(-1), torch.full_like(mask, -1, dtype=torch.long))

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


class BiLSTMEmitter(nn.Module):
    """BiLSTM over token vectors, then a linear layer to one emission score per tag.

    Sequences are packed, so a sequence's scores never depend on the padding of its batch.
    With depth 0 the BiLSTM is left out and the linear layer reads the token vectors directly.
    """

    def __init__(
        self, n_in: int, n_tags: int, *, hidden_size: int, depth: int, dropout: float
    ) -> None:
        super().__init__()
        self.lstm: Optional[nn.LSTM] = None
        width = n_in
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
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(width, n_tags)

    def forward(self, X: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.lstm is not None:
            # cuDNN wants the weights in one block; after a device move they are not, and each
            # call would copy them (a no-op once they are).
            self.lstm.flatten_parameters()
            packed = pack_padded_sequence(
                X, lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            output, _ = self.lstm(packed)
            X, _ = pad_packed_sequence(output, batch_first=True, total_length=X.shape[1])
        return self.linear(self.dropout(X))


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean (batch, max_len) mask of real positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
