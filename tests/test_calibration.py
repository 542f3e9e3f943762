"""The confidence calibration map: fitting, choosing, applying in the pipe, serialization,
pipelines saved without one, and the project's calibrate script."""

import importlib.util
import json
import random
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin

from conftest import TRAIN_DATA, TRAIN_TEXTS, make_examples
from spacy_secner.calibration import (
    CANDIDATES,
    METHODS,
    apply_calibration,
    calibrate,
    cross_fitted,
    ece_by_name,
    expected_calibration_error,
    fit_calibration,
    method_name,
    name_key,
    reliability,
    select_calibration,
    summarize,
)
from spacy_secner.evaluation import entity_key

ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures"


def overconfident_pairs(n: int = 2000, seed: int = 0, truth=lambda p: p**2):
    """Confidences whose entities are right with probability truth(p) (by default p ** 2:
    over-confident, as the CRF's span probabilities are on DNRTI's dev set)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        p = rng.uniform(0.01, 0.99)
        pairs.append((p, rng.random() < truth(p)))
    return pairs


def too_sharp(p: float) -> float:
    """Right with probability sigmoid(logit(p) / 2): too far from 0.5 on both sides."""
    return 1 / (1 + ((1 - p) / p) ** 0.5)


@pytest.mark.parametrize(
    "method,truth",
    [("temperature", too_sharp), ("platt", too_sharp), ("platt", None), ("isotonic", None)],
    ids=["temperature", "platt-sharp", "platt-squared", "isotonic-squared"],
)
def test_each_map_is_monotone_and_calibrates(method, truth):
    pairs = overconfident_pairs() if truth is None else overconfident_pairs(truth=truth)
    fitted = fit_calibration(pairs, method)
    assert fitted["method"] == method
    json.dumps(fitted)  # stored in the pipe's cfg as JSON
    grid = [i / 100 for i in range(101)]
    mapped = [calibrate(fitted, p) for p in grid]
    assert all(0.0 <= m <= 1.0 for m in mapped)
    assert all(b >= a - 1e-12 for a, b in zip(mapped, mapped[1:]))
    before = expected_calibration_error(pairs)
    after = expected_calibration_error([(calibrate(fitted, c), ok) for c, ok in pairs])
    assert before > 0.08
    assert after < 0.03
    held_out = (
        overconfident_pairs(seed=1) if truth is None else overconfident_pairs(seed=1, truth=truth)
    )
    assert expected_calibration_error([(calibrate(fitted, c), ok) for c, ok in held_out]) < 0.05


def test_temperature_finds_the_scale():
    fitted = fit_calibration(overconfident_pairs(n=20000, truth=too_sharp), "temperature")
    assert fitted["t"] == pytest.approx(2.0, rel=0.1)


def test_selection_prefers_the_simplest_map_within_tolerance():
    pairs = overconfident_pairs()
    fitted, selection = select_calibration(pairs)
    assert set(selection["cv_ece"]) == set(METHODS)
    best = min(selection["cv_ece"].values())
    chosen = selection["method"]
    assert fitted["method"] == chosen
    assert selection["cv_ece"][chosen] <= best + selection["tolerance"]
    # No simpler method (earlier in METHODS) was as good.
    for method in METHODS[: METHODS.index(chosen)]:
        assert selection["cv_ece"][method] > best + selection["tolerance"]


@pytest.mark.parametrize(
    "pairs",
    [[(0.9, True)] * 10, [(0.9, True)] * 200, [(0.4, False)] * 200],
    ids=["few", "all-right", "all-wrong"],
)
def test_no_map_from_too_few_or_one_class(pairs):
    fitted, selection = select_calibration(pairs)
    assert fitted is None
    assert selection["method"] is None and "too few" in selection["reason"]


def test_cross_fitted_confidences_come_from_the_other_folds():
    pairs = overconfident_pairs(n=500)
    held_out = cross_fitted(pairs, "platt", folds=5)
    assert [ok for _, ok in held_out] == [ok for _, ok in pairs]
    # Each fold's map differs a little from the map of all pairs, and fixes the same bias.
    everything = fit_calibration(pairs, "platt")
    in_sample = [calibrate(everything, c) for c, _ in pairs]
    assert [c for c, _ in held_out] != pytest.approx(in_sample, abs=1e-9)
    assert [c for c, _ in held_out] == pytest.approx(in_sample, abs=0.05)


def test_apply_without_a_map_is_the_identity():
    confidences = [[0.3, 0.99], [], [0.5]]
    assert apply_calibration(None, confidences) is confidences
    assert apply_calibration({}, confidences) is confidences
    with pytest.raises(ValueError, match="Unknown calibration method"):
        apply_calibration({"method": "magic"}, confidences)


def test_reliability_bins_count_every_entity():
    pairs = [(0.05, False), (0.95, True), (0.95, False), (0.55, True)]
    table = reliability(pairs, n_bins=10)
    assert sum(b["count"] for b in table["bins"]) == 4
    assert table["ece"] == pytest.approx((0.05 + 2 * 0.45 + 0.45) / 4)


def named_pairs(n: int = 3000, seed: int = 0):
    """Pairs, their name keys and the training names: names the model was trained on (a third of
    the entities) are right about as often as their confidence says (slightly too sharp), new
    names far less often (p ** 4), as on DNRTI's dev set."""
    rng = random.Random(seed)
    names = {name_key(f"APT {i}", "HackOrg") for i in range(50)}
    pairs, keys = [], []
    for i in range(n):
        p = rng.uniform(0.3, 0.99)
        if i % 3 == 0:
            key, truth = (f"apt{rng.randrange(50)}", "HackOrg"), too_sharp(p)
        else:
            key, truth = (f"new{i}", "HackOrg"), p**4
        pairs.append((p, rng.random() < truth))
        keys.append(key)
    return pairs, keys, names


def test_map_by_name_calibrates_known_and_new_names_apart():
    pairs, keys, names = named_pairs()
    known = [key in names for key in keys]
    one_map = fit_calibration(pairs, "platt")
    by_name = fit_calibration(pairs, "platt by name", keys, names)
    assert method_name(by_name) == "platt by name" and method_name(one_map) == "platt"
    assert by_name["known"]["method"] == by_name["new"]["method"] == "platt"
    # Stored in the pipe's cfg as JSON: the names grouped by label.
    assert json.loads(json.dumps(by_name)) == by_name
    assert sorted(by_name["names"]["HackOrg"]) == sorted(text for text, _ in names)
    # Logs and reports show how many names, not the names.
    assert summarize(by_name) == {**by_name, "names": len(names)}
    assert summarize(one_map) is one_map and summarize(None) is None
    with_one = [(calibrate(one_map, c), ok) for c, ok in pairs]
    with_two = [(calibrate(by_name, c, key), ok) for (c, ok), key in zip(pairs, keys)]
    # One map is right on average and wrong within each group; a map per group is right in both.
    assert expected_calibration_error(with_one) < 0.05
    assert ece_by_name(with_one, known)["new"]["ece"] > 0.05
    assert ece_by_name(with_one, known)["known"]["ece"] > 0.1
    assert ece_by_name(with_two, known)["ece"] < 0.03
    assert ece_by_name(with_two, known)["known"]["entities"] == sum(known)
    # Each group's map is monotone and matches fitting the group alone.
    new_only = [pair for pair, k in zip(pairs, known) if not k]
    assert by_name["new"] == fit_calibration(new_only, "platt")
    grid = [i / 50 for i in range(51)]
    for key in (("apt3", "HackOrg"), ("new", "HackOrg"), ("apt3", "Tool")):
        mapped = [calibrate(by_name, p, key) for p in grid]
        assert all(b >= a - 1e-12 for a, b in zip(mapped, mapped[1:]))
    # The label is part of the name: APT 3 as a Tool is a new name.
    assert calibrate(by_name, 0.9, ("apt3", "Tool")) == calibrate(by_name["new"], 0.9)
    assert calibrate(by_name, 0.9, ("apt3", "HackOrg")) == calibrate(by_name["known"], 0.9)


def test_map_by_name_falls_back_to_all_pairs_for_a_small_group():
    pairs, keys, names = named_pairs(n=600)
    # Three known entities only: too few for a map of their own.
    keys = [
        key if key[0].startswith("new") or i < 9 else (f"new-{i}", "HackOrg")
        for i, key in enumerate(keys)
    ]
    fitted = fit_calibration(pairs, "temperature by name", keys, names)
    assert fitted["known"] == fit_calibration(pairs, "temperature")
    assert fitted["new"] != fitted["known"]


def test_selection_by_name_prefers_a_map_per_group_when_the_groups_differ():
    pairs, keys, names = named_pairs()
    fitted, selection = select_calibration(pairs, keys=keys, names=names)
    assert set(selection["cv_ece"]) == set(CANDIDATES)
    assert selection["score"] == "ECE within known and new names"
    assert selection["method"].endswith(" by name")
    assert method_name(fitted) == selection["method"]
    best = min(selection["cv_ece"].values())
    for method in CANDIDATES[: CANDIDATES.index(selection["method"])]:
        assert selection["cv_ece"][method] > best + selection["tolerance"]
    # Without the names the candidates are the plain methods, scored by the plain ECE.
    plain, plain_selection = select_calibration(pairs)
    assert set(plain_selection["cv_ece"]) == set(METHODS)
    assert plain_selection["score"] == "ECE"
    assert plain["method"] in METHODS


def test_map_by_name_needs_the_names():
    pairs, keys, names = named_pairs(n=300)
    fitted = fit_calibration(pairs, "temperature by name", keys, names)
    with pytest.raises(ValueError, match="name key"):
        apply_calibration(fitted, [[0.5]])
    with pytest.raises(ValueError, match="name key"):
        calibrate(fitted, 0.5)
    with pytest.raises(ValueError, match="needs each pair's name key"):
        fit_calibration(pairs, "temperature by name")
    assert apply_calibration(fitted, [[0.9], []], [[("apt1", "HackOrg")], []]) == [
        [calibrate(fitted["known"], 0.9)],
        [],
    ]


def test_cross_fitted_by_name_fits_each_fold_with_the_names():
    pairs, keys, names = named_pairs(n=900)
    held_out = cross_fitted(pairs, "platt by name", keys=keys, names=names)
    everything = fit_calibration(pairs, "platt by name", keys, names)
    in_sample = [calibrate(everything, c, key) for (c, _), key in zip(pairs, keys)]
    assert [c for c, _ in held_out] != pytest.approx(in_sample, abs=1e-9)
    assert [c for c, _ in held_out] == pytest.approx(in_sample, abs=0.1)


def confidences_of(nlp, texts):
    """Every entity's confidence, text after text (the entities themselves are compared apart)."""
    return [e._.confidence for doc in nlp.pipe(texts) for e in doc.ents]


def test_pipe_applies_the_stored_map_and_serializes_it(trained_cnn_nlp, tmp_path):
    trained_cnn_nlp.to_disk(tmp_path / "raw")
    nlp = spacy.load(tmp_path / "raw")
    assert "calibration" not in nlp.get_pipe("ner_crf").cfg
    raw = confidences_of(nlp, TRAIN_TEXTS)
    ents = [[(e.text, e.label_) for e in doc.ents] for doc in nlp.pipe(TRAIN_TEXTS)]
    mapping = {"method": "platt", "a": 0.8, "b": -1.5}
    nlp.get_pipe("ner_crf").cfg["calibration"] = mapping
    expected = [calibrate(mapping, c) for c in raw]
    assert confidences_of(nlp, TRAIN_TEXTS) == pytest.approx(expected)
    nlp.to_disk(tmp_path / "calibrated")
    loaded = spacy.load(tmp_path / "calibrated")
    assert loaded.get_pipe("ner_crf").cfg["calibration"] == mapping
    assert confidences_of(loaded, TRAIN_TEXTS) == pytest.approx(expected)
    # The map moves confidences only: the entities are the same.
    assert [[(e.text, e.label_) for e in doc.ents] for doc in loaded.pipe(TRAIN_TEXTS)] == ents


def test_pipe_applies_a_map_by_name_and_serializes_it(trained_cnn_nlp, tmp_path):
    """Entities whose text and label are a training entity's go through the known names' map,
    the others through the new names' map, before and after saving."""
    nlp = trained_cnn_nlp
    pipe = nlp.get_pipe("ner_crf")
    pipe.cfg.pop("calibration", None)
    raw = [(e._.confidence, entity_key(e)) for doc in nlp.pipe(TRAIN_TEXTS) for e in doc.ents]
    assert len(raw) >= 2
    known = raw[0][1]
    mapping = {
        "method": "by_name",
        "base": "platt",
        "known": {"method": "platt", "a": 1.0, "b": 2.0},
        "new": {"method": "platt", "a": 0.5, "b": -1.0},
        "names": {known[1]: [known[0]]},
    }
    pipe.cfg["calibration"] = mapping
    try:
        expected = [calibrate(mapping["known" if key == known else "new"], c) for c, key in raw]
        assert confidences_of(nlp, TRAIN_TEXTS) == pytest.approx(expected)
        assert any(key != known for _, key in raw)
        nlp.to_disk(tmp_path / "calibrated")
    finally:
        pipe.cfg.pop("calibration")
    loaded = spacy.load(tmp_path / "calibrated")
    assert loaded.get_pipe("ner_crf").cfg["calibration"] == mapping
    assert confidences_of(loaded, TRAIN_TEXTS) == pytest.approx(expected)


def test_pipeline_saved_before_calibration_keeps_its_confidences():
    """A pipeline saved by spacy-secner 0.1.0 has no map in its cfg and gives the very
    confidences it gave then."""
    nlp = spacy.load(FIXTURES / "saved-0.1.0")
    assert "calibration" not in nlp.get_pipe("ner_crf").cfg
    saved = json.loads((FIXTURES / "saved-0.1.0.json").read_text())
    texts = saved["texts"]
    got = [
        [[e.start_char, e.end_char, e.label_, e._.confidence] for e in doc.ents]
        for doc in nlp.pipe(texts)
    ]
    assert [[e[:3] for e in doc] for doc in got] == [[e[:3] for e in doc] for doc in saved["ents"]]
    assert [e[3] for doc in got for e in doc] == pytest.approx(
        [e[3] for doc in saved["ents"] for e in doc], abs=1e-6
    )


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module



def _run_calibrate_script(tmp_path, *, train, fit_on, by_name=True):
    """scripts/calibrate.py on tmp_path's model-best, dev and test (documents of 2 sentences)."""
    load_script("calibrate").main(
        model=tmp_path / "model-best",
        dev=tmp_path / "dev.spacy",
        test=tmp_path / "test.spacy",
        output=tmp_path / "training" / "model-calibrated",
        metrics_dir=tmp_path / "metrics",
        gpu_id=-1,
        sentences_per_doc=2,
        train=train,
        by_name=by_name,
        fit_on=fit_on,
    )


def _write_dev_and_test(nlp, path):
    """dev.spacy: 16 copies of the gold docs, every other one without its entities, so half
    the predictions are wrong whatever their confidence; test.spacy: the gold docs. Returns
    the gold docs."""
    gold = [eg.reference for eg in make_examples(nlp, TRAIN_DATA)]
    dev = []
    for copy in range(16):
        for doc in gold:
            doc = doc.copy()
            if copy % 2:
                doc.ents = []
            dev.append(doc)
    DocBin(docs=dev).to_disk(path / "dev.spacy")
    DocBin(docs=gold).to_disk(path / "test.spacy")
    return gold

def test_calibrate_script_fits_on_dev_and_writes_a_calibrated_copy(trained_cnn_nlp, tmp_path):
    """Dev with right and wrong predictions (half the copies lose their gold entities): the
    script fits a map, writes a pipeline that applies it, and reports before and after."""
    gold = _write_dev_and_test(trained_cnn_nlp, tmp_path)
    # Train: the first two sentences, and a third one that names the Tool of sentence 3.
    other = make_examples(trained_cnn_nlp, [("Stuxnet spread .", [("Stuxnet", "Tool")])])
    DocBin(docs=gold[:2] + [other[0].reference]).to_disk(tmp_path / "train.spacy")
    trained_cnn_nlp.to_disk(tmp_path / "model-best")
    before = (tmp_path / "model-best" / "ner_crf" / "cfg").read_text()
    _run_calibrate_script(tmp_path, train=tmp_path / "train.spacy", fit_on="tokens")
    assert (tmp_path / "model-best" / "ner_crf" / "cfg").read_text() == before
    results = json.loads((tmp_path / "metrics" / "calibration.json").read_text())
    assert method_name(results["map"]) == results["selection"]["method"]
    # With the training entities' names, the candidates include maps by name, scored within
    # known and new names.
    assert set(results["selection"]["cv_ece"]) == set(CANDIDATES)
    assert results["selection"]["score"] == "ECE within known and new names"
    assert results["fit_on"] == "dev"
    # The same dev sentences as raw text are reported beside them.
    assert results["splits"]["dev (raw text)"]["before"]["entities"] > 0
    dev_split = results["splits"]["dev"]
    # Half the predictions are wrong whatever their confidence: the map brings the mean
    # confidence down to about one half.
    assert dev_split["before"]["precision"] == pytest.approx(0.5)
    assert dev_split["after"]["ece"] < dev_split["before"]["ece"]
    held_out = dev_split["after, cross-fitted"]
    assert held_out["entities"] == dev_split["before"]["entities"]
    # The test sentences not in train: the last three of the five.
    new_test = results["splits"]["test (raw text, 3 sentences not in train)"]["before"]
    assert new_test["entities"] == sum(len(ents) for _, ents in TRAIN_DATA[2:])
    # The entities that are not training entities: those of the last three sentences, less
    # Stuxnet, which a training sentence names.
    new_entities = results["splits"]["test (raw text, entities not in train)"]["before"]
    assert new_entities["entities"] == new_test["entities"] - 1
    assert new_entities["precision"] == 1.0
    assert (tmp_path / "metrics" / "reliability.png").stat().st_size > 0
    for stage in ("before", "after", "after, cross-fitted"):
        by_name = dev_split[stage]["by_name"]
        groups = by_name["known"]["entities"] + by_name["new"]["entities"]
        assert groups == dev_split[stage]["entities"]
    calibrated = spacy.load(tmp_path / "training" / "model-calibrated")
    assert calibrated.get_pipe("ner_crf").cfg["calibration"] == results["map"]
    docs = trained_cnn_nlp.pipe(TRAIN_TEXTS)
    raw = [(e._.confidence, entity_key(e)) for doc in docs for e in doc.ents]
    assert confidences_of(calibrated, TRAIN_TEXTS) == pytest.approx(
        [calibrate(results["map"], c, key) for c, key in raw]
    )


def test_calibrate_script_fits_on_dev_raw_text(trained_cnn_nlp, tmp_path):
    """With `fit_on="raw"` the map is fitted on the dev sentences read as raw text, as users run
    the pipeline: that split gets the held-out view, and the written pipeline applies its map."""
    _write_dev_and_test(trained_cnn_nlp, tmp_path)
    trained_cnn_nlp.to_disk(tmp_path / "model-best")
    _run_calibrate_script(tmp_path, train=None, fit_on="raw")
    results = json.loads((tmp_path / "metrics" / "calibration.json").read_text())
    assert results["fit_on"] == "dev (raw text)"
    # Without the training set, no names: the plain methods only.
    assert set(results["selection"]["cv_ece"]) == set(METHODS)
    fit_split = results["splits"]["dev (raw text)"]
    assert fit_split["before"]["precision"] == pytest.approx(0.5, abs=0.05)
    assert fit_split["after"]["ece"] < fit_split["before"]["ece"]
    assert "after, cross-fitted" in fit_split
    assert "after, cross-fitted" not in results["splits"]["dev"]
    calibrated = spacy.load(tmp_path / "training" / "model-calibrated")
    assert calibrated.get_pipe("ner_crf").cfg["calibration"] == results["map"]


def test_calibrate_script_without_maps_by_name_still_reports_the_groups(trained_cnn_nlp, tmp_path):
    """`--no-by-name` with the training set: one map for all entities, chosen by the plain ECE,
    and the ECE within known and new names reported as with maps by name."""
    gold = _write_dev_and_test(trained_cnn_nlp, tmp_path)
    DocBin(docs=gold[:2]).to_disk(tmp_path / "train.spacy")
    trained_cnn_nlp.to_disk(tmp_path / "model-best")
    _run_calibrate_script(tmp_path, train=tmp_path / "train.spacy", fit_on="tokens", by_name=False)
    results = json.loads((tmp_path / "metrics" / "calibration.json").read_text())
    assert set(results["selection"]["cv_ece"]) == set(METHODS)
    assert results["selection"]["score"] == "ECE"
    assert results["map"]["method"] in METHODS
    dev = results["splits"]["dev"]
    for stage in ("before", "after", "after, cross-fitted"):
        groups = dev[stage]["by_name"]
        assert groups["known"]["entities"] > 0 and groups["new"]["entities"] > 0
        assert groups["known"]["entities"] + groups["new"]["entities"] == dev[stage]["entities"]


def test_calibrate_script_failure_leaves_the_previous_outputs(trained_cnn_nlp, tmp_path):
    """The plot cannot be written (its path is a directory): the old calibrated pipeline and
    calibration.json stay as they were, and no temporary file or directory is left beside them."""
    _write_dev_and_test(trained_cnn_nlp, tmp_path)
    trained_cnn_nlp.to_disk(tmp_path / "model-best")
    old_model = tmp_path / "training" / "model-calibrated"
    old_model.mkdir(parents=True)
    (old_model / "marker").write_text("old")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "calibration.json").write_text("old")
    (metrics / "reliability.png").mkdir()
    with pytest.raises(OSError):
        _run_calibrate_script(tmp_path, train=None, fit_on="tokens")
    assert sorted(p.name for p in old_model.iterdir()) == ["marker"]
    assert (metrics / "calibration.json").read_text() == "old"
    assert sorted(p.name for p in old_model.parent.iterdir()) == ["model-calibrated"]
    assert sorted(p.name for p in metrics.iterdir()) == ["calibration.json", "reliability.png"]


def test_calibrate_script_replaces_the_previous_pipeline(trained_cnn_nlp, tmp_path):
    _write_dev_and_test(trained_cnn_nlp, tmp_path)
    trained_cnn_nlp.to_disk(tmp_path / "model-best")
    old_model = tmp_path / "training" / "model-calibrated"
    old_model.mkdir(parents=True)
    (old_model / "marker").write_text("old")
    _run_calibrate_script(tmp_path, train=None, fit_on="tokens")
    assert not (old_model / "marker").exists()
    assert spacy.load(old_model).pipe_names == trained_cnn_nlp.pipe_names
    assert sorted(p.name for p in old_model.parent.iterdir()) == ["model-calibrated"]
