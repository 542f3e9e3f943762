"""STIX 2.1 export: every bundle validates, the mapping table of docs/stix.md is the code's,
ids are deterministic, confidences are the calibrated ones on the 0-100 scale."""

import importlib
import json
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
import spacy
from spacy.tokens import Doc, Span

from conftest import TRAIN_TEXTS

stix2 = pytest.importorskip("stix2")
stix2validator = pytest.importorskip("stix2validator")

from spacy_secner.stix import ENTITY_TYPES, IOC_TYPES, doc_to_bundle, docs_to_bundle  # noqa: E402
from spacy_secner.stix import mapping  # noqa: E402
from spacy_secner.stix.export import stix_confidence  # noqa: E402

ROOT = Path(__file__).parent.parent
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
T1 = datetime(2027, 6, 7, 8, 9, 10, tzinfo=timezone.utc)

if not Span.has_extension("ioc_value"):
    try:  # the module that owns the extension, where it exists
        importlib.import_module("spacy_secner.iocs")
    except ImportError:
        pass
if not Span.has_extension("ioc_value"):
    Span.set_extension("ioc_value", default=None)


def validate(bundle) -> dict:
    """The bundle as JSON data, after checking it with the STIX validator: no errors (warnings
    are allowed: deterministic ids are not UUIDv4, which the validator recommends)."""
    data = json.loads(bundle.serialize())
    result = stix2validator.validate_instance(data, stix2validator.ValidationOptions(version="2.1"))
    assert result.is_valid, [str(e) for e in result.errors]
    return data


def make_doc(
    text: str,
    ents: List[Tuple[str, str, Optional[float]]],
    iocs: List[Tuple[str, str, Optional[str]]] = (),
) -> Doc:
    """A doc of `text` with entities (phrase, label, confidence) and indicator spans (phrase,
    label, refanged value), each found at its first occurrence."""
    doc = spacy.blank("en")(text)

    def span(phrase: str, label: str) -> Span:
        start = text.index(phrase)
        found = doc.char_span(start, start + len(phrase), label=label)
        assert found is not None, phrase
        return found

    spans = []
    for phrase, label, confidence in ents:
        ent = span(phrase, label)
        ent._.confidence = confidence
        spans.append(ent)
    doc.ents = spans
    ioc_spans = []
    for phrase, label, value in iocs:
        ioc = span(phrase, label)
        ioc._.ioc_value = value
        ioc_spans.append(ioc)
    if iocs:
        doc.spans["iocs"] = ioc_spans
    return doc


REPORT = (
    "APT28 used X-Agent and Mimikatz against banks and the military in Russia and Southeast "
    "Asia in 2016 . The attackers sent spear-phishing emails exploiting CVE-2017-0199 and "
    "dropped evil.exe . Later , APT28 returned with a zero-day exploit . FireEye and the "
    "group reported it to Microsoft ."
)
REPORT_ENTS = [
    ("APT28", "HackOrg", 0.91),
    ("X-Agent", "Tool", 0.8),
    ("Mimikatz", "Tool", 0.7),
    ("banks", "Idus", 0.66),
    ("military", "Idus", 0.5),
    ("Russia", "Area", 0.97),
    ("Southeast Asia", "Area", 0.88),
    ("2016", "Time", 0.99),
    ("attackers", "HackOrg", 0.6),
    ("spear-phishing emails", "Way", 0.75),
    ("CVE-2017-0199", "Exp", 0.93),
    ("evil.exe", "SamFile", 0.64),
    ("zero-day exploit", "Exp", 0.55),
    ("FireEye", "SecTeam", 0.95),
    ("group", "HackOrg", 0.42),
    ("Microsoft", "Org", 0.83),
]


def by_type(data: dict, stix_type: str) -> List[dict]:
    return [o for o in data.get("objects", []) if o["type"] == stix_type]


def names(data: dict, stix_type: str) -> List[str]:
    return [o["name"] for o in by_type(data, stix_type)]


def test_report_maps_entities_as_documented():
    doc = make_doc(REPORT, REPORT_ENTS)
    # A second mention of APT28 at a lower confidence: one object, the highest confidence.
    start = REPORT.index("APT28 returned")
    later = doc.char_span(start, start + 5, label="HackOrg")
    later._.confidence = 0.4
    doc.ents = sorted([*doc.ents, later], key=lambda e: e.start)
    assert [e.text for e in doc.ents].count("APT28") == 2
    data = validate(doc_to_bundle(doc, name="apt28.txt", timestamp=T0))
    assert names(data, "intrusion-set") == ["APT28"]
    assert by_type(data, "intrusion-set")[0]["confidence"] == 91
    assert names(data, "malware") == ["X-Agent"]
    assert by_type(data, "malware")[0]["is_family"] is True
    assert names(data, "tool") == ["Mimikatz"]
    identities = {o["name"]: o for o in by_type(data, "identity")}
    assert identities["banks"]["identity_class"] == "class"
    assert identities["banks"]["sectors"] == ["financial-services"]
    assert identities["military"]["sectors"] == ["defense"]
    assert identities["FireEye"]["identity_class"] == "organization"
    assert identities["Microsoft"]["identity_class"] == "organization"
    locations = {o.get("country") or o.get("region"): o for o in by_type(data, "location")}
    assert set(locations) == {"RU", "south-eastern-asia"}
    assert locations["RU"]["confidence"] == 97
    (vulnerability,) = by_type(data, "vulnerability")
    assert vulnerability["name"] == "CVE-2017-0199"
    assert vulnerability["external_references"] == [
        {"source_name": "cve", "external_id": "CVE-2017-0199"}
    ]
    (technique,) = by_type(data, "attack-pattern")
    assert technique["name"] == "Phishing"
    assert technique["external_references"][0]["external_id"] == "T1566"
    assert [o["name"] for o in by_type(data, "file")] == ["evil.exe"]
    (report,) = by_type(data, "report")
    others = [o["id"] for o in data["objects"] if o["type"] != "report"]
    assert sorted(report["object_refs"]) == sorted(others)
    assert report["name"] == "apt28.txt"
    # What is no object is in the description: times, generic mentions, exploits without id.
    description = report["description"]
    for phrase in ("Time: 2016", "attackers", "group", "zero-day exploit"):
        assert phrase in description
    assert "FireEye" not in description


def test_confidence_is_calibrated_confidence_on_0_to_100():
    assert [stix_confidence(c) for c in (0.0, 0.004, 0.5, 0.996, 1.0, None)] == [
        0,
        0,
        50,
        100,
        100,
        None,
    ]
    doc = make_doc(REPORT, REPORT_ENTS)
    data = validate(doc_to_bundle(doc, timestamp=T0))
    expected = {phrase: round(100 * confidence) for phrase, _, confidence in REPORT_ENTS}
    # Domain objects named as their entity's text carry its confidence on 0-100 (observables,
    # such as the file evil.exe, have no confidence property in STIX).
    named = {o["name"]: o.get("confidence") for o in data["objects"] if o.get("name") in expected}
    assert named == {
        **{name: expected[name] for name in ("APT28", "X-Agent", "Mimikatz", "banks", "military",
                                             "CVE-2017-0199", "FireEye", "Microsoft")},
        "evil.exe": None,
    }
    # The others (locations, the technique) keep their entity's confidence too.
    assert sorted(o["confidence"] for o in by_type(data, "location")) == [88, 97]
    assert [o["confidence"] for o in by_type(data, "attack-pattern")] == [75]
    assert all(0 <= o["confidence"] <= 100 for o in data["objects"] if "confidence" in o)


def test_entities_without_confidence_give_objects_without_one():
    doc = make_doc("APT28 hit NATO .", [("APT28", "HackOrg", None), ("NATO", "Org", None)])
    data = validate(doc_to_bundle(doc, timestamp=T0))
    assert all("confidence" not in o for o in data["objects"])
    assert names(data, "intrusion-set") == ["APT28"]


def test_ids_are_stable_and_timestamps_are_not_part_of_them():
    first = validate(doc_to_bundle(make_doc(REPORT, REPORT_ENTS), timestamp=T0))
    again = validate(doc_to_bundle(make_doc(REPORT, REPORT_ENTS), timestamp=T1))
    assert [o["id"] for o in first["objects"]] == [o["id"] for o in again["objects"]]
    assert first["id"] == again["id"]
    assert first["objects"][0]["created"] != again["objects"][0]["created"]
    # Case and spacing do not make another object; the report follows the text.
    other = validate(doc_to_bundle(make_doc("apt28  was here .", [("apt28", "HackOrg", 0.9)])))
    apt28 = by_type(first, "intrusion-set")[0]["id"]
    assert by_type(other, "intrusion-set")[0]["id"] == apt28
    assert by_type(other, "report")[0]["id"] != by_type(first, "report")[0]["id"]


def test_ids_follow_the_documented_scheme():
    """UUIDv5 in the STIX namespace of the canonical JSON of the identifying properties: only
    the name (and class) enter, nothing process-dependent (hash seeds, random UUIDs)."""
    namespace = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")
    doc = make_doc(
        "APT28 hit FireEye from 203.0.113.5 .",
        [("APT28", "HackOrg", 0.9), ("FireEye", "SecTeam", 0.8)],
        [("203.0.113.5", "ipv4", "203.0.113.5")],
    )
    data = validate(doc_to_bundle(doc))
    assert by_type(data, "intrusion-set")[0]["id"] == "intrusion-set--" + str(
        uuid.uuid5(namespace, '{"name":"apt28"}')
    )
    assert by_type(data, "identity")[0]["id"] == "identity--" + str(
        uuid.uuid5(namespace, '{"identity_class":"organization","name":"fireeye"}')
    )
    # Observables: the specification's own rule (here: the value).
    assert by_type(data, "ipv4-addr")[0]["id"] == "ipv4-addr--" + str(
        uuid.uuid5(namespace, '{"value":"203.0.113.5"}')
    )


def test_aliases_are_not_merged():
    doc = make_doc(
        "APT28 , also known as Sofacy , used NetTraveler and NetTraveler Trojan .",
        [
            ("APT28", "HackOrg", 0.9),
            ("Sofacy", "HackOrg", 0.9),
            ("NetTraveler", "Tool", 0.9),
            ("NetTraveler Trojan", "Tool", 0.9),
        ],
    )
    data = validate(doc_to_bundle(doc))
    assert names(data, "intrusion-set") == ["APT28", "Sofacy"]
    assert names(data, "malware") == ["NetTraveler", "NetTraveler Trojan"]


def test_areas_resolve_to_countries_and_regions_only():
    text = (
        "Targets in Iranian , U.S. and South Korea firms , Europe , the Middle East and "
        "Springfield ."
    )
    ents = [
        (p, "Area", 0.9)
        for p in ("Iranian", "U.S.", "South Korea", "Europe", "Middle East", "Springfield")
    ]
    data = validate(doc_to_bundle(make_doc(text, ents)))
    where = sorted(o.get("country") or o.get("region") for o in by_type(data, "location"))
    assert where == ["IR", "KR", "US", "europe"]
    description = by_type(data, "report")[0]["description"]
    assert "Middle East" in description and "Springfield" in description


def test_iocs_become_observables_and_indicators_only_behind_the_flag():
    text = (
        "It beaconed to 203.0.113[.]5 and hxxp://evil[.]example/a , wrote "
        "C:\\Users\\x\\evil.dll and HKLM\\Software\\Run , mailed bob@evil.example , "
        "hash 44d88612fea8a8f36de82e1278abb02f , exploiting CVE-2017-0199 ."
    )
    iocs = [
        ("203.0.113[.]5", "ipv4", "203.0.113.5"),
        ("hxxp://evil[.]example/a", "url", "http://evil.example/a"),
        ("C:\\Users\\x\\evil.dll", "file_path", "C:\\Users\\x\\evil.dll"),
        ("HKLM\\Software\\Run", "registry_key", "HKLM\\Software\\Run"),
        ("bob@evil.example", "email", "bob@evil.example"),
        ("44d88612fea8a8f36de82e1278abb02f", "md5", "44d88612fea8a8f36de82e1278abb02f"),
        ("CVE-2017-0199", "cve", "CVE-2017-0199"),
    ]
    ents = [("CVE-2017-0199", "Exp", 0.8)]
    plain = validate(doc_to_bundle(make_doc(text, ents, iocs), timestamp=T0))
    assert [o["value"] for o in by_type(plain, "ipv4-addr")] == ["203.0.113.5"]
    assert [o["value"] for o in by_type(plain, "url")] == ["http://evil.example/a"]
    assert [o["value"] for o in by_type(plain, "email-addr")] == ["bob@evil.example"]
    assert [o["key"] for o in by_type(plain, "windows-registry-key")] == [
        "HKEY_LOCAL_MACHINE\\Software\\Run"
    ]
    files = by_type(plain, "file")
    assert {"MD5": "44d88612fea8a8f36de82e1278abb02f"} in [f.get("hashes") for f in files]
    (dll,) = [f for f in files if f.get("name") == "evil.dll"]
    (directory,) = by_type(plain, "directory")
    assert dll["parent_directory_ref"] == directory["id"] and directory["path"] == "C:\\Users\\x"
    # The CVE of the entity and of the indicator span is one object, with the entity's confidence.
    (vulnerability,) = by_type(plain, "vulnerability")
    assert vulnerability["confidence"] == 80
    assert by_type(plain, "indicator") == [] and by_type(plain, "relationship") == []

    flagged = validate(doc_to_bundle(make_doc(text, ents, iocs), timestamp=T0, indicators=True))
    indicators = {o["id"]: o for o in by_type(flagged, "indicator")}
    links = by_type(flagged, "relationship")
    assert {r["relationship_type"] for r in links} == {"based-on"}
    assert {r["source_ref"] for r in links} == set(indicators)
    observable_ids = {
        o["id"]
        for o in flagged["objects"]
        if o["type"] in ("ipv4-addr", "url", "email-addr", "windows-registry-key", "file")
    }
    assert {r["target_ref"] for r in links} == observable_ids
    patterns = {o["pattern"] for o in indicators.values()}
    assert "[ipv4-addr:value = '203.0.113.5']" in patterns
    assert "[windows-registry-key:key = 'HKEY_LOCAL_MACHINE\\\\Software\\\\Run']" in patterns
    assert (
        "[file:name = 'evil.dll' AND file:parent_directory_ref.path = 'C:\\\\Users\\\\x']"
        in patterns
    )
    (report,) = by_type(flagged, "report")
    assert sorted(report["object_refs"]) == sorted(
        o["id"] for o in flagged["objects"] if o["type"] != "report"
    )


def test_indicator_values_from_report_text_are_valid_stix_and_nothing_is_lost():
    """Indicators as the threat-report tokenizer and `cti_iocs` find them in text an attacker
    may have written: defanged URLs without a scheme, ports, characters a URI cannot hold, a
    non-ASCII host, a DNS name that is no host name, folders."""
    from spacy_secner.tokenizer import build_cti_tokenizer

    nlp = spacy.blank("en")
    nlp.tokenizer = build_cti_tokenizer(nlp)
    nlp.add_pipe("cti_iocs")
    text = (
        "It fetched hxxp://evil[.]com/x|y?q=\"a\"#top#2 and evil[.]com/a.php from "
        "198.51.100.8:443 , evil[.]org:8080 and 198.51.100[.]7/gate.php , then "
        "hxxps://пример[.]рф/%zz and my_host[.]evil[.]com , writing to C:\\Temp\\ and "
        "/var/tmp/ ."
    )
    doc = nlp(text)
    assert len(doc.spans["iocs"]) == 9, [(s.text, s.label_) for s in doc.spans["iocs"]]
    data = validate(doc_to_bundle(doc, timestamp=T0, indicators=True))
    values = lambda kind: sorted(o["value"] for o in by_type(data, kind))  # noqa: E731
    assert values("url") == [
        "http://evil.com/x%7Cy?q=%22a%22#top%232",
        "https://xn--e1afmkfd.xn--p1ai/%25zz",
    ]
    assert values("domain-name") == ["evil.com", "evil.org"]
    assert values("ipv4-addr") == ["198.51.100.7", "198.51.100.8"]
    assert sorted(o["path"] for o in by_type(data, "directory")) == ["/var/tmp", "C:\\Temp"]
    assert by_type(data, "file") == []
    # What no observable holds (a path without a scheme, a port, the DNS name) is a mention.
    description = by_type(data, "report")[0]["description"]
    for value in (
        "evil.com/a.php",
        "198.51.100.7/gate.php",
        "198.51.100.8:443",
        "evil.org:8080",
        "my_host.evil.com",
    ):
        assert value in description, value
    patterns = {o["pattern"] for o in by_type(data, "indicator")}
    assert "[url:value = 'http://evil.com/x%7Cy?q=%22a%22#top%232']" in patterns
    assert "[ipv4-addr:value = '198.51.100.8']" in patterns


@pytest.mark.parametrize(
    "url,expected",
    [
        ("http://evil.com/a", "http://evil.com/a"),
        ("http://evil.com:8080/a/b?c=d&e=f#g", "http://evil.com:8080/a/b?c=d&e=f#g"),
        ("http://evil.com/a%20b%zz", "http://evil.com/a%20b%25zz"),
        ("http://evil.com/{a}\\b^`<>", "http://evil.com/%7Ba%7D%5Cb%5E%60%3C%3E"),
        ("http://evil.com/a?b#c#d", "http://evil.com/a?b#c%23d"),
        ("http://evil.com?x", "http://evil.com?x"),
        ("ftp://user@evil.com/a", "ftp://user@evil.com/a"),
        ("http://bücher.example/ä", "http://xn--bcher-kva.example/%C3%A4"),
        ("evil.com/a.php", None),
    ],
)
def test_urls_are_written_as_uris(url, expected):
    assert mapping.uri(url) == expected
    if expected is not None:
        validate(stix2.Bundle(objects=[stix2.URL(value=expected)]))


def test_same_text_under_two_names_shares_its_report_in_a_run_bundle():
    one = make_doc("APT28 used X-Agent .", [("APT28", "HackOrg", 0.6)])
    again = make_doc("APT28 used X-Agent .", [("APT28", "HackOrg", 0.6)])
    data = validate(docs_to_bundle([("a/one.txt", one), ("b/one.txt", again)], timestamp=T0))
    assert [r["name"] for r in by_type(data, "report")] == ["a/one.txt"]


def test_modified_is_separate_from_created():
    doc = make_doc("APT28 used X-Agent .", [("APT28", "HackOrg", 0.6)])
    data = validate(doc_to_bundle(doc, timestamp=T0))
    assert {o["created"] for o in data["objects"]} == {"2026-01-02T03:04:05.000Z"}
    from spacy_secner.stix.export import document_objects

    _, objects = document_objects(doc, "one.txt", timestamp=T0, modified=T1)
    (group,) = [o for o in objects if o.type == "intrusion-set"]
    (report,) = [o for o in objects if o.type == "report"]
    assert (group.created, group.modified) == (T0, T1)
    assert (report.created, report.modified, report.published) == (T0, T1, T1)


def test_docs_without_iocs_group_or_anything_to_export():
    empty = validate(doc_to_bundle(spacy.blank("en")("Nothing to see here .")))
    assert empty.get("objects", []) == []
    generic = make_doc(
        "The attackers used malware .", [("attackers", "HackOrg", 0.9), ("malware", "Tool", 0.8)]
    )
    assert validate(doc_to_bundle(generic)).get("objects", []) == []


def test_per_run_bundle_merges_objects_and_keeps_a_report_per_document():
    one = make_doc("APT28 used X-Agent .", [("APT28", "HackOrg", 0.6), ("X-Agent", "Tool", 0.9)])
    two = make_doc("APT28 hit Japan .", [("APT28", "HackOrg", 0.8), ("Japan", "Area", 0.7)])
    none = spacy.blank("en")("Nothing .")
    data = validate(
        docs_to_bundle([("one.txt", one), ("two.txt", two), ("none.txt", none)], timestamp=T0)
    )
    assert names(data, "intrusion-set") == ["APT28"]
    assert by_type(data, "intrusion-set")[0]["confidence"] == 80
    reports = {r["name"]: r for r in by_type(data, "report")}
    assert set(reports) == {"one.txt", "two.txt"}
    ids = {o["name"]: o["id"] for o in data["objects"] if "name" in o}
    assert set(reports["one.txt"]["object_refs"]) == {ids["APT28"], ids["X-Agent"]}
    assert set(reports["two.txt"]["object_refs"]) == {ids["APT28"], ids["Japan"]}
    # The same objects as each document's own bundle.
    single = validate(doc_to_bundle(two, name="two.txt", timestamp=T0))
    assert by_type(single, "report")[0]["id"] == reports["two.txt"]["id"]


def test_trained_pipeline_end_to_end(trained_cnn_nlp):
    checked = 0
    for doc in trained_cnn_nlp.pipe(TRAIN_TEXTS):
        data = validate(doc_to_bundle(doc))
        best = {}
        for ent in doc.ents:
            best[ent.text.lower()] = max(best.get(ent.text.lower(), 0), ent._.confidence)
        for obj in data["objects"]:
            if obj["type"] in ("intrusion-set", "tool", "malware"):
                assert obj["confidence"] == round(100 * best[obj["name"].lower()])
                checked += 1
    assert checked >= 3


def markdown_table(path: Path, header: str) -> dict:
    """The first two columns of the Markdown table whose header starts with `header`."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header}"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        value = cells[1].strip("`")
        rows[cells[0].strip("`")] = None if value == "—" else value
    return rows


def test_docs_mapping_tables_are_the_code():
    doc = ROOT / "docs" / "stix.md"
    assert markdown_table(doc, "DNRTI label") == ENTITY_TYPES
    assert markdown_table(doc, "indicator span") == IOC_TYPES
    # Every label of the pipeline's scheme (DNRTI's 13) has a row.
    assert len(ENTITY_TYPES) == 13
    assert re.search(r"STIX 2\.1", doc.read_text())


@pytest.mark.parametrize(
    "phrase,expected",
    [
        ("spear-phishing emails", ("T1566", "Phishing")),
        ("Spear phishing attacks", ("T1566", "Phishing")),
        ("watering hole attacks", ("T1189", "Drive-by Compromise")),
        ("watering holes", ("T1189", "Drive-by Compromise")),
        ("strategic web compromises", ("T1189", "Drive-by Compromise")),
        ("phishing lures", None),
        ("social engineering", None),
        ("attacks", None),
        ("campaign", None),
    ],
)
def test_techniques_are_resolved_only_from_the_table(phrase, expected):
    assert mapping.technique(phrase) == expected


@pytest.mark.parametrize(
    "name,kind",
    [
        ("PlugX", "malware"),
        ("plugx", "malware"),
        ("ZeroT Trojan", "malware"),
        ("Gh0st RAT", "malware"),
        ("Mimikatz", "tool"),
        ("Cobalt Strike", "tool"),
        ("Trojan", "tool"),  # not malware by its name; a bare kind is never exported (is_name)
    ],
)
def test_tools_are_malware_by_list_or_by_their_last_word(name, kind):
    assert ("malware" if mapping.is_malware(name) else "tool") == kind


def test_generic_mentions_are_not_names():
    for text in ("group", "attackers", "RAT", "Trojan", "malware", "financial institutions", "we"):
        assert not mapping.is_name(text), text
    for text in ("APT28", "admin@338", "cmd.exe", "Lazarus Group", "TG-3390"):
        assert mapping.is_name(text), text


def test_a_sample_file_that_is_an_indicator_span_is_exported_once_as_the_indicator():
    text = "It fetched hxxp://evil[.]example/a.exe and dropped b.exe ."
    doc = make_doc(
        text,
        [("hxxp://evil[.]example/a.exe", "SamFile", 0.6), ("b.exe", "SamFile", 0.7)],
        [("hxxp://evil[.]example/a.exe", "url", "http://evil.example/a.exe")],
    )
    data = validate(doc_to_bundle(doc, indicators=True))
    assert [o["value"] for o in by_type(data, "url")] == ["http://evil.example/a.exe"]
    assert [o["name"] for o in by_type(data, "file")] == ["b.exe"]
