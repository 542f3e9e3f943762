"""Inference speed and memory of a spaCy pipeline beside the same encoder used directly.

Three systems annotate the same texts, in the same batches, with the same thread count:

- `pipeline`: `spacy.load(model)`, then `list(nlp.pipe(texts, batch_size=B))`.
- `hf`: what a user might pick instead: a fast tokenizer and `AutoModelForTokenClassification`
  on the same encoder (random head: only its speed counts), tokenization included, an argmax
  per wordpiece, truncated to `max_length` wordpieces.
- `floor`: the bare encoder (`AutoModel`) forward pass on batches tokenized beforehand: what
  no pipeline built on that encoder can beat.

Each system lives in its own interpreter, so its peak memory is its own and it imports only
what its user would. `run_benchmark` drives the workers over JSON lines and interleaves the
repeats (A B C, B C A, C A B, ...) to spread machine noise over all systems. The workers run
`workers.py` as a file (`python workers.py --worker SPEC SYSTEM`), started by path, not as
a module of a package, so that the Hugging Face workers never import spaCy.

Modules: `texts` (benchmark texts), `workers` (the per-system worker processes), `runner`
(driving the workers, `spacy.load` timing), `side_figures` (training speed, `spacy benchmark speed`,
machine), `report` (targets and Markdown), `profiling` (the pyinstrument profile) and
`grouping` (the transformer's batching settings side by side, in one process), `decoding` (the
CRF decoder's numpy and torch passes side by side, in one process).
"""

from .side_figures import (
    machine_info,
    parse_spacy_benchmark,
    run_spacy_benchmark,
    spacy_benchmark_command,
    training_speed,
)
from .grouping import parse_settings, render_settings, time_settings
from .decoding import render_decoding, time_decoding
from .primitive_cache import measure_capacity, render_capacities
from .profiling import PROFILE_PARTS, profile_pipeline
from .report import (
    MEMORY_COLUMNS,
    RATIO_TARGETS,
    TARGET_LOAD_S,
    TARGET_PEAK_RSS_MB,
    check_targets,
    render_markdown,
)
from .runner import (
    LABELS,
    SHORT_LABELS,
    SYSTEMS,
    TINY_SYSTEMS,
    THREAD_VARS,
    measure_load,
    ratios,
    rotate,
    run_benchmark,
    summarize,
    thread_env,
    turns,
)
from .tiny import TINY_ENCODER_SHAPE
from .texts import count_words, make_documents, read_test_sentences
from .workers import batches, peak_rss_mb, reset_peak_rss, rss_mb

__all__ = [
    "LABELS",
    "SHORT_LABELS",
    "TINY_ENCODER_SHAPE",
    "TINY_SYSTEMS",
    "MEMORY_COLUMNS",
    "PROFILE_PARTS",
    "SYSTEMS",
    "RATIO_TARGETS",
    "TARGET_LOAD_S",
    "TARGET_PEAK_RSS_MB",
    "THREAD_VARS",
    "batches",
    "check_targets",
    "count_words",
    "machine_info",
    "make_documents",
    "measure_capacity",
    "measure_load",
    "parse_settings",
    "parse_spacy_benchmark",
    "peak_rss_mb",
    "profile_pipeline",
    "render_capacities",
    "ratios",
    "read_test_sentences",
    "render_decoding",
    "render_markdown",
    "render_settings",
    "reset_peak_rss",
    "rotate",
    "rss_mb",
    "run_benchmark",
    "run_spacy_benchmark",
    "spacy_benchmark_command",
    "summarize",
    "thread_env",
    "turns",
    "time_decoding",
    "time_settings",
    "training_speed",
]
