"""The project's configs and project.yml are valid as shipped."""
from pathlib import Path

import pytest
from spacy import util
from spacy.schemas import ConfigSchemaTraining
from weasel.util import load_project_config

ROOT = Path(__file__).parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.cfg"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_validates(path):
    config = util.load_config(path)
    nlp = util.load_model_from_config(config, auto_fill=False, validate=True)
    assert nlp.pipe_names == ["sentencizer", "transformer", "ner_crf", "cti_iocs"]
    # The transformer reads each sentence on its own, as in training on DNRTI's sentences.
    get_spans = config["components"]["transformer"]["model"]["get_spans"]
    assert get_spans["@span_getters"] == "spacy-secner.sent_strided_spans.v1"
    # Only entities choose the best model, not the sentencizer's scores.
    weights = nlp.config["training"]["score_weights"]
    assert weights["ents_f"] == 1.0 and weights.get("sents_f") is None
    training = util.registry.resolve(
        nlp.config.interpolate()["training"], schema=ConfigSchemaTraining, validate=True
    )
    assert training["logger"] is not None
    # Early stopping counts whole evaluations.
    assert config["training"]["patience"] % config["training"]["eval_frequency"] == 0
    # A budget in steps ends with an evaluation, so the last epoch can become model-best.
    assert config["training"]["max_steps"] % config["training"]["eval_frequency"] == 0
    assert config["corpora"]["train"]["gold_preproc"] is True


# `convert`'s deps in the DNRTI directory, as project.yml names them before interpolation.
DNRTI_DEP = "${env.dnrti_dir}/"


def test_project_yml_is_valid_and_all_covers_the_workflow():
    project = load_project_config(ROOT, interpolate=False)
    assert project["workflows"]["all"] == ["convert", "train", "calibrate", "evaluate", "plot", "package"]
    commands = {c["name"]: c for c in project["commands"]}
    # Every dep is an output of another command, an asset, or a file of the repository.
    made = {out for c in commands.values() for out in c.get("outputs", []) + c.get("outputs_no_cache", [])}
    made |= {asset["dest"] for asset in project["assets"]}
    for command in commands.values():
        for dep in command.get("deps", []):
            if dep not in made and not dep.startswith(DNRTI_DEP):
                assert (ROOT / dep.replace("${vars.config}", "minilm_cpu")).exists(), dep
        # The scripts a command runs are among its deps.
        for line in command["script"]:
            for word in line.split():
                if word.endswith(".py"):
                    assert word in command.get("deps", []), (command["name"], word)
    assert project["assets"][0]["checksum"] == "2ec4a6f2a6aab1b60ca694e9ac5bc074"


def load_package_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("package_script", ROOT / "scripts" / "package.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_package_meta_names_the_shipped_run():
    from spacy.schemas import ModelMetaSchema, validate

    package = load_package_script()
    report = {"precision": 0.87, "recall": 0.86, "f1": 0.865, "per_type": {"Tool": {"f1-score": 0.9}}}
    trained = {"lang": "en", "name": "pipeline", "version": "0.0.0", "performance": {"ents_f": 0.83}}
    meta = package.package_meta(trained, report, "secner", "0.1.0")
    assert meta["performance"]["test_seqeval_f"] == 0.865 and meta["performance"]["ents_f"] == 0.83
    assert "training_run" not in meta and "closest to the mean" not in meta["description"]
    assert "test_seqeval_f" not in trained["performance"]  # the trained meta is left alone
    run = {"variant": "headline", "seed": 2, "seeds": [0, 1, 2], "mean_test_f": 0.8712,
           "std_test_f": 0.0041, "test_f": 0.8709,
           "selection": "closest to the mean dev F1 over the variant's seeds"}
    meta = package.package_meta({**trained, "training_run": run}, report, "secner", "0.1.0")
    assert meta["training_run"] == run
    assert meta["description"].endswith(
        "Seed 2 of the headline config, the run closest to the mean dev F1 over the variant's "
        "seeds [0, 1, 2] (mean test F1 0.8712 +- 0.0041)")
    # `spacy package` validates the meta: the extra key passes.
    assert validate(ModelMetaSchema, meta) == []


def test_dataset_files_are_converts_deps():
    """A changed dataset reruns `convert` (and so the workflow after it)."""
    project = load_project_config(ROOT, interpolate=False)
    (convert,) = [c for c in project["commands"] if c["name"] == "convert"]
    assert {f"{DNRTI_DEP}{name}" for name in ("train.txt", "valid.txt", "test.txt")} <= set(
        convert["deps"]
    )


@pytest.mark.parametrize("name", ["train", "calibrate"])
def test_the_pipelines_code_is_among_the_deps(name):
    """Every module of the package that building the default pipeline imports is a dep of the
    commands whose output it makes, so `spacy project run` redoes them when it changes."""
    import json
    import subprocess
    import sys

    script = (
        "import json, sys, spacy\n"
        "config = spacy.util.load_config('configs/minilm_cpu.cfg')\n"
        "spacy.util.load_model_from_config(config, auto_fill=True, validate=True)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('spacy_secner'))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    imported = json.loads(proc.stdout.splitlines()[-1])
    project = load_project_config(ROOT, interpolate=False)
    (command,) = [c for c in project["commands"] if c["name"] == name]
    deps = set(command["deps"])
    for module in imported:
        path = module.replace(".", "/")
        file = f"{path}/__init__.py" if (ROOT / path).is_dir() else f"{path}.py"
        covered = file in deps or any(file.startswith(dep + "/") for dep in deps)
        assert covered, (name, file)
