"""Pipeline components for the Ray tests. Ray's workers import this module when they start
(`worker_process_setup_hook`), so that `spacy.load` in an actor finds the factories."""

import os

from spacy.language import Language
from spacy.tokens import Doc


@Language.factory("secner_test_load_log", default_config={"path": ""})
def make_load_log(nlp: Language, name: str, path: str):
    """Appends the process id to `path` each time a pipeline holding it is built (loaded)."""
    if path:
        with open(path, "a", encoding="utf8") as log:
            log.write(f"{os.getpid()}\n")
    return lambda doc: doc


@Language.component("secner_test_ray_fail_on_boom")
def fail_on_boom(doc: Doc) -> Doc:
    if "BOOM" in doc.text:
        raise RuntimeError("this doc goes boom")
    return doc


def setup() -> None:
    """The worker setup hook: importing this module registered the components."""
