"""The GPU check with a SecBERT-shaped encoder (6 layers, hidden 768, 52,000 wordpieces,
random weights from a config: nothing is downloaded). `bench/gpu_check.sh` runs it on a GPU
machine; the commands also run on CPU, for testing.

    python bench/gpu_check.py make-encoder VOCAB OUTPUT_DIR
    python bench/gpu_check.py core ENCODER_DIR TEST_TXT OUTPUT_JSON --device cuda
    python bench/gpu_check.py pack-encoder ENCODER_DIR ARCHIVE      (here: float16, xz)
    python bench/gpu_check.py unpack-encoder ARCHIVE OUTPUT_DIR     (there: back to float32)

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


# The files of a Hugging Face encoder directory that the pipeline reads (not the
# sentence-transformers extras).
ENCODER_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


@app.command("pack-encoder")
def pack_encoder(
    encoder: Path = typer.Argument(..., help="Hugging Face encoder directory (model.safetensors)"),
    archive: Path = typer.Argument(..., help="The .tar.xz to write"),
) -> None:
    """Pack an encoder for a machine with no network: its weights in float16 (half the bytes;
    `unpack-encoder` turns them back into float32) and its tokenizer and config files, as one
    xz-compressed tar."""
    import io
    import lzma
    import tarfile

    from safetensors.torch import load_file, save

    weights = load_file(str(encoder / "model.safetensors"))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    archive.parent.mkdir(parents=True, exist_ok=True)
    with lzma.open(archive, "wb", preset=9 | lzma.PRESET_EXTREME) as xz, tarfile.open(
        fileobj=xz, mode="w"
    ) as tar:
        payload = save(half)
        info = tarfile.TarInfo("model.f16.safetensors")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
        for name in ENCODER_FILES:
            if (encoder / name).is_file():
                tar.add(encoder / name, arcname=name)
    typer.echo(f"{archive}: {archive.stat().st_size / 2**20:.1f} MiB")


@app.command("unpack-encoder")
def unpack_encoder(
    archive: Path = typer.Argument(..., help="A .tar.xz from pack-encoder"),
    output: Path = typer.Argument(..., help="Encoder directory to write"),
) -> None:
    """Unpack an encoder packed by `pack-encoder`, its weights back in float32."""
    import tarfile

    from safetensors.torch import load_file, save_file

    output.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(output, filter="data")
    half = output / "model.f16.safetensors"
    weights = load_file(str(half))
    full = {k: (v.float() if v.is_floating_point() else v) for k, v in weights.items()}
    save_file(full, str(output / "model.safetensors"), metadata={"format": "pt"})
    half.unlink()
    typer.echo(f"{output}: {sum(v.numel() for v in full.values()):,} parameters in float32")


@app.command("train-summary")
def train_summary(curves: Path = typer.Argument(..., help="curves.jsonl of a training run")) -> None:
    """Seconds per evaluation interval (an epoch in the default config), steps/s and words/s of
    a training run, from its `spacy-secner.curve_logger.v1` file (evaluations included)."""
    if not curves.is_file():
        typer.echo(f"no curves at {curves}")
        raise typer.Exit(1)
    records = [json.loads(line) for line in curves.read_text(encoding="utf8").splitlines() if line]
    previous = {"step": 0, "seconds": 0.0, "words": 0}
    for record in records:
        steps = record["step"] - previous["step"]
        seconds = record["seconds"] - previous["seconds"]
        words = record["words"] - previous["words"]
        rate = f"{steps / seconds:.1f} steps/s, {words / seconds:,.0f} words/s" if seconds > 0 else ""
        typer.echo(
            f"epoch {record['epoch']} step {record['step']}: {seconds:.1f} s for {steps} steps "
            f"{rate}; dev F1 {record.get('ents_f') or 0:.4f}, dev loss {record.get('dev_loss', '-')}"
        )
        previous = record
    last = records[-1] if records else previous
    if last["seconds"]:
        typer.echo(
            f"total: {last['step']} steps, {last['words']:,} words in {last['seconds']:.1f} s: "
            f"{last['step'] / last['seconds']:.1f} steps/s, {last['words'] / last['seconds']:,.0f} "
            "words/s, evaluations included"
        )


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
