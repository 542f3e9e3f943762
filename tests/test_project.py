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
    assert config["corpora"]["train"]["gold_preproc"] is True


def test_project_yml_is_valid_and_all_covers_the_workflow():
    project = load_project_config(ROOT)
    assert project["workflows"]["all"] == ["convert", "train", "calibrate", "evaluate", "plot", "package"]
    commands = {c["name"]: c for c in project["commands"]}
    # Every dep is an output of another command, an asset, or a file of the repository.
    made = {out for c in commands.values() for out in c.get("outputs", []) + c.get("outputs_no_cache", [])}
    made |= {asset["dest"] for asset in project["assets"]}
    for command in commands.values():
        for dep in command.get("deps", []):
            if dep not in made:
                assert (ROOT / dep.replace("${vars.config}", "minilm_cpu")).exists(), dep
        # The scripts a command runs are among its deps.
        for line in command["script"]:
            for word in line.split():
                if word.endswith(".py"):
                    assert word in command.get("deps", []), (command["name"], word)
    assert project["assets"][0]["checksum"] == "2ec4a6f2a6aab1b60ca694e9ac5bc074"
