"""The GPU check with a SecBERT-shaped encoder (6 layers, hidden 768, 52,000 wordpieces,
random weights from a config: nothing is downloaded). `bench/gpu_check.sh` runs it on a GPU
machine; the commands also run on CPU, for testing.

    python bench/gpu_check.py make-encoder VOCAB OUTPUT_DIR
    python bench/gpu_check.py core ENCODER_DIR TEST_TXT OUTPUT_JSON --device cuda

`core` times the pipe's torch core without spaCy: the encoder, first-wordpiece pooling, and the
same `BiLSTMEmitter` and `BIOCRF` modules the `ner_crf` pipe wraps (training steps: loss,
backward, Adam; inference: forward, Viterbi and the span confidences). It loads
nothing of spaCy's pipeline machinery, so it shows what the torch core costs on its own.
"""
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import typer

from spacy_secner.bio import bio_tags, entity_bounds
from spacy_secner.data import read_sentences
from spacy_secner.pytorch_bilstm_crf import BIOCRF, BiLSTMEmitter, lengths_to_mask

SECBERT_SHAPE = {
    "vocab_size": 52000,
    "hidden_size": 768,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
}
app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command("make-encoder")
def make_encoder(
    vocab: Path = typer.Argument(..., help="A BERT vocab.txt; padded to 52,000 entries"),
    output: Path = typer.Argument(..., help="Directory for the model and tokenizer"),
) -> None:
    """Save a randomly initialised BERT of SecBERT's shape, with an uncased WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = vocab.read_text(encoding="utf8").splitlines()
    size = SECBERT_SHAPE["vocab_size"]
    words = (words + [f"##secbert{i}" for i in range(size - len(words))])[:size]
    output.mkdir(parents=True, exist_ok=True)
    (output / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf8")
    torch.manual_seed(0)
    BertModel(BertConfig(**SECBERT_SHAPE)).save_pretrained(output)
    BertTokenizerFast(str(output / "vocab.txt"), do_lower_case=True).save_pretrained(output)
    typer.echo(f"SecBERT-shaped encoder in {output}")


def _median_time(fn: Callable[[], Any], sync: Callable[[], None], repeats: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@app.command()
def core(
    encoder: Path = typer.Argument(..., help="Encoder directory (make-encoder)"),
    test_txt: Path = typer.Argument(..., help="DNRTI test.txt, for realistic sentence lengths"),
    output: Path = typer.Argument(..., help="JSON report"),
    device: str = typer.Option("cuda", help="cuda or cpu"),
    train_batch: int = typer.Option(8, help="Sentences per training step (the reference's 8)"),
    train_steps: int = typer.Option(300, help="Training steps timed"),
    infer_batch: int = typer.Option(64, help="Sentences per inference batch"),
    repeats: int = typer.Option(5, help="Timed inference passes over the test set"),
) -> None:
    """Time training steps and inference of encoder -> BiLSTM -> CRF on DNRTI test sentences."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    sentences = [words for words, _ in read_sentences(test_txt)]
    tokenizer = AutoTokenizer.from_pretrained(str(encoder), use_fast=True)
    dev = torch.device(device)
    bert = AutoModel.from_pretrained(str(encoder)).to(dev)
    tags = bio_tags([f"T{i}" for i in range(13)])
    width = bert.config.hidden_size
    emitter = BiLSTMEmitter(width, len(tags), hidden_size=256, depth=1, dropout=0.0).to(dev)
    crf = BIOCRF(tags, constrained=True).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def encode(batch: List[List[str]]) -> Any:
        enc = tokenizer(batch, is_split_into_words=True, truncation=True, max_length=512,
                        padding=True, return_tensors="pt")
        firsts, lengths = [], []
        for i in range(len(batch)):
            ids = enc.word_ids(i)
            first = {}
            for pos, word in enumerate(ids):
                if word is not None and word not in first:
                    first[word] = pos
            firsts.append([first.get(w, 0) for w in range(len(batch[i]))])
            lengths.append(len(batch[i]))
        width = max(lengths)
        index = torch.tensor([f + [0] * (width - len(f)) for f in firsts])
        return enc.to(dev), index.to(dev), torch.tensor(lengths, device=dev)

    def heads(enc: Any, index: Any, lengths: Any) -> Any:
        hidden = bert(**enc).last_hidden_state
        vectors = hidden.gather(1, index.unsqueeze(2).expand(-1, -1, hidden.shape[2]))
        return emitter(vectors, lengths), lengths_to_mask(lengths, vectors.shape[1])

    # Training: random gold tags (the encoder is random too: only the speed counts).
    gen = torch.Generator().manual_seed(0)
    params = [*bert.parameters(), *emitter.parameters(), *crf.parameters()]
    optimizer = torch.optim.Adam(params, lr=5e-5)
    train_batches = [
        encode(sentences[i : i + train_batch])
        for i in range(0, min(len(sentences), train_steps * train_batch), train_batch)
    ]

    def train_step(batch: Any) -> float:
        enc, index, lengths = batch
        scores, mask = heads(enc, index, lengths)
        gold = torch.randint(0, 1, mask.shape, generator=gen).to(dev)  # all "O": always valid
        loss = crf(scores, mask, gold)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    bert.train(), emitter.train()
    train_step(train_batches[0])
    sync()
    start = time.perf_counter()
    steps = 0
    while steps < train_steps:
        train_step(train_batches[steps % len(train_batches)])
        steps += 1
    sync()
    train_s = time.perf_counter() - start
    train_words = sum(
        int(train_batches[i % len(train_batches)][2].sum()) for i in range(train_steps)
    )

    bert.eval(), emitter.eval()
    infer = [encode(sentences[i : i + infer_batch]) for i in range(0, len(sentences), infer_batch)]
    words = sum(len(s) for s in sentences)
    parts: Dict[str, Callable[[], Any]] = {}

    def encoder_only() -> None:
        for enc, _, _ in infer:
            bert(**enc)

    def full() -> None:
        for enc, index, lengths in infer:
            scores, mask = heads(enc, index, lengths)
            paths = crf(scores, mask)
            spans = _entity_rows(paths, mask, tags)
            if len(spans):
                crf(scores, mask, paths, spans=spans.to(dev))

    def without_confidence() -> None:
        for enc, index, lengths in infer:
            scores, mask = heads(enc, index, lengths)
            crf(scores, mask).cpu()

    parts = {"encoder": encoder_only, "pipe_core_no_confidence": without_confidence,
             "pipe_core": full}
    with torch.inference_mode():
        timings = {name: _median_time(fn, sync, repeats) for name, fn in parts.items()}
    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "encoder_shape": {key: getattr(bert.config, key) for key in SECBERT_SHAPE},
        "parameters_encoder": sum(p.numel() for p in bert.parameters()),
        "training": {
            "batch": train_batch,
            "steps": train_steps,
            "seconds": train_s,
            "steps_per_second": train_steps / train_s,
            "words_per_second": train_words / train_s,
        },
        "inference": {
            "batch": infer_batch,
            "sentences": len(sentences),
            "words": words,
            **{f"{n}_s": t for n, t in timings.items()},
            **{f"{n}_words_per_second": words / t for n, t in timings.items()},
            "pipe_core/encoder": timings["encoder"] / timings["pipe_core"],
        },
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
    }
    output.write_text(json.dumps(report, indent=2), encoding="utf8")
    typer.echo(json.dumps(report, indent=2))


def _entity_rows(paths: Any, mask: Any, tags: List[str]) -> Any:
    """(seq, start, end, barred) rows of the decoded entities, as the pipe builds them."""
    import torch

    rows = []
    for seq, path in enumerate(paths.tolist()):
        path = path[: int(mask[seq].sum())]
        for start, end in entity_bounds([tags[t] for t in path]):
            rows.append((seq, start, end, tags.index("I-" + tags[path[start]][2:])))
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 4)


if __name__ == "__main__":
    app()
