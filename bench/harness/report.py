"""The benchmark report: the speed and memory targets, checked, and the report as Markdown."""

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .runner import LABELS, SHORT_LABELS

# The targets: ratios of words/s measured side by side (texts None: every text set), memory in
# MiB (1 GiB), seconds. The embedded MiniLM on the CPU must not fall behind HF token
# classification at batch 64, nor far behind it at batch 1; with the tiny random encoder (the
# `tiny` check), the pipeline's own overhead must stay close to the same model in plain PyTorch.
RATIO_TARGETS: Tuple[Tuple[str, Optional[str], int, float], ...] = (
    ("pipeline/hf", "sentences", 64, 1.3),
    ("pipeline/hf", "documents", 64, 1.1),
    ("pipeline/hf", None, 1, 0.8),
    ("pipeline/floor", None, 64, 0.85),
    ("pipeline/plain", None, 64, 0.8),
    ("pipeline/hf_spans", None, 64, 0.4),
)
TARGET_PEAK_RSS_MB = 1024.0
TARGET_LOAD_S = 3.0


def check_targets(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Each target with the measured value and whether it is met."""
    wanted = []  # (target, value, limit, higher is better)
    for row in report.get("throughput", []):
        where = f"{row['texts']}, batch {row['batch_size']}"
        for key, texts, batch_size, limit in RATIO_TARGETS:
            if texts not in (None, row["texts"]) or row["batch_size"] != batch_size:
                continue
            if key in row["ratios"]:
                target = f"pipeline / {SHORT_LABELS[key.split('/')[1]]} >= {limit} ({where})"
                wanted.append((target, row["ratios"][key], limit, True))
    pipeline = report.get("systems", {}).get("pipeline")
    if pipeline:
        target = f"peak RSS while annotating <= {TARGET_PEAK_RSS_MB:.0f} MiB"
        wanted.append((target, pipeline["peak_rss_annotating_mb"], TARGET_PEAK_RSS_MB, False))
    if report.get("spacy_load"):
        target = f"spacy.load < {TARGET_LOAD_S} s"
        wanted.append((target, report["spacy_load"]["median_load_s"], TARGET_LOAD_S, False))
    for other in report.get("spacy_load_other") or []:
        target = f"spacy.load < {TARGET_LOAD_S} s (`{other['python']}`)"
        wanted.append((target, other["median_load_s"], TARGET_LOAD_S, False))
    checks = []
    for target, value, limit, higher in wanted:
        met = None if value is None else (value >= limit if higher else value <= limit)
        checks.append({"target": target, "value": value, "met": met})
    return checks


MEMORY_COLUMNS = (
    "system",
    "load in its worker (s)",
    "RSS after load (MiB)",
    "peak RSS annotating (MiB)",
    "peak RSS overall (MiB)",
)


def render_markdown(report: Dict[str, Any]) -> str:
    """The report as Markdown for BENCHMARKS.md: command, machine, tables and notes."""
    settings, machine = report["settings"], report["machine"]
    versions = machine["versions"]
    out = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores "
        f"({machine['logical_cores']} logical), {machine['memory_gib']} GiB RAM; "
        + (f"GPU {machine['gpu']}; " if machine.get("gpu") else "")
        + f"{machine['threads']} torch/OpenMP threads in every process; torch {versions['torch']}, "
        f"transformers {versions['transformers']}, spaCy {versions['spacy']}, spacy-transformers "
        f"{versions['spacy-transformers']}; load average at start "
        + ", ".join(f"{x:.2f}" for x in machine["load_average"] or []),
        "",
        f"Pipeline `{settings['model']}`, encoder `{settings['encoder']}`. Texts: "
        + "; ".join(
            f"{name} ({v['texts']} texts, {v['words']:,} words)"
            for name, v in settings["texts"].items()
        )
        + ". Words/s count the whitespace words of the raw text for every system. Median of "
        f"{settings['repeats']} runs after one warm-up, best run in brackets; repeats interleaved "
        "across systems, each system in its own process"
        + _turns(settings),
        "",
    ]
    systems = list(report["systems"])
    head = ["texts", "batch", *(LABELS[s] for s in systems)]
    ratio_keys = [f"pipeline/{s}" for s in systems if s != "pipeline"]
    ratio_keys = ratio_keys if "pipeline" in systems else []
    head += [f"pipeline / {SHORT_LABELS[k.split('/')[1]]}" for k in ratio_keys]
    out += [_md_row(head), _md_row(["---", "---:"] + ["---:"] * (len(head) - 2))]
    for row in report["throughput"]:
        cells = [row["texts"], str(row["batch_size"])]
        for s in systems:
            v = row["systems"][s]
            cells.append(f"{v['wps_median']:,.0f} ({v['wps_best']:,.0f})")
        for k in ratio_keys:
            best = row["ratios"].get(k + "_best")
            cells.append(f"{row['ratios'][k]:.2f} ({best:.2f})")
        out.append(_md_row(cells))
    out += ["", _md_row(MEMORY_COLUMNS), _md_row(["---"] + ["---:"] * 4)]
    for v in report["systems"].values():
        annotating = v["peak_rss_annotating_mb"]
        cells = [v["label"], f"{v['load_s']:.2f}", f"{v['rss_after_load_mb']:.0f}"]
        cells += [f"{annotating:.0f}" if annotating else "-", f"{v['peak_rss_mb']:.0f}"]
        out.append(_md_row(cells))
    out.append("")
    gpu_peaks = {
        s: max(row["systems"][s].get("peak_gpu_mb") or 0 for row in report["throughput"])
        for s in systems
    }
    if any(gpu_peaks.values()):
        out.append(
            "- Peak GPU memory allocated by torch while annotating (largest over all runs): "
            + ", ".join(f"{LABELS[s]} {mb:,.0f} MiB" for s, mb in gpu_peaks.items())
            + "."
        )
    load = report.get("spacy_load")
    if load:
        out.append(
            f"- `spacy.load` in a fresh process: {load['median_load_s']:.2f} s (median of "
            f"{len(load['runs'])}; `import spacy` before it {load['median_import_s']:.2f} s, whole "
            f"process {load['median_process_s']:.2f} s)."
        )
    for other in report.get("spacy_load_other") or []:
        out.append(
            f"- `spacy.load` in a fresh process of `{other['python']}`: "
            f"{other['median_load_s']:.2f} s (median of {len(other['runs'])}; `import spacy` "
            f"{other['median_import_s']:.2f} s, whole process {other['median_process_s']:.2f} s)."
        )
    train = report.get("training")
    if train and train.get("words_per_second"):
        out.append(
            f"- Training: {train['words_per_second']:,.0f} words/s ({train['words']:,} words in "
            f"{train['seconds']} s over {train['steps']} steps, from `{train['path']}`; "
            "includes evaluation time; words are spaCy tokens; training uses the config's own "
            "thread setting)."
        )
    bench = report.get("spacy_benchmark")
    if bench:
        wps = bench["words_per_second"]
        result = f"{wps:,.0f} words/s (words: the pipeline's tokens)" if wps else "failed"
        out.append(f"- `{bench['command']}`: {result} (exit {bench['returncode']}).")
    pipe_cfg = report["systems"].get("pipeline", {}).get("pipe_cfg")
    if pipe_cfg:
        cfgs = "; ".join(f"{name} {json.dumps(cfg)}" for name, cfg in pipe_cfg.items())
        out.append(f"- Pipeline settings as loaded: {cfgs}.")
    for name in settings["texts"]:
        out.append(f"- Encoder work on {name}: " + _encoder_work(report, name, systems) + ".")
    if "documents" in settings["texts"]:
        out.append(
            "- Documents are consecutive test sentences joined into ~"
            f"{settings['texts']['documents']['sentences_per_doc']:.0f}-sentence texts. DNRTI's "
            "sentences are shuffled, so these documents are synthetic: used for length only."
        )
    targets = report.get("targets") or []
    if targets:
        out += ["", _md_row(["target", "measured", "met"]), _md_row(["---", "---:", "---"])]
        for t in targets:
            value = "-" if t["value"] is None else f"{t['value']:.2f}".rstrip("0").rstrip(".")
            met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
            out.append(_md_row([t["target"], value, met]))
    return "\n".join(out) + "\n"


def _encoder_work(report: Dict[str, Any], texts: str, systems: Sequence[str]) -> str:
    """Wordpieces each system encodes, and the padded size of the HF/encoder batches (a pipeline
    that groups texts by length pads less, and can beat the 'floor' at batch > 1)."""
    rows = [row for row in report["throughput"] if row["texts"] == texts]
    notes = []
    for s in systems:
        info = rows[0]["systems"][s]
        pieces, inputs = info.get("wordpieces", 0), info.get("encoder_inputs", 0)
        note = f"{s} {pieces:,} wordpieces in {inputs} inputs"
        if info.get("truncated_texts"):
            note += f", {info['truncated_texts']} texts cut at {report['settings']['max_length']}"
        if "padded_wordpieces" in info:
            padded = "/".join(f"{row['systems'][s]['padded_wordpieces']:,}" for row in rows)
            batches = "/".join(str(row["batch_size"]) for row in rows)
            note += f" (padded: {padded} at batch {batches})"
        notes.append(note)
    return "; ".join(notes)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _turns(settings: Dict[str, Any]) -> str:
    """How the systems took turns within a run, as the report's sentence ends."""
    if not settings.get("interleave"):
        return "."
    texts = settings.get("turn_texts") or 0
    if texts:
        return f"; within a run the systems take turns every {texts} texts or so (whole batches)."
    return "; within a run the systems take turns at every batch."
