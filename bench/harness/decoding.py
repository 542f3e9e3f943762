"""The CRF decoder's passes in numpy and in torch, side by side on the CPU, in one process.

`BIOCRF` decodes CPU emissions with numpy passes (`spacy_secner.crf_numpy`) and GPU ones with
torch passes. Here both run on the same docs, prepared once by the pipes before `ner_crf`, with
the two settings taking turns at every repeat; each setting times `ner_crf` alone (BiLSTM,
decoder, `set_annotations`), and the same entities and confidences are checked on the way.
"""

import statistics
import time
from typing import Any, Dict, List, Sequence

from spacy_secner.pytorch_bilstm_crf import BIOCRF

from .texts import count_words

SETTINGS = {"numpy": True, "torch": False}


def time_decoding(
    nlp: Any, texts: Dict[str, Sequence[str]], *, batch_sizes: Sequence[int], repeats: int
) -> List[Dict[str, Any]]:
    """Per text set and batch size: median seconds of `ner_crf` with each setting, the median
    seconds of the pipes before it, the words/s of the whole pipeline with each setting, and
    whether both settings found the same entities (and how far their confidences differ)."""
    names = nlp.pipe_names
    if "ner_crf" not in names:
        raise ValueError(f"The pipeline has no ner_crf pipe: {names}")
    before = names[: names.index("ner_crf")]
    ner = nlp.get_pipe("ner_crf")
    rows = []
    original = BIOCRF.numpy_on_cpu
    try:
        for name, chosen in texts.items():
            words = count_words(chosen)
            for batch_size in batch_sizes:
                upstream: List[float] = []
                seconds: Dict[str, List[float]] = {s: [] for s in SETTINGS}
                found: Dict[str, List[Any]] = {}
                for _ in range(repeats + 1):  # the first pass warms up
                    start = time.perf_counter()
                    with nlp.select_pipes(enable=before):
                        docs = list(nlp.pipe(chosen, batch_size=batch_size))
                    upstream.append(time.perf_counter() - start)
                    for setting, numpy_on_cpu in SETTINGS.items():
                        BIOCRF.numpy_on_cpu = numpy_on_cpu
                        start = time.perf_counter()
                        docs = list(ner.pipe(docs, batch_size=batch_size))
                        seconds[setting].append(time.perf_counter() - start)
                        found[setting] = [
                            (e.start, e.end, e.label_, e._.confidence) for d in docs for e in d.ents
                        ]
                up = statistics.median(upstream[1:])
                row: Dict[str, Any] = {"texts": name, "batch_size": batch_size, "upstream_s": up}
                for setting in SETTINGS:
                    ner_s = statistics.median(seconds[setting][1:])
                    row[f"{setting}_ner_s"] = ner_s
                    row[f"{setting}_wps"] = words / (up + ner_s)
                row["ner_speedup"] = row["torch_ner_s"] / row["numpy_ner_s"]
                ours, theirs = found["numpy"], found["torch"]
                row["entities"] = len(ours)
                row["same_entities"] = [e[:3] for e in ours] == [e[:3] for e in theirs]
                row["max_confidence_diff"] = max(
                    (abs((a[3] or 0.0) - (b[3] or 0.0)) for a, b in zip(ours, theirs)), default=0.0
                )
                rows.append(row)
    finally:
        BIOCRF.numpy_on_cpu = original
    return rows


def render_decoding(rows: Sequence[Dict[str, Any]]) -> str:
    lines = [
        "| texts | batch | pipes before ner_crf, s | ner_crf, torch passes, s | ner_crf, numpy "
        "passes, s | ner_crf speed-up | pipeline words/s, torch / numpy | same entities |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['texts']} | {r['batch_size']} | {r['upstream_s']:.2f} | {r['torch_ner_s']:.2f} "
            f"| {r['numpy_ner_s']:.2f} | {r['ner_speedup']:.2f}x | {r['torch_wps']:,.0f} / "
            f"{r['numpy_wps']:,.0f} | {'yes' if r['same_entities'] else '**no**'} "
            f"({r['entities']:,}; confidences within {r['max_confidence_diff']:.0e}) |"
        )
    return "\n".join(lines)
