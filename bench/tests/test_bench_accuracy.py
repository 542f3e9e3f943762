"""The accuracy harness: its variants, its summary table and one tiny end-to-end run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin
from spacy.util import load_config

from conftest import TRAIN_DATA, make_examples
from harness import accuracy
from spacy_secner.evaluation import read_curves

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "configs" / "minilm_cpu.cfg"


def tiny_base(tiny_bert_dir):
    config = load_config(BASE)
    config["components"]["transformer"]["model"]["name"] = str(tiny_bert_dir)
    config["training"]["eval_frequency"] = 2
    return config


@pytest.mark.parametrize("variant", accuracy.VARIANTS, ids=lambda v: v.name)
def test_every_variant_builds_and_changes_one_thing(variant, tiny_bert_dir):
    base = tiny_base(tiny_bert_dir)
    config = variant.config(base, seed=7, epochs=3)
    assert config["system"]["seed"] == 7
    # 3 epochs of 2 steps (tiny_base), the last one ending with an evaluation.
    assert (config["training"]["max_steps"], config["training"]["max_epochs"]) == (6, 0)
    assert base["system"]["seed"] == 0  # the base is left alone
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    if variant.name == "spacy-ner":
        assert "ner" in nlp.pipe_names and "ner_crf" not in nlp.pipe_names
        return
    model = nlp.get_pipe("ner_crf").model
    ner_cfg = config["components"]["ner_crf"]["model"]
    expected = {
        "headline": ("crf", 1, True, 0.0, "spacy-secner.reduce_first.v1"),
        "softmax": ("softmax", 0, False, 0.0, "spacy-secner.reduce_first.v1"),
        "dropout-0.1": ("crf", 1, True, 0.1, "spacy-secner.reduce_first.v1"),
        "unconstrained": ("crf", 1, False, 0.0, "spacy-secner.reduce_first.v1"),
        "no-bilstm": ("crf", 0, True, 0.0, "spacy-secner.reduce_first.v1"),
        "mean-pooling": ("crf", 1, True, 0.0, "reduce_mean.v1"),
        "mention-swap": ("crf", 1, True, 0.0, "spacy-secner.reduce_first.v1"),
        "averaged": ("crf", 1, True, 0.0, "spacy-secner.reduce_first.v1"),
        "padded": ("crf", 1, True, 0.0, "spacy-secner.reduce_first.v1"),
    }[variant.name]
    packed_rows = config["components"]["transformer"]["model"]["packed_row_wordpieces"]
    assert packed_rows == (0 if variant.name == "padded" else 128)
    assert config["training"]["optimizer"]["use_averages"] is (variant.name == "averaged")
    augmenter = config["corpora"]["train"]["augmenter"]
    if variant.name == "mention-swap":
        assert augmenter["@augmenters"] == "spacy-secner.mention_swap.v1"
        corpus = spacy.util.registry.resolve(config.interpolate()["corpora"])["train"]
        assert corpus.augmenter is not None and corpus.path.name == "train.spacy"
    else:
        assert augmenter is None
    attrs = model.attrs
    got = (attrs["decoder"], attrs["depth"], attrs["constrained"], attrs["dropout"],
           ner_cfg["tok2vec"]["pooling"]["@layers"])
    assert got == expected


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="Unknown variants"):
        accuracy.variants_by_name(["headline", "crf-xl"])


def run_result(variant, seed, f, **extra):
    return {"variant": variant, "kind": "headline", "seed": seed, "test_p": f, "test_r": f,
            "test_f": f, "dev_f": f - 0.1, "train_minutes": 10.0, "best_epoch": 2, "epochs": 2,
            "per_type_f": {"Tool": f}, **extra}


def test_summary_mean_and_sample_std_over_seeds():
    summary = accuracy.summarize([run_result("headline", s, f) for s, f in enumerate([0.8, 0.9, 0.7])])
    row = summary["headline"]
    assert row["test_f"] == pytest.approx(0.8)
    assert row["test_f_std"] == pytest.approx(0.1)  # sample std of 0.7, 0.8, 0.9
    assert row["seeds"] == [0, 1, 2] and row["per_type_f"]["Tool"] == pytest.approx(0.8)
    single = accuracy.summarize([run_result("softmax", 0, 0.75)])["softmax"]
    assert single["test_f_std"] is None
    table = accuracy.render_markdown({**summary, "softmax": single}, ["headline", "softmax"])
    assert "**0.8000 ± 0.1000**" in table and "**0.7500**" in table
    assert "| Tool | 0.800 | 0.750 |" in table
    # Results that predate the training-speed figure show none, and do not fail the summary.
    assert "train_words_per_s" not in row and table.count("| - |") == 2


def test_training_speed_from_the_curves():
    curves = [{"step": 0, "seconds": 10, "words": 50}, {"step": 329, "seconds": 600, "words": 140_000}]
    assert accuracy.training_words_per_second(curves) == pytest.approx(233.33, abs=0.01)
    assert accuracy.training_words_per_second([]) is None
    runs = [run_result("headline", s, 0.8, train_words_per_s=w) for s, w in [(0, 180.0), (1, 200.0)]]
    row = accuracy.summarize(runs)["headline"]
    assert row["train_words_per_s"] == pytest.approx(190.0)
    assert "| 190 ± 14 |" in accuracy.render_markdown({"headline": row}, ["headline"])


def test_harness_runs_end_to_end_and_resumes(tiny_bert_dir, tmp_path):
    nlp = spacy.blank("en")
    docs = [eg.reference for eg in make_examples(nlp, TRAIN_DATA)]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "dev", "test"):
        DocBin(docs=docs).to_disk(corpus / f"{split}.spacy")
    base = tmp_path / "base.cfg"
    tiny_base(tiny_bert_dir).to_disk(base)
    out = tmp_path / "bench"
    command = [sys.executable, str(ROOT / "bench" / "bench_accuracy.py"), "run", "--output",
               str(out), "--config", str(base), "--corpus", str(corpus), "--epochs", "2",
               "--variants", "headline,softmax,averaged", "--seeds", "0"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "accuracy.json").read_text())
    assert sorted(r["variant"] for r in report["runs"]) == ["averaged", "headline", "softmax"]
    for run in report["runs"]:
        assert 0.0 <= run["test_f"] <= 1.0 and run["steps"] == 4 and run["epochs"] == 2
        # Recorded, though None here: spaCy counts whole seconds, and these runs take less.
        stored = json.loads((out / f"{run['variant']}-s0" / "result.json").read_text())
        assert "train_words_per_s" in stored
        assert (out / f"{run['variant']}-s0" / "model-best").is_dir()
    assert "| headline | headline | 1 |" in (out / "accuracy.md").read_text()
    # A result written before the harness recorded training speed gets it from its curves.
    old_result = out / "softmax-s0" / "result.json"
    stored = json.loads(old_result.read_text())
    del stored["train_words_per_s"]
    old_result.write_text(json.dumps(stored))
    curves_path = out / "softmax-s0" / "curves.jsonl"
    curves = read_curves(curves_path)
    curves[-1].update(seconds=4, words=1000)
    curves_path.write_text("\n".join(json.dumps(c) for c in curves) + "\n")
    # A second run keeps the finished runs instead of training them again.
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count(": kept") == 3
    report = json.loads((out / "accuracy.json").read_text())
    speeds = {r["variant"]: r["train_words_per_s"] for r in report["runs"]}
    assert speeds["softmax"] == pytest.approx(250.0)


def test_closest_to_mean_is_not_the_best_seed():
    results = [run_result("headline", s, f) for s, f in [(0, 0.86), (1, 0.88), (2, 0.85)]]
    results.append(run_result("softmax", 0, 0.865))
    chosen = accuracy.closest_to_mean(results, "headline")
    assert chosen["run"]["seed"] == 0  # dev 0.76 is nearest the mean dev 0.7633
    assert chosen["mean"] == pytest.approx(0.8633, abs=1e-4)
    assert chosen["mean_dev"] == pytest.approx(0.7633, abs=1e-4)
    # Chosen on dev, never on test: the test F1 nearest its mean is another seed's here.
    apart = [run_result("headline", 0, 0.86, dev_f=0.70), run_result("headline", 1, 0.80, dev_f=0.75),
             run_result("headline", 2, 0.90, dev_f=0.80)]
    assert accuracy.closest_to_mean(apart, "headline")["run"]["seed"] == 1
    assert chosen["std"] == pytest.approx(0.0153, abs=1e-4) and chosen["seeds"] == [0, 1, 2]
    # Equally close: the lower seed.
    tie = accuracy.closest_to_mean([run_result("headline", s, f) for s, f in [(3, 1.0), (1, 0.5)]], "headline")
    assert tie["run"]["seed"] == 1
    with pytest.raises(ValueError, match="no-bilstm"):
        accuracy.closest_to_mean(results, "no-bilstm")


def write_campaign(root: Path, scores):
    runs = []
    for seed, f in scores:
        run_dir = root / f"headline-s{seed}"
        (run_dir / "model-best" / "ner_crf").mkdir(parents=True)
        (run_dir / "model-best" / "meta.json").write_text(json.dumps({"lang": "en", "name": "pipeline"}))
        (run_dir / "model-best" / "ner_crf" / "model").write_text(f"weights of seed {seed}")
        (run_dir / "curves.jsonl").write_text(json.dumps({"step": 0, "seed": seed}) + "\n")
        runs.append(run_result("headline", seed, f, max_epochs=12, best_epoch=9, machine="cpu"))
    (root / "accuracy.json").write_text(json.dumps({"epochs": 12, "runs": runs, "summary": {}}))


def run_pick(campaign: Path, training: Path, min_seeds: int = 3):
    # In process: the command's function, as typer calls it.
    from bench_accuracy import pick

    pick(campaign, variant="headline", model=training / "model-best",
         curves=training / "curves.jsonl", min_seeds=min_seeds)


def test_pick_ships_the_run_closest_to_the_mean_and_says_so(tmp_path):
    campaign, training = tmp_path / "accuracy", tmp_path / "training"
    write_campaign(campaign, [(0, 0.86), (1, 0.88), (2, 0.85)])
    # A model trained earlier is replaced as a whole.
    (training / "model-best").mkdir(parents=True)
    (training / "model-best" / "stale").write_text("from make all")
    run_pick(campaign, training)
    model = training / "model-best"
    assert not (model / "stale").exists()
    assert (model / "ner_crf" / "model").read_text() == "weights of seed 0"
    assert json.loads((training / "curves.jsonl").read_text())["seed"] == 0
    run = json.loads((model / "meta.json").read_text())["training_run"]
    assert (run["variant"], run["seed"], run["seeds"]) == ("headline", 0, [0, 1, 2])
    assert run["mean_test_f"] == pytest.approx(0.8633, abs=1e-4) and run["max_epochs"] == 12
    # The run's own directory is untouched; nothing is left beside the target.
    assert "training_run" not in json.loads((campaign / "headline-s0" / "model-best" / "meta.json").read_text())
    assert sorted(p.name for p in training.iterdir()) == ["curves.jsonl", "model-best"]


def test_pick_refuses_too_few_seeds_and_a_missing_campaign(tmp_path):
    campaign, training = tmp_path / "accuracy", tmp_path / "training"
    with pytest.raises(SystemExit, match="accuracy.json not found"):
        run_pick(campaign, training)
    write_campaign(campaign, [(0, 0.86), (1, 0.88)])
    with pytest.raises(SystemExit, match=r"2 seed\(s\), fewer than --min-seeds 3"):
        run_pick(campaign, training)
    assert not training.exists()
    run_pick(campaign, training, min_seeds=2)
    assert json.loads((training / "model-best" / "meta.json").read_text())["training_run"]["seed"] == 0
    # Runs of different budgets are no distribution.
    summary = json.loads((campaign / "accuracy.json").read_text())
    summary["runs"][1]["max_epochs"] = 8
    (campaign / "accuracy.json").write_text(json.dumps(summary))
    with pytest.raises(SystemExit, match="different budgets"):
        run_pick(campaign, training, min_seeds=2)
