"""Package a trained pipeline as an installable `en_<name>` and install it into this venv."""
import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict

import srsly
import typer


def package_meta(meta: Dict[str, Any], report: Dict[str, Any], name: str, version: str) -> Dict[str, Any]:
    """The package's meta: the trained pipeline's, with name, description, sources and the
    seqeval test figures; a run chosen by `bench_accuracy.py pick` says so in the description."""
    meta = copy.deepcopy(meta)
    meta.update(
        {
            "name": name,
            "version": version,
            "description": "Named entities in cyber-threat-intelligence text (13 DNRTI types): "
            "Transformer -> BiLSTM -> CRF (spacy-secner)",
            "license": "MIT",
            "sources": [
                {
                    "name": "DNRTI",
                    "url": "https://github.com/SCreaMxp/DNRTI-A-Large-scale-Dataset-for-Named-Entity-Recognition-in-Threat-Intelligence",
                    "author": "Wang et al., TrustCom 2020",
                }
            ],
        }
    )
    run = meta.get("training_run")
    if run:
        # Set by `bench_accuracy.py pick`: which of the harness's runs this is.
        std = f" +- {run['std_test_f']:.4f}" if run.get("std_test_f") is not None else ""
        # Runs picked before the choice moved to dev say nothing: theirs was the test F1.
        selection = run.get("selection", "closest to the mean test F1 over the variant's seeds")
        meta["description"] += (
            f". Seed {run['seed']} of the {run['variant']} config, the run {selection} "
            f"{run['seeds']} (mean test F1 {run['mean_test_f']:.4f}{std})"
        )
    # Test-set figures from seqeval (entity level, default mode), beside spaCy's dev scores.
    meta.setdefault("performance", {}).update(
        {
            "test_seqeval_p": report["precision"],
            "test_seqeval_r": report["recall"],
            "test_seqeval_f": report["f1"],
            "test_seqeval_per_type": {k: v["f1-score"] for k, v in report["per_type"].items()},
        }
    )
    return meta


def main(
    model: Path = typer.Argument(..., help="Trained pipeline directory"),
    metrics: Path = typer.Argument(..., help="seqeval_test.json written by scripts/evaluate.py"),
    output_dir: Path = typer.Argument(Path("packages")),
    name: str = typer.Option("secner"),
    version: str = typer.Option("0.1.0"),
    install: bool = typer.Option(True, help="pip install the built wheel"),
) -> None:
    report = json.loads(metrics.read_text())
    meta = package_meta(srsly.read_json(model / "meta.json"), report, name, version)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        meta_path = Path(tmp) / "meta.json"
        srsly.write_json(meta_path, meta)
        cmd = [sys.executable, "-m", "spacy", "package", str(model), str(output_dir),
               "--meta-path", str(meta_path), "--name", name, "--version", version,
               "--build", "wheel", "--force"]
        subprocess.run(cmd, check=True)
    wheel = next((output_dir / f"en_{name}-{version}" / "dist").glob("*.whl"))
    if install:
        # The requirements (spaCy, spacy-secner, ...) are already pinned in this environment.
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall",
                        "-q", str(wheel)], check=True)
    print(f"Built {wheel}")


if __name__ == "__main__":
    # A plain traceback: typer's pretty one prints every local variable of every frame.
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
