"""Where the pipeline's time goes: one `nlp.pipe` pass under pyinstrument, split into parts."""

import os
import re
from typing import Any, Dict, Sequence


# Where the pipeline's time goes: (part, function names, class name, file path pattern); a frame
# is in a part if it matches every criterion given. A frame's own time counts for the last part
# that matches it or, failing that, its innermost matching caller; the rest is "other".
_TRF_ALIGN = {
    "huggingface_tokenize",
    "get_alignment",
    "get_alignment_via_offset_mapping",
    "truncate_oversize_splits",
}
PROFILE_PARTS = (
    ("spaCy tokenizer", {"make_doc"}, None, None),
    ("transformer: spans, batching, doc._.trf_data", None, None, r"spacy_transformers/"),
    ("transformer: HF tokenizer and alignment", _TRF_ALIGN | {"offset_alignment"}, None, None),
    ("transformer: HF tokenizer and alignment", None, None, r"transformers/tokenization_utils"),
    ("transformer: encoder forward", None, None, r"transformers/models/"),
    # On the CPU the encoder runs as a frozen TorchScript graph, outside transformers' files.
    ("transformer: encoder forward", {"frozen_forward"}, None, None),
    ("ner_crf: other (predict, padding)", None, "CRFEntityRecognizer", None),
    ("ner_crf: listener and pooling", None, None, r"layers/(listener|trfs2arrays|reduce_)"),
    ("ner_crf: listener and pooling", {"_reduce_first_forward"}, None, None),
    ("ner_crf: BiLSTM and linear", None, "BiLSTMEmitter", None),
    ("ner_crf: CRF decoding, other", {"decode_entities"}, None, None),
    # One loop computes the Viterbi scores and, with confidences, the forward-backward tables.
    ("ner_crf: CRF Viterbi and forward-backward", {"_best_paths", "_best_paths_numpy"}, None, None),
    # On the CPU the decoder calls crf_numpy's `span_log_probs` itself.
    ("ner_crf: CRF span confidence", {"_span_log_probs", "span_log_probs"}, None, None),
    ("ner_crf: set_annotations", {"set_annotations"}, "CRFEntityRecognizer", None),
)


def profile_pipeline(
    nlp: Any, texts: Sequence[str], *, batch_size: int, interval: float = 0.001
) -> Dict[str, Any]:
    """Profile one `nlp.pipe` pass (after a warm-up batch) with pyinstrument.

    RETURNS (Dict[str, Any]): "seconds" (the profiled pass), "parts" (seconds per part of the
        pipeline, see PROFILE_PARTS) and "text" (pyinstrument's call tree).
    """
    from pyinstrument import Profiler

    list(nlp.pipe(texts[:batch_size], batch_size=batch_size))
    profiler = Profiler(interval=interval)
    profiler.start()
    list(nlp.pipe(texts, batch_size=batch_size))
    profiler.stop()
    session = profiler.last_session
    parts: Dict[str, float] = {}
    _attribute(session.root_frame(), "other", parts)
    return {
        "seconds": session.duration,
        "parts": dict(sorted(parts.items(), key=lambda kv: -kv[1])),
        "text": profiler.output_text(unicode=False, color=False),
    }


def _matches(frame: Any, functions: Any, class_name: Any, pattern: Any) -> bool:
    path = (frame.file_path or "").replace(os.sep, "/")
    return (
        (functions is None or frame.function in functions)
        and (class_name is None or frame.class_name == class_name)
        and (pattern is None or re.search(pattern, path) is not None)
    )


def _attribute(frame: Any, part: str, parts: Dict[str, float]) -> None:
    if frame is None:
        return
    for name, *criteria in PROFILE_PARTS:
        if _matches(frame, *criteria):
            part = name
    own = frame.time - sum(child.time for child in frame.children)
    parts[part] = parts.get(part, 0.0) + max(own, 0.0)
    for child in frame.children:
        _attribute(child, part, parts)
