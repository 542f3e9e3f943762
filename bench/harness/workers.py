"""One benchmark worker: a system (spaCy pipeline, HF token classifier, bare encoder) loaded in
its own interpreter, answering timing requests over JSON lines.

This file is started by path (`python workers.py --worker SPEC SYSTEM`, or `--load MODEL` for the
`spacy.load` probe), not as a module of a package, so that the Hugging Face workers never
import spaCy (the `spacy_secner` package imports it). Keep it free of spaCy and of imports from
this package at the top level: only the standard library.
"""

import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


def batches(items: Sequence[Any], size: int) -> List[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def rss_mb() -> Optional[float]:
    """Current resident memory of this process in MiB (VmRSS), None without /proc."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB: VmHWM, or ru_maxrss without /proc."""
    peak = _proc_status_mb("VmHWM")
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return peak


def reset_peak_rss() -> bool:
    """Restart the peak (VmHWM) from the current RSS. RETURNS (bool): whether the kernel let us."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _proc_status_mb(field: str) -> Optional[float]:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


# --- The systems, as run inside a worker -------------------------------------------------------


def _sync(spec: Dict[str, Any]) -> None:
    """Wait for queued GPU work, so that a timing covers all of it."""
    if spec.get("gpu_id", -1) >= 0:
        import torch

        torch.cuda.synchronize()


class _Pipeline:
    def __init__(self, spec: Dict[str, Any]) -> None:
        import spacy

        self.spec = spec
        if spec.get("gpu_id", -1) >= 0:
            spacy.require_gpu(spec["gpu_id"])
        self.nlp = spacy.load(spec["model"])

    def about(self) -> Dict[str, Any]:
        """The settings that decide the speed: pipes, and each pipe's cfg but its labels."""
        cfgs = {
            name: {k: v for k, v in getattr(pipe, "cfg", {}).items() if k != "labels"}
            for name, pipe in self.nlp.pipeline
        }
        from spacy_secner.calibration import summarize
        from spacy_secner.layers import grouping_layer

        for cfg in cfgs.values():
            if cfg.get("calibration"):
                cfg["calibration"] = summarize(cfg["calibration"])  # not its thousands of names

        for name, pipe in self.nlp.pipeline:
            # spacy-secner.TransformerModel.v1 keeps its grouping setting on the encoder layer.
            encoder = grouping_layer(pipe.model) if hasattr(pipe, "model") else None
            if encoder is not None:
                cfgs[name]["max_batch_wordpieces"] = encoder.attrs["max_batch_wordpieces"]
        return {"pipe_names": self.nlp.pipe_names, "pipe_cfg": cfgs}

    def prepare(self, texts: List[str], batch_size: int) -> Any:
        return texts, batch_size

    def run(self, prepared: Any) -> Any:
        texts, batch_size = prepared
        docs = list(self.nlp.pipe(texts, batch_size=batch_size))
        _sync(self.spec)
        return docs

    def describe(self, prepared: Any, docs: Any) -> Dict[str, Any]:
        wordpieces = inputs = 0
        for doc in docs:
            trf = getattr(doc._, "trf_data", None)
            if trf is not None:
                wordpieces += sum(trf.wordpieces.lengths)
                inputs += len(trf.wordpieces.lengths)
        return {
            "tokens": sum(len(doc) for doc in docs),
            "entities": sum(len(doc.ents) for doc in docs),
            "wordpieces": wordpieces,
            "encoder_inputs": inputs,
        }


class _HFTokenClassifier:
    def __init__(self, spec: Dict[str, Any]) -> None:
        import torch
        from transformers import AutoTokenizer

        self.torch = torch
        self.spec = spec
        gpu_id = spec.get("gpu_id", -1)
        self.device = torch.device(f"cuda:{gpu_id}" if gpu_id >= 0 else "cpu")
        self.max_length = spec["max_length"]
        self.tokenizer = AutoTokenizer.from_pretrained(spec["encoder"], use_fast=True)
        self.model = self._load_model(spec).to(self.device)
        self.model.eval()

    def _load_model(self, spec: Dict[str, Any]) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification.from_pretrained(
            spec["encoder"], num_labels=spec["num_labels"]
        )

    def tokenize(self, texts: Sequence[str], *, offsets: bool = False) -> Any:
        """The padded batch as a user's code would make it, on the host (with each wordpiece's
        character offsets if `offsets`)."""
        return self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_offsets_mapping=offsets,
            return_tensors="pt",
        )

    def encode(self, texts: Sequence[str]) -> Any:
        return self.tokenize(texts).to(self.device)

    def prepare(self, texts: List[str], batch_size: int) -> Any:
        return texts, batches(texts, batch_size)

    def run(self, prepared: Any) -> Any:
        with self.torch.inference_mode():
            # The tags end up on the host, where a user reads them.
            return [self.model(**self.encode(b)).logits.argmax(-1).cpu() for b in prepared[1]]

    def describe(self, prepared: Any, output: Any) -> Dict[str, Any]:
        texts, text_batches = prepared[0], prepared[1]
        full = self.tokenizer(list(texts), truncation=False)["input_ids"]
        encoded = [self.encode(b)["attention_mask"] for b in text_batches]
        return {
            "wordpieces": int(sum(int(m.sum()) for m in encoded)),
            "padded_wordpieces": int(sum(m.numel() for m in encoded)),
            "encoder_inputs": len(texts),
            "truncated_texts": sum(len(ids) > self.max_length for ids in full),
            "wordpieces_untruncated": sum(len(ids) for ids in full),
        }


class _EncoderFloor(_HFTokenClassifier):
    def _load_model(self, spec: Dict[str, Any]) -> Any:
        from transformers import AutoModel

        return AutoModel.from_pretrained(spec["encoder"])

    def prepare(self, texts: List[str], batch_size: int) -> Any:
        text_batches = batches(texts, batch_size)
        return texts, text_batches, [self.encode(b) for b in text_batches]

    def run(self, prepared: Any) -> Any:
        with self.torch.inference_mode():
            outputs = [self.model(**encoding).last_hidden_state for encoding in prepared[2]]
        _sync(self.spec)
        return outputs


def _bio_spans(
    tags: Sequence[str], offsets: Sequence[Sequence[int]]
) -> List[Tuple[int, int, str]]:
    """(start_char, end_char, label) of the entities in BIO `tags`, one tag per unit (word or
    wordpiece) whose character offsets are `offsets`: what a user's code does with the tags.
    An `I-` that does not continue its type starts an entity, as spaCy reads it."""
    spans: List[Tuple[int, int, str]] = []
    start = end = -1
    label = ""
    for tag, (first, last) in zip(tags, offsets):
        if tag != "O" and tag[0] == "I" and tag[2:] == label:
            end = last
            continue
        if label:
            spans.append((start, end, label))
        label = tag[2:] if tag != "O" else ""
        start, end = first, last
    if label:
        spans.append((start, end, label))
    return spans


def _tag_names(n_tags: int) -> List[str]:
    """`O` and B-/I- tags of (n_tags - 1) / 2 made-up types: the models are random anyway."""
    return ["O"] + [f"{p}-T{i}" for i in range((n_tags - 1) // 2) for p in ("B", "I")]


class _HFTokenSpans(_HFTokenClassifier):
    """HF token classification as a user would run it end to end: the fast tokenizer with
    offsets, the forward pass, an argmax per wordpiece, and entities as character spans."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        super().__init__(spec)
        self.tags = _tag_names(spec["num_labels"])

    def run(self, prepared: Any) -> Any:
        entities = []
        with self.torch.inference_mode():
            for texts in prepared[1]:
                encoding = self.tokenize(texts, offsets=True)
                offsets = encoding.pop("offset_mapping").tolist()
                lengths = encoding["attention_mask"].sum(1).tolist()
                ids = self.model(**encoding.to(self.device)).logits.argmax(-1).cpu().tolist()
                for row, n, spans in zip(ids, lengths, offsets):
                    # Without [CLS] and [SEP], whose offsets are (0, 0).
                    tags = [self.tags[i] for i in row[1 : n - 1]]
                    entities.append(_bio_spans(tags, spans[1 : n - 1]))
        return entities

    def describe(self, prepared: Any, output: Any) -> Dict[str, Any]:
        return {**super().describe(prepared, output), "entities": sum(map(len, output))}


class _PlainBiLSTMCRF(_HFTokenClassifier):
    """The pipeline's model written in plain PyTorch, as a user would: the fast tokenizer with
    offsets and word ids, the encoder, the first wordpiece of each word, a BiLSTM, a linear
    layer, pytorch-crf's Viterbi decoding, and entities as character spans (random weights).
    A text longer than `max_length` wordpieces is cut there."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        import torch

        super().__init__(spec)
        from torchcrf import CRF

        torch.manual_seed(0)
        width = self.model.config.hidden_size
        hidden = spec.get("lstm_hidden", 256)
        self.tags = _tag_names(spec["num_labels"])
        self.lstm = torch.nn.LSTM(width, hidden, bidirectional=True, batch_first=True)
        self.linear = torch.nn.Linear(2 * hidden, len(self.tags))
        self.crf = CRF(len(self.tags), batch_first=True)
        for module in (self.lstm, self.linear, self.crf):
            module.to(self.device).eval()

    def _load_model(self, spec: Dict[str, Any]) -> Any:
        from transformers import AutoModel

        return AutoModel.from_pretrained(spec["encoder"])

    def run(self, prepared: Any) -> Any:
        import numpy
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        torch = self.torch

        entities = []
        with torch.inference_mode():
            for texts in prepared[1]:
                encoding = self.tokenize(texts, offsets=True)
                offsets = encoding.pop("offset_mapping").tolist()
                firsts, words = [], []
                for i in range(len(texts)):
                    first: List[int] = []
                    bounds: List[List[int]] = []
                    previous = None
                    for position, word in enumerate(encoding.word_ids(i)):
                        if word is None:
                            continue
                        if word != previous:
                            first.append(position)
                            bounds.append(list(offsets[i][position]))
                        else:
                            bounds[-1][1] = offsets[i][position][1]
                        previous = word
                    firsts.append(first)
                    words.append(bounds)
                lengths = torch.tensor([max(len(f), 1) for f in firsts])
                index = numpy.zeros((len(texts), int(lengths.max())), dtype="int64")
                for i, first in enumerate(firsts):
                    index[i, : len(first)] = first
                hidden = self.model(**encoding.to(self.device)).last_hidden_state
                index = torch.from_numpy(index).to(self.device)
                vectors = hidden.gather(1, index.unsqueeze(2).expand(-1, -1, hidden.shape[2]))
                packed = pack_padded_sequence(vectors, lengths, batch_first=True, enforce_sorted=False)
                output, _ = self.lstm(packed)
                output, _ = pad_packed_sequence(output, batch_first=True, total_length=index.shape[1])
                mask = torch.arange(index.shape[1])[None, :] < lengths[:, None]
                paths = self.crf.decode(self.linear(output), mask.to(self.device))
                for path, bounds in zip(paths, words):
                    entities.append(_bio_spans([self.tags[t] for t in path], bounds))
        return entities

    def describe(self, prepared: Any, output: Any) -> Dict[str, Any]:
        return {**super().describe(prepared, output), "entities": sum(map(len, output))}


_WORKER_SYSTEMS: Dict[str, Callable[[Dict[str, Any]], Any]] = {
    "pipeline": _Pipeline,
    "hf": _HFTokenClassifier,
    "floor": _EncoderFloor,
    "hf_spans": _HFTokenSpans,
    "plain": _PlainBiLSTMCRF,
}


def _worker(spec_path: str, system: str) -> None:
    """Load one system, then answer `run` requests on stdin with timings on stdout."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf8"))
    # Libraries print to stdout now and then: keep the real stdout for the protocol only.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def send(message: Dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")

    import torch

    torch.set_num_threads(spec["threads"])
    on_gpu = spec.get("gpu_id", -1) >= 0
    start = time.perf_counter()
    impl = _WORKER_SYSTEMS[system](spec)
    load_s = time.perf_counter() - start
    torch.set_num_threads(spec["threads"])
    send(
        {
            "load_s": load_s,
            "rss_after_load_mb": rss_mb(),
            "peak_rss_load_mb": peak_rss_mb(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(spec["gpu_id"]) if on_gpu else None,
            "about": impl.about() if hasattr(impl, "about") else {},
        }
    )
    prepared: Dict[Any, Any] = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "quit":
            send({"peak_rss_mb": peak_rss_mb()})
            return
        start, end = request.get("part") or (0, len(spec["texts"][request["texts"]]))
        key = (request["texts"], request["batch_size"], start, end)
        if key not in prepared:
            prepared[key] = impl.prepare(spec["texts"][key[0]][start:end], key[1])
        gc.collect()
        was_reset = reset_peak_rss()
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        output = impl.run(prepared[key])
        seconds = time.perf_counter() - start
        reply: Dict[str, Any] = {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}
        if on_gpu:
            reply["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        reply["peak_is_per_run"] = was_reset
        if request.get("describe"):
            reply["info"] = impl.describe(prepared[key], output)
        del output
        send(reply)


def _load_probe(model: str, gpu_id: int = -1) -> None:
    """Print how long `import spacy` and `spacy.load(model)` take in this fresh interpreter."""
    start = time.perf_counter()
    import spacy

    imported = time.perf_counter()
    if gpu_id >= 0:
        spacy.require_gpu(gpu_id)
    spacy.load(model)
    loaded = time.perf_counter()
    result = {"import_s": imported - start, "load_s": loaded - imported}
    print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["--load"]:
        _load_probe(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else -1)
    else:
        raise SystemExit(f"usage: {sys.argv[0]} --worker SPEC SYSTEM | --load MODEL [GPU_ID]")
