"""Every entry point of the distribution resolves in spaCy's registry, and every registered name
has an entry point, so `spacy.load`/`spacy train` need neither an import nor `--code`."""
import importlib
import json
import pkgutil
from importlib.metadata import EntryPoint, distribution
from typing import Dict, List, Tuple

import catalogue
import pytest
import spacy
from spacy.language import Language

import spacy_secner
from conftest import run_isolated

DIST = "spacy-secner"
# Groups spaCy and thinc read through catalogue: spacy_architectures, spacy_misc, ...
GROUP_PREFIXES = ("spacy_", "thinc_")


def our_entry_points() -> List[EntryPoint]:
    return sorted(
        (ep for ep in distribution(DIST).entry_points if ep.group.startswith(GROUP_PREFIXES)),
        key=lambda ep: (ep.group, ep.name),
    )


def registry_for_group(group: str) -> Tuple[str, catalogue.Registry]:
    """spaCy's registry for an entry-point group: `spacy_X` -> `spacy.registry.X`.

    Factories are the exception: their group feeds `registry._entry_point_factories`, and the
    `Language.factory` decorator then adds them to `registry.factories`, which spaCy resolves.
    """
    spacy.registry.ensure_populated()
    prefix, _, attr = group.partition("_")
    reg = getattr(spacy.registry, attr, None)
    assert isinstance(reg, catalogue.Registry), (
        f"entry-point group {group!r} has no spaCy registry spacy.registry.{attr}: "
        f"known ones are {spacy.registry.get_registry_names()}"
    )
    if group != "spacy_factories":
        assert reg.entry_point_namespace == group, (group, reg.namespace)
    return attr, reg


def test_distribution_declares_the_component():
    eps = {(ep.group, ep.name): ep.value for ep in our_entry_points()}
    assert eps[("spacy_factories", "ner_crf")] == "spacy_secner.pipeline:make_ner_crf"
    assert ("spacy_architectures", "spacy-secner.TransformerBiLSTMCRF.v1") in eps
    assert ("spacy_misc", "spacy-secner.embedded_encoder.v1") in eps


@pytest.mark.parametrize("ep", our_entry_points(), ids=lambda ep: f"{ep.group}:{ep.name}")
def test_entry_point_resolves_in_spacy_registry(ep: EntryPoint):
    obj = ep.load()
    attr, reg = registry_for_group(ep.group)
    assert spacy.registry.has(attr, ep.name)
    assert spacy.registry.get(attr, ep.name) is obj
    assert reg.get(ep.name) is obj
    if ep.group == "spacy_factories":
        assert Language.has_factory(ep.name)
        meta = Language.get_factory_meta(ep.name)
        assert meta.factory == ep.name
        # ner_crf writes doc.ents, cti_iocs doc.spans["iocs"].
        assert meta.assigns
        assert spacy.util.registry.factories.get(ep.name) is obj


def test_entry_points_resolve_without_importing_the_package(tmp_path):
    """In a fresh interpreter that never imports spacy_secner, spaCy finds every entry point."""
    script = """
import json, sys
import spacy
from spacy.language import Language
names = json.loads(sys.argv[1])
assert "spacy_secner" not in sys.modules
spacy.blank("en")  # loads the spacy_factories entry points
result = {}
for group, name in names:
    attr = group.partition("_")[2]
    if group == "spacy_factories":
        ok = Language.has_factory(name) and Language.get_factory_meta(name).factory == name
    else:
        ok = callable(spacy.registry.get(attr, name))
    result[f"{group}:{name}"] = ok
print(json.dumps(result))
"""
    names = [(ep.group, ep.name) for ep in our_entry_points()]
    proc = run_isolated([script, json.dumps(names)], tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {f"{group}:{name}": True for group, name in names}


def _registered_by_package() -> Dict[str, Dict[str, object]]:
    """Objects registered by spacy_secner's modules, by entry-point group and name."""
    for info in pkgutil.walk_packages(spacy_secner.__path__, prefix="spacy_secner."):
        importlib.import_module(info.name)
    found: Dict[str, Dict[str, object]] = {}
    spacy.registry.ensure_populated()
    for attr in spacy.registry.get_registry_names():
        reg = getattr(spacy.registry, attr)
        group = "spacy_factories" if attr == "factories" else reg.entry_point_namespace
        for name, func in reg.get_all().items():
            module = getattr(func, "__module__", "") or ""
            if module == "spacy_secner" or module.startswith("spacy_secner."):
                found.setdefault(group, {})[name] = func
    return found


def test_every_registered_name_has_an_entry_point():
    """What the package registers with a decorator is also declared in setup.cfg, in the group
    of its registry, pointing at the same object."""
    registered = _registered_by_package()
    assert "ner_crf" in registered["spacy_factories"]
    declared = {(ep.group, ep.name): ep for ep in distribution(DIST).entry_points}
    problems = []
    for group, names in sorted(registered.items()):
        for name, func in sorted(names.items()):
            target = f"{func.__module__}:{func.__qualname__}"
            if (group, name) not in declared:
                problems.append(f"missing: [{group}] {name} = {target}")
            elif declared[(group, name)].load() is not func:
                problems.append(f"wrong target: [{group}] {name} = {declared[(group, name)].value}")
    assert not problems, "fix [options.entry_points] in setup.cfg:\n" + "\n".join(problems)
