"""`secner annotate --format stix`: bundles per document or per run, valid STIX, stable ids, and
bad input handled as for the other formats (failures listed, nothing lost)."""

import json
import re
from pathlib import Path
from typing import Dict, List

import pytest
import spacy
from conftest import TRAIN_TEXTS
from spacy.language import Language
from spacy.tokens import Doc, Span
from typer.testing import CliRunner

from spacy_secner.cli import app

stix2validator = pytest.importorskip("stix2validator")

runner = CliRunner()
IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")


@Language.component("secner_test_stix_iocs")
def mark_ipv4(doc: Doc) -> Doc:
    """Indicator spans as the `cti_iocs` component gives them: IPv4 addresses only, here."""
    if not Span.has_extension("ioc_value"):
        Span.set_extension("ioc_value", default=None)
    spans = []
    for match in IPV4.finditer(doc.text):
        span = doc.char_span(match.start(), match.end(), label="ipv4")
        if span is not None:
            span._.ioc_value = match.group(0)
            spans.append(span)
    doc.spans["iocs"] = spans
    return doc


@Language.component("secner_test_stix_fail_on_boom")
def fail_on_boom(doc: Doc) -> Doc:
    if "BOOM" in doc.text:
        raise RuntimeError("this doc goes boom")
    return doc


@pytest.fixture(scope="module")
def model_dir(trained_cnn_nlp, tmp_path_factory) -> Path:
    """The trained pipeline, with indicator spans, and a component that fails on "BOOM"."""
    path = tmp_path_factory.mktemp("stix_model")
    trained_cnn_nlp.to_disk(path)
    nlp = spacy.load(path)
    nlp.add_pipe("secner_test_stix_iocs")
    nlp.add_pipe("secner_test_stix_fail_on_boom")
    nlp.to_disk(path)
    return path


@pytest.fixture()
def inputs(tmp_path) -> Path:
    folder = tmp_path / "reports"
    folder.mkdir()
    for i, text in enumerate(TRAIN_TEXTS[:3]):
        (folder / f"{i}.txt").write_text(text, encoding="utf8")
    (folder / "3-ioc.txt").write_text(TRAIN_TEXTS[3] + " It used 203.0.113.5 .", encoding="utf8")
    (folder / "4-boom.txt").write_text("BOOM " + TRAIN_TEXTS[4], encoding="utf8")
    (folder / "5-binary.txt").write_bytes(b"\x00\x01binary")
    (folder / "6-empty.txt").write_text("  \n", encoding="utf8")
    (folder / "7-nothing.txt").write_text("Nothing to see here .", encoding="utf8")
    return folder


def run(model_dir: Path, *args: str):
    return runner.invoke(app, ["annotate", "--model", str(model_dir), "--format", "stix", *args])


def valid(bundle: Dict) -> Dict:
    result = stix2validator.validate_instance(
        bundle, stix2validator.ValidationOptions(version="2.1")
    )
    assert result.is_valid, [str(e) for e in result.errors]
    return bundle


def reports(bundle: Dict) -> List[Dict]:
    return [o for o in bundle.get("objects", []) if o["type"] == "report"]


def failures(path: Path) -> Dict[str, Dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return {Path(r["id"]).name: r for r in records}


def test_one_bundle_per_document_and_failures_listed(model_dir, inputs, tmp_path):
    out, errors = tmp_path / "bundles.jsonl", tmp_path / "errors.jsonl"
    result = run(model_dir, str(inputs), "-o", str(out), "--errors", str(errors))
    assert result.exit_code == 1, result.output  # a document failed
    bundles = [valid(json.loads(line)) for line in out.read_text().splitlines()]
    # One line per annotated document, in input order: the five texts that ran.
    names = ["0.txt", "1.txt", "2.txt", "3-ioc.txt", "7-nothing.txt"]
    assert len(bundles) == len(names)
    for bundle, name in zip(bundles[:4], names):
        (report,) = reports(bundle)
        assert Path(report["name"]).name == name
        refs = {o["id"] for o in bundle["objects"] if o["type"] != "report"}
        assert set(report["object_refs"]) == refs
    assert bundles[4].get("objects", []) == []  # nothing to export: an empty bundle
    assert [o["value"] for o in bundles[3]["objects"] if o["type"] == "ipv4-addr"] == [
        "203.0.113.5"
    ]
    assert not [o for o in bundles[3]["objects"] if o["type"] == "indicator"]
    listed = failures(errors)
    assert set(listed) == {"4-boom.txt", "5-binary.txt", "6-empty.txt"}
    assert listed["6-empty.txt"]["status"] == "skipped"
    assert "pipeline error" in listed["4-boom.txt"]["reason"]


def test_one_bundle_per_run_with_indicators(model_dir, inputs, tmp_path):
    out = tmp_path / "bundle.json"
    result = run(model_dir, str(inputs), "-o", str(out), "--stix-per-run", "--stix-indicators")
    assert result.exit_code == 1, result.output
    bundle = valid(json.loads(out.read_text()))
    assert {Path(r["name"]).name for r in reports(bundle)} == {
        "0.txt",
        "1.txt",
        "2.txt",
        "3-ioc.txt",
    }
    ids = [o["id"] for o in bundle["objects"]]
    assert len(ids) == len(set(ids))
    (indicator,) = [o for o in bundle["objects"] if o["type"] == "indicator"]
    assert indicator["pattern"] == "[ipv4-addr:value = '203.0.113.5']"
    (link,) = [o for o in bundle["objects"] if o["type"] == "relationship"]
    assert link["relationship_type"] == "based-on" and link["source_ref"] == indicator["id"]


def test_ids_are_the_same_in_two_runs(model_dir, inputs, tmp_path):
    outputs = []
    for n in range(2):
        out = tmp_path / f"run{n}.jsonl"
        run(model_dir, str(inputs), "-o", str(out))
        outputs.append([json.loads(line) for line in out.read_text().splitlines()])
    first, second = ([[o["id"] for o in b.get("objects", [])] for b in run_] for run_ in outputs)
    assert first == second
    assert [b["id"] for b in outputs[0]] == [b["id"] for b in outputs[1]]


def test_a_document_whose_export_fails_is_listed_and_the_rest_written(
    model_dir, inputs, tmp_path, monkeypatch
):
    from spacy_secner.stix import export

    original = export.build_objects

    def fail_for_sofacy(found, **kwargs):
        if any(e.props.get("name") == "Sofacy" for e in found.entries.values()):
            raise ValueError("cannot export this one")
        return original(found, **kwargs)

    monkeypatch.setattr(export, "build_objects", fail_for_sofacy)
    out, errors = tmp_path / "bundles.jsonl", tmp_path / "errors.jsonl"
    result = run(model_dir, str(inputs), "-o", str(out), "--errors", str(errors))
    assert result.exit_code == 1
    listed = failures(errors)
    assert "STIX export failed" in listed["3-ioc.txt"]["reason"]
    bundles = [json.loads(line) for line in out.read_text().splitlines()]
    names = [Path(r["name"]).name for b in bundles for r in reports(b)]
    assert names == ["0.txt", "1.txt", "2.txt"]
    assert "Sofacy" not in out.read_text()


def test_stix_options_need_the_stix_format(model_dir, inputs):
    result = runner.invoke(
        app, ["annotate", "--model", str(model_dir), str(inputs), "--stix-per-run"]
    )
    assert result.exit_code == 2
    assert "--format stix" in result.output


def test_output_is_replaced_only_when_the_run_completes(model_dir, inputs, tmp_path, monkeypatch):
    from spacy_secner.cli import writers

    out = tmp_path / "out" / "bundle.json"
    out.parent.mkdir()
    out.write_text("previous run\n")

    def interrupt(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(writers.StixWriter, "close", interrupt)
    result = run(model_dir, str(inputs), "-o", str(out), "--stix-per-run")
    assert result.exit_code == 130
    assert out.read_text() == "previous run\n"
    assert [p.name for p in out.parent.iterdir()] == ["bundle.json"]


def test_an_object_in_several_documents_is_a_new_version_in_each(model_dir, tmp_path):
    """Per-document bundles repeat an object its documents share, each with that document's
    properties: `modified` (STIX's version of an object) differs, `created` does not."""
    folder = tmp_path / "reports"
    folder.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (folder / name).write_text("It beaconed to 203.0.113.5 .", encoding="utf8")
    out = tmp_path / "bundles.jsonl"
    result = run(model_dir, str(folder), "-o", str(out), "--stix-indicators")
    assert result.exit_code == 0, result.output
    bundles = [valid(json.loads(line)) for line in out.read_text().splitlines()]
    indicators = [o for b in bundles for o in b["objects"] if o["type"] == "indicator"]
    assert len(indicators) == 3 and len({o["id"] for o in indicators}) == 1
    assert len({o["created"] for o in indicators}) == 1
    stamps = [o["modified"] for o in indicators]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    assert all(o["created"] < o["modified"] for o in indicators)
    # The same text is the same report: three versions of it, named after each file.
    versions = [(r["id"], r["modified"], Path(r["name"]).name) for b in bundles for r in reports(b)]
    assert len({v[0] for v in versions}) == 1
    assert [v[1] for v in versions] == stamps
    assert [v[2] for v in versions] == ["a.txt", "b.txt", "c.txt"]
