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
    or one value per sequence with `per_sequence`); called without, the Viterbi path padded
    with -1.
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
    ) -> torch.Tensor:
        if tags is not None:
            reduction = "none" if per_sequence else "mean"
            return -self.crf(emissions, tags, mask=mask, reduction=reduction)
        paths = self.crf.decode(emissions, mask=mask)
        out = torch.full(mask.shape, -1, dtype=torch.long, device=emissions.device)
        for i, path in enumerate(paths):
            out[i, : len(path)] = torch.tensor(path, dtype=torch.long, device=emissions.device)
        return out


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
            packed = pack_padded_sequence(
                X, lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            output, _ = self.lstm(packed)
            X, _ = pad_packed_sequence(output, batch_first=True, total_length=X.shape[1])
        return self.linear(self.dropout(X))


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean (batch, max_len) mask of real positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
