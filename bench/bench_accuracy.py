"""Train and score the headline config, the baselines and the ablations side by side.

Each run is `spacy train` on a variant of the base config (same corpus, encoder and budget),
model selection on dev, then one seqeval pass over test. Runs that already have a result.json
are kept, so an interrupted benchmark resumes where it stopped.

    python bench/bench_accuracy.py run --epochs 2 --jobs 2 --output metrics/accuracy

`pick` then puts the headline run closest to the mean dev F1 in `training/model-best`, for the
project's `ship` workflow to calibrate, evaluate and package.
"""
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

import typer
from spacy.util import load_config

from harness import accuracy

from spacy_secner.atomic import write_json, write_text
from spacy_secner.evaluation import read_curves

ROOT = Path(__file__).resolve().parents[1]
app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


def machine(gpu_id: int) -> str:
    """What trained the run, for the raw results: CPU model and cores, or the GPU's name."""
    import torch

    if gpu_id >= 0:
        return torch.cuda.get_device_name(gpu_id)
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"


def _budget_epochs(training: Dict[str, Any]) -> float:
    """A config's training budget in epochs (one evaluation per epoch in these configs)."""
    if training["max_steps"]:
        return round(training["max_steps"] / training["eval_frequency"], 2)
    return training["max_epochs"]


@app.command()
def one(
    variant: str = typer.Argument(..., help="Variant name"),
    seed: int = typer.Argument(..., help="Random seed"),
    output: Path = typer.Argument(..., help="Run directory"),
    config: Path = typer.Option(ROOT / "configs/minilm_cpu.cfg", help="Base config"),
    corpus: Path = typer.Option(ROOT / "corpus", help="Directory with train/dev/test.spacy"),
    epochs: int = typer.Option(0, min=0, help="Training budget in epochs (0: the config's)"),
    gpu_id: int = typer.Option(-1, help="GPU id, -1 for CPU"),
) -> None:
    """Train one variant with one seed and score its best model on dev and test."""
    import spacy

    from spacy_secner.evaluation import predict_corpus, seqeval_report

    chosen = accuracy.variants_by_name([variant])[0]
    base = load_config(config)
    cfg = chosen.config(base, seed, epochs)
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    cfg.to_disk(output / "config.cfg")
    command = [
        sys.executable, "-m", "spacy", "train", str(output / "config.cfg"),
        "--output", str(output),
        "--paths.train", str(corpus / "train.spacy"),
        "--paths.dev", str(corpus / "dev.spacy"),
        "--paths.curves", str(output / "curves.jsonl"),
        "--gpu-id", str(gpu_id),
    ]
    start = time.perf_counter()
    with (output / "train.log").open("w", encoding="utf8") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    minutes = (time.perf_counter() - start) / 60
    if proc.returncode != 0:
        tail = (output / "train.log").read_text(encoding="utf8")[-2000:]
        raise SystemExit(f"Training {variant} seed {seed} failed ({output / 'train.log'}):\n{tail}")
    if gpu_id >= 0:
        spacy.require_gpu(gpu_id)
    nlp = spacy.load(output / "model-best")
    dev = seqeval_report(*predict_corpus(nlp, corpus / "dev.spacy"))
    test = seqeval_report(*predict_corpus(nlp, corpus / "test.spacy"))
    curves = read_curves(output / "curves.jsonl")
    best = accuracy.best_evaluation(curves)
    result = {
        "variant": chosen.name,
        "kind": chosen.kind,
        "description": chosen.description,
        "seed": seed,
        "test_p": test["precision"],
        "test_r": test["recall"],
        "test_f": test["f1"],
        "dev_f": dev["f1"],
        "per_type_f": {t: s["f1-score"] for t, s in test["per_type"].items()},
        # Epochs of training behind model-best (one evaluation per epoch in these configs).
        "best_epoch": round(best.get("step", 0) / cfg["training"]["eval_frequency"], 2),
        "best_step": best.get("step", 0),
        "epochs": round(curves[-1]["step"] / cfg["training"]["eval_frequency"]) if curves else 0,
        "steps": curves[-1]["step"] if curves else 0,
        "max_epochs": epochs or _budget_epochs(cfg["training"]),
        "patience_steps": cfg["training"]["patience"],
        "dev_f_curve": [round(float(r["score"]), 4) for r in curves],
        "train_minutes": minutes,
        "train_words_per_s": accuracy.training_words_per_second(curves),
        "machine": machine(gpu_id),
        "test_report": test["report"],
    }
    write_json(output / "result.json", result)
    print(f"{chosen.name} seed {seed}: test F1 {test['f1']:.4f} dev F1 {dev['f1']:.4f} "
          f"({minutes:.1f} min)")


@app.command()
def run(
    output: Path = typer.Option(ROOT / "metrics/accuracy", help="Where runs and the table go"),
    variants: str = typer.Option("", help="Comma-separated variants (empty: all)"),
    seeds: str = typer.Option("", help="Override every variant's seeds, e.g. 0,1,2"),
    config: Path = typer.Option(ROOT / "configs/minilm_cpu.cfg", help="Base config"),
    corpus: Path = typer.Option(ROOT / "corpus", help="Directory with train/dev/test.spacy"),
    epochs: int = typer.Option(0, min=0, help="Training budget in epochs (0: the config's)"),
    jobs: int = typer.Option(1, min=1, help="Trainings at a time (one torch thread each)"),
    gpu_id: int = typer.Option(-1, help="GPU id, -1 for CPU"),
    redo: bool = typer.Option(False, help="Retrain runs that already have a result"),
) -> None:
    """Run every variant (resuming), then write accuracy.json and accuracy.md."""
    chosen = accuracy.variants_by_name([v for v in variants.split(",") if v])
    seed_override = [int(s) for s in seeds.split(",") if s]
    runs = [(v, s) for v in chosen for s in (seed_override or v.seeds)]
    output.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def train(item) -> Path:
        variant, seed = item
        run_dir = output / accuracy.run_name(variant, seed)
        if (run_dir / "result.json").exists() and not redo:
            print(f"{run_dir.name}: kept")
            return run_dir
        command = [
            sys.executable, __file__, "one", variant.name, str(seed), str(run_dir),
            "--config", str(config), "--corpus", str(corpus), "--epochs", str(epochs),
            "--gpu-id", str(gpu_id),
        ]
        print(f"{run_dir.name}: training", flush=True)
        subprocess.run(command, env=env, check=True)
        return run_dir

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        run_dirs = list(pool.map(train, runs))
    results: List[Dict[str, Any]] = []
    for run_dir in run_dirs:
        result = json.loads((run_dir / "result.json").read_text(encoding="utf8"))
        if "train_words_per_s" not in result:
            # A result written before the harness recorded it: its curves still tell.
            curves = read_curves(run_dir / "curves.jsonl")
            result["train_words_per_s"] = accuracy.training_words_per_second(curves)
        results.append(result)
    summary = accuracy.summarize(results)
    table = accuracy.render_markdown(summary, [v.name for v in chosen])
    write_json(output / "accuracy.json", {"epochs": epochs, "runs": results, "summary": summary})
    write_text(output / "accuracy.md", table)
    print(table)


@app.command()
def pick(
    output: Path = typer.Argument(ROOT / "metrics/accuracy", help="The harness's directory"),
    variant: str = typer.Option("headline", help="Variant whose runs to choose from"),
    model: Path = typer.Option(ROOT / "training/model-best", help="Where the chosen model goes"),
    curves: Path = typer.Option(ROOT / "training/curves.jsonl", help="Where its curves go"),
    min_seeds: int = typer.Option(3, min=1, help="Refuse fewer seeds than this"),
) -> None:
    """Put the run closest to the mean dev F1 in place of the trained model, its meta saying
    which run it is and the distribution it comes from, for `calibrate`, `evaluate`, `plot` and
    `package` to ship."""
    summary_path = output / "accuracy.json"
    if not summary_path.exists():
        raise SystemExit(f"{summary_path} not found: run `bench_accuracy.py run` first")
    runs = json.loads(summary_path.read_text(encoding="utf8"))["runs"]
    chosen = accuracy.closest_to_mean(runs, variant)
    if len(chosen["seeds"]) < min_seeds:
        raise SystemExit(f"{summary_path}: {variant} has {len(chosen['seeds'])} seed(s), "
                         f"fewer than --min-seeds {min_seeds}")
    budgets = {r.get("max_epochs") for r in runs if r["variant"] == variant}
    if len(budgets) > 1:
        raise SystemExit(f"{summary_path}: the {variant} runs have different budgets "
                         f"({sorted(budgets, key=str)} epochs): their mean is no distribution")
    run = chosen["run"]
    run_dir = output / f"{run['variant']}-s{run['seed']}"
    source = run_dir / "model-best"
    if not (source / "meta.json").exists():
        raise SystemExit(f"{source}: no trained model (meta.json missing)")
    provenance = {
        "selection": "closest to the mean dev F1 over the variant's seeds",
        "harness": "bench/bench_accuracy.py",
        "variant": run["variant"],
        "seed": run["seed"],
        "test_f": run["test_f"],
        "dev_f": run["dev_f"],
        "mean_dev_f": chosen["mean_dev"],
        "mean_test_f": chosen["mean"],
        "std_test_f": chosen["std"],
        "seeds": chosen["seeds"],
        "max_epochs": run.get("max_epochs"),
        "best_epoch": run.get("best_epoch"),
        "machine": run.get("machine"),
    }
    # Copy beside the target, then swap: the target is the old model or the whole new one.
    staging = model.with_name(f".{model.name}.pick")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(source, staging)
    meta = json.loads((staging / "meta.json").read_text(encoding="utf8"))
    meta["training_run"] = provenance
    write_json(staging / "meta.json", meta)
    replaced = model.with_name(f".{model.name}.replaced")
    if model.exists():
        if replaced.exists():
            shutil.rmtree(replaced)
        model.rename(replaced)
    staging.rename(model)
    if replaced.exists():
        shutil.rmtree(replaced)
    write_text(curves, (run_dir / "curves.jsonl").read_text(encoding="utf8"))
    std = f" +- {chosen['std']:.4f}" if chosen["std"] is not None else ""
    print(f"{model}: {run['variant']} seed {run['seed']} (test F1 {run['test_f']:.4f}; "
          f"mean over seeds {chosen['seeds']}: {chosen['mean']:.4f}{std})")


if __name__ == "__main__":
    app()
