"""Package a trained pipeline as an installable `en_<name>` and install it into this venv."""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import srsly
import typer


def main(
    model: Path = typer.Argument(..., help="Trained pipeline directory"),
    metrics: Path = typer.Argument(..., help="seqeval_test.json written by scripts/evaluate.py"),
    output_dir: Path = typer.Argument(Path("packages")),
    name: str = typer.Option("secner"),
    version: str = typer.Option("0.1.0"),
    install: bool = typer.Option(True, help="pip install the built wheel"),
) -> None:
    report = json.loads(metrics.read_text())
    meta = srsly.read_json(model / "meta.json")
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
    # Test-set figures from seqeval (entity level, default mode), beside spaCy's dev scores.
    meta.setdefault("performance", {}).update(
        {
            "test_seqeval_p": report["precision"],
            "test_seqeval_r": report["recall"],
            "test_seqeval_f": report["f1"],
            "test_seqeval_per_type": {k: v["f1-score"] for k, v in report["per_type"].items()},
        }
    )
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
    typer.run(main)
