"""Saving and loading: bytes, disk, a fresh process without the package imported, and damaged
files."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import spacy
import srsly
from conftest import (
    GOLD_ENTS,
    TRAIN_TEXTS,
    ents_of,
    load_in_fresh_process,
    run_isolated,
    make_cnn_nlp,
    make_examples,
    offsets_of,
    train_until_gold,
)
from spacy.language import Language

TEXTS = TRAIN_TEXTS + ["Turla used Snake against the Foreign Office in 2019 .", "", "APT28"]


@pytest.fixture(scope="module")
def saved_cnn_dir(trained_cnn_nlp, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "cnn"
    trained_cnn_nlp.to_disk(path)
    return path


def assert_same_output(nlp_a: Language, nlp_b: Language) -> None:
    """Same entities and the same emission scores for every text."""
    docs_a = list(nlp_a.pipe(TEXTS))
    docs_b = list(nlp_b.pipe(TEXTS))
    assert [offsets_of(d) for d in docs_a] == [offsets_of(d) for d in docs_b]
    assert [ents_of(d) for d in docs_a[:5]] == GOLD_ENTS
    nonempty = [i for i, d in enumerate(docs_a) if len(d)]
    scores_a = nlp_a.get_pipe("ner_crf").model.predict([docs_a[i] for i in nonempty])
    scores_b = nlp_b.get_pipe("ner_crf").model.predict([docs_b[i] for i in nonempty])
    for a, b in zip(scores_a, scores_b):
        numpy.testing.assert_array_equal(a, b)


def test_to_bytes_from_bytes(trained_nlp):
    data = trained_nlp.to_bytes()
    loaded = spacy.util.load_model_from_config(trained_nlp.config, validate=True)
    assert not loaded.get_pipe("ner_crf").labels
    loaded.from_bytes(data)
    ner = loaded.get_pipe("ner_crf")
    assert ner.labels == trained_nlp.get_pipe("ner_crf").labels
    assert ner.tags == trained_nlp.get_pipe("ner_crf").tags
    assert_same_output(trained_nlp, loaded)


def test_pipe_to_bytes_from_bytes_alone(trained_cnn_nlp):
    """The pipe sizes its CRF from the saved labels before it reads the weights."""
    data = trained_cnn_nlp.get_pipe("ner_crf").to_bytes()
    nlp = make_cnn_nlp(seed=123)
    nlp.get_pipe("ner_crf").from_bytes(data)
    assert_same_output(trained_cnn_nlp, nlp)


def test_pickled_pipeline_gives_the_same_output(trained_nlp):
    """spaCy pickles pipelines (copies, `n_process` where processes are spawned): the CRF's
    constraints come back with its scores."""
    import pickle

    from torch.nn.utils import parametrize

    loaded = pickle.loads(pickle.dumps(trained_nlp))
    crf = loaded.get_pipe("ner_crf").model.get_ref("decoder").shims[0]._model.crf
    assert all(
        parametrize.is_parametrized(crf, name)
        for name in ("start_transitions", "transitions", "end_transitions")
    )
    assert_same_output(trained_nlp, loaded)
    docs_a, docs_b = list(trained_nlp.pipe(TEXTS[:5])), list(loaded.pipe(TEXTS[:5]))
    assert [[e._.confidence for e in d.ents] for d in docs_a] == [
        [e._.confidence for e in d.ents] for d in docs_b
    ]


def test_spawned_processes_give_the_same_output(saved_cnn_dir):
    """`nlp.pipe(n_process=2)` where processes are spawned (macOS, Windows; Linux from Python
    3.14): the pipeline is pickled into each of them."""
    script = f"""
import multiprocessing, spacy
if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    nlp = spacy.load({str(saved_cnn_dir)!r})
    texts = {TEXTS!r}
    one = [[(e.start, e.end, e.label_) for e in d.ents] for d in nlp.pipe(texts)]
    two = [[(e.start, e.end, e.label_) for e in d.ents] for d in nlp.pipe(texts, n_process=2)]
    assert one == two and any(one), (one, two)
    print("same")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "same", proc.stderr[-3000:]


def test_to_disk_spacy_load_same_process(trained_nlp, tmp_path):
    trained_nlp.to_disk(tmp_path / "pipeline")
    assert (tmp_path / "pipeline" / "ner_crf" / "model").stat().st_size > 0
    cfg = srsly.read_json(tmp_path / "pipeline" / "ner_crf" / "cfg")
    assert cfg["labels"] == list(trained_nlp.get_pipe("ner_crf").labels)
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.pipe_names == trained_nlp.pipe_names
    assert_same_output(trained_nlp, loaded)
    # A loaded pipeline saves and loads again unchanged.
    loaded.to_disk(tmp_path / "again")
    assert_same_output(trained_nlp, spacy.load(tmp_path / "again"))


def test_spacy_load_in_fresh_process_without_import(trained_nlp, tmp_path):
    trained_nlp.to_disk(tmp_path / "pipeline")
    expected = [[list(e) for e in offsets_of(doc)] for doc in trained_nlp.pipe(TEXTS)]
    result = load_in_fresh_process(tmp_path / "pipeline", TEXTS, tmp_path)
    assert result["pipe_names"] == trained_nlp.pipe_names
    assert result["ents"] == expected
    assert any(result["ents"])


def test_overwrite_setting_is_saved(tmp_path):
    nlp = make_cnn_nlp(overwrite=True)
    nlp.initialize(lambda: make_examples(nlp))
    nlp.to_disk(tmp_path)
    loaded = spacy.load(tmp_path)
    assert loaded.config["components"]["ner_crf"]["overwrite"] is True
    assert loaded.get_pipe("ner_crf").cfg["overwrite"] is True


def test_trained_pipe_can_be_trained_further_after_loading(saved_cnn_dir, tmp_path):
    nlp = spacy.load(saved_cnn_dir)
    optimizer = nlp.resume_training()
    losses = {}
    for _ in range(3):
        nlp.update(make_examples(nlp), sgd=optimizer, losses=losses)
    assert 0 < losses["ner_crf"] < 10
    assert [ents_of(nlp(t)) for t in TRAIN_TEXTS] == GOLD_ENTS


def _copy(saved: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(saved, target)
    return target


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:100], id="header-only"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b"\x00garbage\xff" * 1000, id="garbage"),
        pytest.param(lambda b: b + b"trailing", id="trailing-bytes"),
        pytest.param(lambda b: b"\x01", id="msgpack-int"),
    ],
)
def test_corrupt_model_file_gives_clear_error(saved_cnn_dir, tmp_path, damage):
    path = _copy(saved_cnn_dir, tmp_path)
    model_file = path / "ner_crf" / "model"
    model_file.write_bytes(damage(model_file.read_bytes()))
    with pytest.raises(ValueError, match=r"Could not load the 'ner_crf' model weights from .*model"):
        spacy.load(path)


def test_corrupt_bytes_give_clear_error(trained_cnn_nlp):
    msg = srsly.msgpack_loads(trained_cnn_nlp.get_pipe("ner_crf").to_bytes())
    msg["model"] = msg["model"][:-1000]
    ner = make_cnn_nlp().get_pipe("ner_crf")
    with pytest.raises(ValueError, match="Could not load the 'ner_crf' model weights from bytes"):
        ner.from_bytes(srsly.msgpack_dumps(msg))


def test_weights_for_another_label_set_give_clear_error(saved_cnn_dir, tmp_path):
    path = _copy(saved_cnn_dir, tmp_path)
    cfg = srsly.read_json(path / "ner_crf" / "cfg")
    cfg["labels"] = cfg["labels"][:2]
    srsly.write_json(path / "ner_crf" / "cfg", cfg)
    with pytest.raises(ValueError, match="Could not load the 'ner_crf' model weights"):
        spacy.load(path)


@pytest.mark.parametrize("key", ["labels", "width"])
def test_cfg_without_labels_or_width_gives_clear_error(saved_cnn_dir, tmp_path, key):
    path = _copy(saved_cnn_dir, tmp_path)
    cfg = srsly.read_json(path / "ner_crf" / "cfg")
    del cfg[key]
    srsly.write_json(path / "ner_crf" / "cfg", cfg)
    with pytest.raises(ValueError, match="has no labels or input width in its cfg"):
        spacy.load(path)


def test_missing_model_file_gives_clear_error(saved_cnn_dir, tmp_path):
    path = _copy(saved_cnn_dir, tmp_path)
    (path / "ner_crf" / "model").unlink()
    with pytest.raises(ValueError, match="'ner_crf' has no saved model at"):
        spacy.load(path)


def test_fresh_training_run_is_reproducible():
    """Same seed, same data: same losses, so the saved-vs-loaded comparisons are meaningful."""
    runs = []
    for _ in range(2):
        nlp = make_cnn_nlp(seed=7)
        runs.append(train_until_gold(nlp, make_examples(nlp), max_steps=10, check_every=10))
    assert runs[0]["losses"] == pytest.approx(runs[1]["losses"], rel=1e-5)


def test_pipeline_saved_by_0_1_0_loads_with_the_same_output(tmp_path):
    """A pipeline of en_secner's shape saved by spacy-secner 0.1.0 (tests/fixtures) loads in a
    fresh process through the entry points and gives the entities and confidences it gave then."""
    fixtures = Path(__file__).parent / "fixtures"
    recorded = srsly.read_json(fixtures / "saved-0.1.0.json")
    script = """
import json, sys
import spacy
nlp = spacy.load(sys.argv[1])
texts = json.loads(sys.argv[2])
ents = [[[e.start_char, e.end_char, e.label_, e._.confidence] for e in doc.ents] for doc in nlp.pipe(texts)]
print(json.dumps({"ents": ents, "pipe_names": nlp.pipe_names}))
"""
    proc = run_isolated([script, str(fixtures / "saved-0.1.0"), srsly.json_dumps(recorded["texts"])], tmp_path)
    result = srsly.json_loads(proc.stdout.strip().splitlines()[-1])
    assert result["pipe_names"] == ["sentencizer", "transformer", "ner_crf"]
    assert any(result["ents"]), "the recorded pipeline finds entities"
    for got, expected in zip(result["ents"], recorded["ents"], strict=True):
        assert [e[:3] for e in got] == [e[:3] for e in expected]
        assert [e[3] for e in got] == pytest.approx([e[3] for e in expected], abs=1e-6)
