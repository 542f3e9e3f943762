"""The transformer's settings side by side: words/s of one loaded pipeline per setting.

`max_batch_items` (the `transformer` pipe: padded spaCy tokens per sub-batch of docs) and
`max_batch_wordpieces` (`spacy-secner.TransformerModel.v1`: padded wordpieces per encoder call,
0 for one call per sub-batch) trade padding against call size, and the best pair depends on
the hardware. An optional third number sets `packed_row_wordpieces` (windows packed into rows
of that many wordpieces; 0 pads them in length-sorted groups instead), and optional last
parts choose how the encoder predicts: "frozen" (its TorchScript graph, `frozen_inference`),
"eager", or "transposed": the same graph passed through `torch.jit.optimize_for_inference`,
which stores each linear weight again, transposed; and how windows are packed: "fullrows"
fills each row up to its full length (best fit at `packed_row_wordpieces`) instead of evening
out the rows' lengths. "transposed" and "fullrows" are how the pipeline worked before, kept to
compare. What a setting leaves out stays as the pipeline has it. Every setting runs in the same
process on the same texts, with the repeats interleaved (setting A B C, then A B C, ...) so
that machine noise spreads evenly.
"""

import statistics
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from spacy_secner.layers import grouped_encoder, grouping_layer, packing
from spacy_secner.layers.frozen_encoder import FrozenGraph

from .texts import count_words

# (max_batch_items, max_batch_wordpieces, packed_row_wordpieces or None, encoder mode:
# "frozen", "eager", "transposed" or None, row plan: "even", "fullrows" or None); None keeps
# the pipeline's own (rows evened out).
Setting = Tuple[int, int, Optional[int], Optional[str], Optional[str]]
ENCODER_MODES = ("frozen", "eager", "transposed")
ROW_PLANS = ("even", "fullrows")


def parse_settings(value: str) -> List[Setting]:
    """"4096:512,4096:512:0:eager,4096:512:fullrows" -> [(4096, 512, None, None, None),
    (4096, 512, 0, "eager", None), (4096, 512, None, None, "fullrows")]:
    max_batch_items:max_batch_wordpieces[:packed_row_wordpieces][:frozen|eager|transposed]
    [:even|fullrows] items."""
    settings: List[Setting] = []
    for item in value.split(","):
        if not item.strip():
            continue
        parts = item.strip().split(":")
        plan = parts.pop() if len(parts) > 2 and parts[-1] in ROW_PLANS else None
        mode = parts.pop() if len(parts) > 2 and not parts[-1].lstrip("-").isdigit() else None
        try:
            numbers = [int(part) for part in parts]
            if len(numbers) not in (2, 3):
                raise ValueError
        except ValueError:
            raise ValueError(
                f"Bad setting {item!r}: want max_batch_items:max_batch_wordpieces, e.g. 4096:512, "
                "optionally :packed_row_wordpieces, then optionally :frozen, :eager or "
                ":transposed, then optionally :even or :fullrows"
            ) from None
        items, wordpieces, rows = numbers[0], numbers[1], (numbers[2:] or [None])[0]
        if items < 1 or wordpieces < 0 or (rows is not None and rows < 0):
            raise ValueError(
                f"Bad setting {item!r}: need max_batch_items >= 1, wordpieces >= 0, rows >= 0"
            )
        if mode is not None and mode not in ENCODER_MODES:
            raise ValueError(f"Bad setting {item!r}: the encoder mode is one of {ENCODER_MODES}")
        settings.append((items, wordpieces, rows, mode, plan))
    if not settings:
        raise ValueError("No settings given")
    return settings


def apply_setting(nlp: Any, setting: Setting) -> None:
    """Set the values on the loaded pipeline's `transformer` (read by it at each call)."""
    trf = nlp.get_pipe("transformer")
    encoder = grouping_layer(trf.model)
    if encoder is None:
        raise ValueError(
            "The pipeline's transformer is not spacy-secner.TransformerModel.v1: it has no "
            "max_batch_wordpieces setting"
        )
    items, wordpieces, rows, mode, plan = setting
    trf.cfg["max_batch_items"], encoder.attrs["max_batch_wordpieces"] = items, wordpieces
    if rows is not None:
        encoder.attrs["packed_row_wordpieces"] = rows
    if mode is not None:
        encoder.shims[0].frozen_inference = mode != "eager"
        _run_transposed(mode == "transposed")
    if plan is not None:
        grouped_encoder.plan_rows = _full_rows if plan == "fullrows" else packing.plan_rows


def _full_rows(lengths: Sequence[int], row_wordpieces: int) -> List[List[int]]:
    """Windows packed best fit into rows of their full length, the lengths not evened out."""
    return packing._best_fit(lengths, max([row_wordpieces, *lengths])) if len(lengths) else []


def _run_transposed(on: bool) -> None:
    """Make each frozen graph the pipeline calls run as a twin of itself built through
    `torch.jit.optimize_for_inference` (each linear weight stored again, transposed), from the
    same weights and inputs on its first call; or, `on` False, as itself."""
    if on and FrozenGraph.__call__ is not _transposed_call:
        _OWN_CALL["call"] = FrozenGraph.__call__
        FrozenGraph.__call__ = _transposed_call  # type: ignore[method-assign]
    elif not on and FrozenGraph.__call__ is _transposed_call:
        FrozenGraph.__call__ = _OWN_CALL["call"]  # type: ignore[method-assign]


def _transposed_call(graph: FrozenGraph, inputs: Dict[str, torch.Tensor]) -> Any:
    twin = _TWINS.get(graph)
    if twin is None:
        freeze = torch.jit.freeze
        torch.jit.freeze = lambda module: torch.jit.optimize_for_inference(freeze(module))
        try:
            # modules[0] is the encoder itself (the order of its `modules()`).
            twin = _TWINS[graph] = FrozenGraph(graph.modules[0], inputs, graph.key, graph.modules)
        finally:
            torch.jit.freeze = freeze
    return _OWN_CALL["call"](twin, inputs)


_OWN_CALL: Dict[str, Callable] = {}
_TWINS: "weakref.WeakKeyDictionary[FrozenGraph, FrozenGraph]" = weakref.WeakKeyDictionary()


def current_setting(nlp: Any) -> Setting:
    """The pipeline's (max_batch_items, max_batch_wordpieces, packed_row_wordpieces, encoder
    mode, row plan); 0 wordpieces, 0 rows and "eager" for v3's model."""
    trf = nlp.get_pipe("transformer")
    encoder = grouping_layer(trf.model)
    plan = "fullrows" if grouped_encoder.plan_rows is _full_rows else "even"
    if encoder is None:
        return trf.cfg["max_batch_items"], 0, 0, "eager", plan
    mode = "frozen" if getattr(encoder.shims[0], "frozen_inference", False) else "eager"
    rows = encoder.attrs.get("packed_row_wordpieces", 0)
    return trf.cfg["max_batch_items"], encoder.attrs["max_batch_wordpieces"], rows, mode, plan


def time_settings(
    nlp: Any,
    texts: Dict[str, Sequence[str]],
    settings: Sequence[Setting],
    *,
    batch_size: int,
    repeats: int,
    sync: Callable[[], None] = lambda: None,
) -> List[Dict[str, Any]]:
    """Median words/s of `nlp.pipe` per text set and setting, after one warm-up pass each.

    sync (Callable): Waits for the device (e.g. torch.cuda.synchronize) before a clock read.
    RETURNS (List[Dict]): One row per text set and setting, with "wps_median", "wps_best" and
        "vs_first" (median ratio to the first setting).
    """
    original = current_setting(nlp)

    def resolved(setting: Setting) -> Setting:
        # What a setting leaves out is the pipeline's own, not the setting timed before it.
        items, wordpieces, packed, mode, plan = setting
        packed = original[2] if packed is None else packed
        return items, wordpieces, packed, mode or original[3], plan or original[4]

    rows = []
    try:
        for name, chosen in texts.items():
            words = count_words(chosen)
            seconds: Dict[Setting, List[float]] = {s: [] for s in settings}
            for setting in settings:
                apply_setting(nlp, resolved(setting))
                list(nlp.pipe(chosen, batch_size=batch_size))
            for _ in range(repeats):
                for setting in settings:
                    apply_setting(nlp, resolved(setting))
                    sync()
                    start = time.perf_counter()
                    list(nlp.pipe(chosen, batch_size=batch_size))
                    sync()
                    seconds[setting].append(time.perf_counter() - start)
            first = words / statistics.median(seconds[settings[0]])
            for setting in settings:
                median = words / statistics.median(seconds[setting])
                rows.append(
                    {
                        "texts": name,
                        "max_batch_items": setting[0],
                        "max_batch_wordpieces": setting[1],
                        "packed_row_wordpieces": (
                            setting[2] if setting[2] is not None else original[2]
                        ),
                        "encoder": setting[3] or original[3],
                        "rows": setting[4] or original[4],
                        "wps_median": median,
                        "wps_best": words / min(seconds[setting]),
                        "vs_first": median / first,
                    }
                )
    finally:
        apply_setting(nlp, original)
    return rows


def render_settings(rows: Sequence[Dict[str, Any]]) -> str:
    lines = [
        "| texts | max_batch_items | max_batch_wordpieces | packed_row_wordpieces | encoder "
        "| rows | words/s (median) | best | vs first |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['texts']} | {r['max_batch_items']} | {r['max_batch_wordpieces']} | "
            f"{r['packed_row_wordpieces']} | {r['encoder']} | {r['rows']} | "
            f"{r['wps_median']:,.0f} | {r['wps_best']:,.0f} | {r['vs_first']:.2f} |"
        )
    return "\n".join(lines)
