"""Seconds per training step, and how much of it is the optimizer's update, under two settings
taking turns in one process: the shims' fused Adam step against thinc's per-parameter loop
(`--compare update`), or the encoder's windows packed into rows against padded
(`--compare packing`).

    python bench/bench_train_step.py corpus/train.spacy              # the embedded MiniLM
    python bench/bench_train_step.py corpus/train.spacy --tiny       # a tiny random encoder
    python bench/bench_train_step.py corpus/train.spacy --compare packing

On a GPU (`--gpu-id 0`) the update's time is taken between two synchronisations, and the step
time at the end of each round's steps, so both count the device's work.

The pipeline is the default config (`configs/minilm_cpu.cfg`) initialized on a sample of the
training set: speed does not depend on the weights. Each step is `nlp.update` on 16 training
sentences (the config's batch), as `spacy train` makes it, with the config's optimizer. The two
settings keep separate Adam moments, so the weights do not follow one real training run: only
the time counts.
"""
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import typer

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command()
def main(
    train: Path = typer.Argument(..., help="Training DocBin (DNRTI's train.spacy)"),
    config: Path = typer.Option(Path("configs/minilm_cpu.cfg"), help="Training config"),
    tiny: bool = typer.Option(False, help="A tiny random encoder instead of the config's"),
    encoder: str = typer.Option("", help="HF encoder directory instead of the config's"),
    steps: int = typer.Option(20, min=1, help="Timed steps per round and setting"),
    rounds: int = typer.Option(3, min=1, help="Rounds; the settings take turns in each"),
    threads: int = typer.Option(1, min=1, help="torch threads (the default config trains with 1)"),
    gpu_id: int = typer.Option(-1, help="GPU (-1: CPU)"),
    compare: str = typer.Option(
        "update", help="update: fused Adam against thinc's loop; packing: packed windows "
        "(the config's packed_row_wordpieces) against padded ones (0)"
    ),
) -> None:
    """Time training steps under two settings, taking turns on the same batches."""
    import spacy
    import torch
    from spacy.tokens import Doc, DocBin
    from spacy.training import Example
    from thinc.api import fix_random_seed

    from spacy_secner.layers import shims

    if gpu_id >= 0:
        spacy.require_gpu(gpu_id)
    cfg = spacy.util.load_config(config, interpolate=False)
    with tempfile.TemporaryDirectory(prefix="secner-train-step-") as tmp:
        if tiny:
            from harness.tiny import make_tiny_encoder

            encoder = str(make_tiny_encoder(Path(tmp) / "encoder"))
        if encoder:
            cfg["components"]["transformer"]["model"]["name"] = encoder
        fix_random_seed(0)
        nlp = spacy.util.load_model_from_config(cfg, auto_fill=True, validate=True)
        refs = list(DocBin().from_disk(train).get_docs(nlp.vocab))
        examples = [
            Example(Doc(nlp.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d]), d)
            for d in refs
        ]
        optimizer = nlp.initialize(lambda: examples[:300])
    # After initialization: the config's own callback there sets the training threads.
    torch.set_num_threads(threads)
    batch_size = cfg["training"]["batcher"]["size"]
    random.Random(0).shuffle(examples)
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]

    update_seconds = [0.0]
    inner = shims._FusedAdamUpdate.finish_update

    def timed_finish_update(self, opt):
        # On a GPU, the work queued before the update is not the update's.
        if gpu_id >= 0:
            torch.cuda.synchronize()
        start = time.perf_counter()
        inner(self, opt)
        if gpu_id >= 0:
            torch.cuda.synchronize()
        update_seconds[0] += time.perf_counter() - start

    shims._FusedAdamUpdate.finish_update = timed_finish_update
    if compare == "update":
        def use_fused(fused: bool) -> Callable[[], None]:
            return lambda: setattr(shims._FusedAdamUpdate, "fused_adam", fused)

        settings = {"fused": use_fused(True), "thinc": use_fused(False)}
    elif compare == "packing":
        from spacy_secner.layers import grouping_layer

        layer = grouping_layer(nlp.get_pipe("transformer").model)
        rows = layer.attrs.get("packed_row_wordpieces", 0) if layer is not None else 0
        if rows <= 0:
            raise typer.BadParameter("The config's transformer packs no windows to compare")

        def use_rows(value: int) -> Callable[[], None]:
            return lambda: layer.attrs.__setitem__("packed_row_wordpieces", value)

        settings = {f"packed ({rows})": use_rows(rows), "padded": use_rows(0)}
    else:
        raise typer.BadParameter(f"--compare is update or packing, not {compare!r}")
    results: Dict[str, Dict[str, List[float]]] = {
        k: {"step": [], "update": [], "words_per_s": []} for k in settings
    }
    for round_ in range(rounds + 1):  # the first round warms up
        # Both settings read the same batches in a round; each goes first in every other round.
        round_batches = [batches[(round_ * steps + i) % len(batches)] for i in range(steps)]
        words = sum(len(eg.reference) for batch in round_batches for eg in batch)
        order = list(settings.items()) if round_ % 2 else list(settings.items())[::-1]
        for name, apply in order:
            apply()
            update_seconds[0] = 0.0
            start = time.perf_counter()
            for batch in round_batches:
                nlp.update(batch, sgd=optimizer, losses={})
            if gpu_id >= 0:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            if round_:
                results[name]["step"].append(seconds / steps)
                results[name]["update"].append(update_seconds[0] / steps)
                results[name]["words_per_s"].append(words / seconds)
    source = "tiny random encoder" if tiny else (f"encoder {encoder}" if encoder else "config encoder")
    print(f"{source}, {threads} thread(s), "
          f"{'GPU ' + str(gpu_id) if gpu_id >= 0 else 'CPU'}, batches of {batch_size}, "
          f"{steps} steps x {rounds} rounds per setting (medians of rounds)")
    for name, timings in results.items():
        step = statistics.median(timings["step"])
        update = statistics.median(timings["update"])
        words_per_s = statistics.median(timings["words_per_s"])
        print(f"{name}: {step * 1000:.1f} ms per step, of which the optimizer's update "
              f"{update * 1000:.1f} ms; {words_per_s:,.0f} words/s")


if __name__ == "__main__":
    app()
