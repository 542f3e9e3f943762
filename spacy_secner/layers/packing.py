"""Windows packed several to a row for the encoder: no padding between them, and each window
attending only to itself.

Sentence windows padded to a common length make the encoder read padding, even in
length-sorted groups when a batch holds few windows (one document's sentences). Packed into
short rows (longest first, each into the fullest row it fits; the rows' lengths then evened
out, as a call pads every row to the fullest), the windows keep their own
positions (0, 1, ...) and a (row, length, length) attention mask keeps each within itself, so
the encoder gives each window what it gives it alone, up to float32 rounding, and reads padding
only at the end of each row. Rows stay short because attention over a row costs its length
squared (BENCHMARKS.md, "Packed windows").

The rows reach the encoder as `input_ids`, `attention_mask` (1 on a window's wordpieces, 0 on
padding), `position_ids` and `window_ids` (a window's place in its row, -1 on padding);
`packed_inputs` turns the last two into the mask the encoder takes. An encoder that ignored
`position_ids` or a 3-dimensional mask would give other outputs: `packing_holds` checks each
encoder once against its unpacked outputs before it is packed.
"""
import bisect
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy
import torch
from thinc.api import to_numpy

from ..batching import padded_batches

# The largest difference allowed between packed and unpacked outputs in the check (float32
# rounding gives about 1e-5 on hidden states of size ~1-10).
CHECK_ATOL = 1e-3


@dataclass
class PackedCall:
    """One encoder call on packed rows: its inputs, and where each wordpiece came from.

    `source[k]` is the flat position (window x width of the unpacked batch) of the wordpiece
    at flat position `target[k]` of the packed rows (row x width of this call).
    """

    inputs: Dict[str, numpy.ndarray]
    source: numpy.ndarray
    target: numpy.ndarray


def plan_rows(lengths: Sequence[int], row_wordpieces: int) -> List[List[int]]:
    """Indices into `lengths` packed into rows of at most `row_wordpieces` (or the longest
    length, if more): longest first, each into the row with the least room that still fits
    it (best fit decreasing), in as many rows as that takes at full length but with their
    length evened out. Every index appears exactly once."""
    if not len(lengths):
        return []
    capacity = max([row_wordpieces, *lengths])
    rows = _best_fit(lengths, capacity)
    if len(rows) == 1:
        return rows  # nothing to even out
    # Calls pad every row to the fullest: one document's sentences in rows of 128 leave the
    # last row part empty. The least capacity that packs into as many rows spreads them evenly
    # (BENCHMARKS.md, "Packed windows"); a binary search finds it, keeping the full-length plan
    # where a shorter one would need more rows.
    low, high = max(max(lengths), -(-sum(lengths) // len(rows))), capacity
    while low < high:
        middle = (low + high) // 2
        trial = _best_fit(lengths, middle)
        if len(trial) <= len(rows):
            rows, high = trial, middle
        else:
            low = middle + 1
    return rows


def _best_fit(lengths: Sequence[int], capacity: int) -> List[List[int]]:
    """Best fit decreasing of `lengths` into rows of `capacity` (at least the longest)."""
    rows: List[List[int]] = []
    room: List[Tuple[int, int]] = []  # (free wordpieces, row), sorted
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        k = bisect.bisect_left(room, (lengths[i], -1))
        free, row = room.pop(k) if k < len(room) else (capacity, len(rows))
        if row == len(rows):
            rows.append([])
        rows[row].append(i)
        bisect.insort(room, (free - lengths[i], row))
    return rows


def pack_calls(
    inputs: Dict[str, Any], lengths: Sequence[int], rows: Sequence[Sequence[int]], max_padded: int
) -> List[PackedCall]:
    """The packed encoder calls for a batch of windows: `inputs` (input_ids, attention_mask,
    optionally token_type_ids: (windows, width) arrays, padded on the right), their real
    `lengths` and `rows` (`plan_rows`), the rows grouped by length into calls of at most
    `max_padded` padded wordpieces (0: one call)."""
    host = {name: to_numpy(value) for name, value in inputs.items()}
    width_in = host["input_ids"].shape[1]
    lengths_np = numpy.asarray(lengths, dtype=numpy.int64)
    fills = [int(lengths_np[list(row)].sum()) for row in rows]
    groups = padded_batches(fills, max_padded) if max_padded > 0 else [list(range(len(rows)))]
    calls = []
    for group in groups:
        width = max(fills[r] for r in group)
        windows = numpy.asarray([i for r in group for i in rows[r]], dtype=numpy.int64)
        per_row = [len(rows[r]) for r in group]
        row_of = numpy.repeat(numpy.arange(len(group)), per_row)
        slot = numpy.concatenate([numpy.arange(n) for n in per_row])
        lens = lengths_np[windows]
        starts = numpy.cumsum(lens) - lens
        row_starts = starts[numpy.cumsum(per_row) - per_row]
        offsets = starts - row_starts[row_of]
        within = numpy.arange(int(lens.sum())) - numpy.repeat(starts, lens)
        source = numpy.repeat(windows * width_in, lens) + within
        target = numpy.repeat(row_of * width + offsets, lens) + within
        packed: Dict[str, numpy.ndarray] = {}
        for name, value in host.items():
            rows_value = numpy.zeros((len(group), width), dtype=value.dtype)
            rows_value.flat[target] = value.reshape(-1)[source]
            packed[name] = rows_value
        packed["position_ids"] = numpy.zeros((len(group), width), dtype=numpy.int64)
        packed["position_ids"].flat[target] = within
        packed["window_ids"] = numpy.full((len(group), width), -1, dtype=numpy.int64)
        packed["window_ids"].flat[target] = numpy.repeat(slot, lens)
        calls.append(PackedCall(packed, source, target))
    return calls


def packed_inputs(inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The encoder's keyword inputs for packed rows: `window_ids` and the 2-dimensional
    `attention_mask` become one (row, length, length) mask, 1 where the query's and the key's
    window are the same and the key is no padding."""
    kwargs = dict(inputs)
    window_ids = kwargs.pop("window_ids")
    mask = kwargs["attention_mask"]
    same = window_ids[:, :, None] == window_ids[:, None, :]
    kwargs["attention_mask"] = (same & (mask[:, None, :] > 0)).to(mask.dtype)
    return kwargs


def encoder_kwargs(inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The encoder's keyword inputs: packed rows' `window_ids` turned into their mask
    (`packed_inputs`), any other inputs as they are."""
    return packed_inputs(inputs) if "window_ids" in inputs else inputs


def unpack(packed: torch.Tensor, call: PackedCall, out: torch.Tensor) -> None:
    """Write a per-wordpiece output of the packed rows (rows, width, ...) into `out`, the
    unpacked batch's (windows x width, ...) rows."""
    flat = packed.reshape(-1, *packed.shape[2:])
    source = torch.as_tensor(call.source, device=packed.device)
    target = torch.as_tensor(call.target, device=packed.device)
    out[source] = flat[target]


def packing_holds(encoder: torch.nn.Module, inputs: Dict[str, Any], lengths: Sequence[int]) -> bool:
    """Whether the encoder gives packed windows their unpacked outputs, checked once per
    encoder (eagerly, in float32) on 2-3 windows of `inputs` packed into one row. An encoder
    that fails is never packed, with one warning."""
    known = _CHECKED.get(encoder)
    if known is not None:
        return known
    # At least two windows share the row (a lone window twice), or nothing would be checked.
    chosen = list(range(min(3, len(lengths)))) if len(lengths) > 1 else [0, 0]
    sample_lengths = [lengths[i] for i in chosen]
    width = max(sample_lengths)
    sample = {name: to_numpy(value)[chosen, :width] for name, value in inputs.items()}
    (call,) = pack_calls(sample, sample_lengths, [list(range(len(chosen)))], 0)
    device = next(encoder.parameters()).device
    training = encoder.training
    encoder.eval()  # no dropout in the comparison
    try:
        with torch.no_grad():
            plain = encoder(**_as_torch(sample, device))
            hidden = encoder(**packed_inputs(_as_torch(call.inputs, device)))[0]
        expected = plain[0].reshape(-1, plain[0].shape[-1])
        got = torch.zeros_like(expected)
        unpack(hidden, call, got)
        real = torch.as_tensor(call.source, device=device)
        diff = float((got[real] - expected[real]).abs().max())
        holds = diff <= CHECK_ATOL
        reason = f"its outputs differ from the unpacked ones by {diff:.3g}"
    except Exception as error:  # noqa: BLE001  (any failure means: do not pack)
        holds, reason = False, f"{type(error).__name__}: {error}"
    finally:
        encoder.train(training)
    if not holds:
        warnings.warn(
            f"The encoder ({type(encoder).__name__}) reads its windows padded, not packed: "
            f"{reason}."
        )
    _CHECKED[encoder] = holds
    return holds


def _as_torch(arrays: Dict[str, Any], device: torch.device) -> Dict[str, torch.Tensor]:
    return {name: torch.as_tensor(value, device=device) for name, value in arrays.items()}


_CHECKED: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()
