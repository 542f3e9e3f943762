"""Shared test fixtures (tests/ and bench/tests/): five annotated CTI sentences, a tiny random BERT
and tiny `ner_crf` pipelines."""
import json
import os
import subprocess
import sys

# No network on CI: every transformer is loaded from a local directory.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The tensors here are tiny: OpenMP's thread hand-offs cost more than the work, and on a busy
# 2-core runner a reduction can wait milliseconds for a descheduled thread (seen: 3000x).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402
from typing import Dict, List, Optional, Sequence, Tuple  # noqa: E402

import pytest  # noqa: E402
import spacy  # noqa: E402
import torch  # noqa: E402
from spacy.language import Language  # noqa: E402
from spacy.tokens import Doc  # noqa: E402
from spacy.training import Example  # noqa: E402
from thinc.api import fix_random_seed  # noqa: E402

import spacy_secner  # noqa: E402,F401  (registers the factory and architectures)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

Ents = List[Tuple[str, str]]

# Five CTI-like sentences in the DNRTI style, with multi-token entities
# ("X-Agent" is three spaCy tokens, "Iranian nuclear facilities" three words).
TRAIN_DATA: List[Tuple[str, Ents]] = [
    (
        "APT28 used X-Agent against NATO in 2016 .",
        [("APT28", "HackOrg"), ("X-Agent", "Tool"), ("NATO", "Org"), ("2016", "Time")],
    ),
    (
        "Lazarus Group deployed WannaCry ransomware in May 2017 .",
        [("Lazarus Group", "HackOrg"), ("WannaCry", "Tool"), ("May 2017", "Time")],
    ),
    (
        "The Equation Group targeted Iranian nuclear facilities with Stuxnet .",
        [("Equation Group", "HackOrg"), ("Iranian nuclear facilities", "Org"), ("Stuxnet", "Tool")],
    ),
    (
        "In 2014 , Sofacy sent Sednit backdoor emails to the German Bundestag .",
        [("2014", "Time"), ("Sofacy", "HackOrg"), ("Sednit", "Tool"), ("German Bundestag", "Org")],
    ),
    (
        "OceanLotus used Cobalt Strike against Vietnamese banks last year .",
        [
            ("OceanLotus", "HackOrg"),
            ("Cobalt Strike", "Tool"),
            ("Vietnamese banks", "Org"),
            ("last year", "Time"),
        ],
    ),
]
TRAIN_TEXTS = [text for text, _ in TRAIN_DATA]
# Texts of one to many sentences of very different lengths, and an empty one: batches whose
# windows the transformer groups, packs and pads in different ways.
MIXED_TEXTS = [
    "APT28 struck .",
    TRAIN_TEXTS[0] + " " + TRAIN_TEXTS[1],
    "Turla used Snake . It spread .",
    " ".join(TRAIN_TEXTS),
    "",
    "Lazarus .",
]
GOLD_ENTS = [ents for _, ents in TRAIN_DATA]
LABELS = sorted({label for _, ents in TRAIN_DATA for _, label in ents})

CNN_TOK2VEC = {
    "@architectures": "spacy.HashEmbedCNN.v2",
    "width": 48,
    "depth": 2,
    "embed_size": 1000,
    "window_size": 1,
    "maxout_pieces": 3,
    "subword_features": True,
    "pretrained_vectors": None,
}

TRF_NLP_CONFIG = """
[nlp]
lang = "en"
pipeline = ["transformer", "ner_crf"]

[components]

[components.transformer]
factory = "transformer"
max_batch_items = 4096

[components.transformer.model]
@architectures = "spacy-transformers.TransformerModel.v3"
{name_line}
tokenizer_config = {{"use_fast": true}}
mixed_precision = false

[components.transformer.model.get_spans]
@span_getters = "spacy-transformers.strided_spans.v1"
window = 128
stride = 96

[components.ner_crf]
factory = "ner_crf"

[components.ner_crf.model]
@architectures = "spacy-secner.TransformerBiLSTMCRF.v1"
hidden_size = 32
depth = 1
dropout = 0.0
constrained = true

[components.ner_crf.model.tok2vec]
@architectures = "spacy-transformers.TransformerListener.v1"
grad_factor = 1.0
upstream = "*"

[components.ner_crf.model.tok2vec.pooling]
@layers = "{pooling}"
"""


def ents_of(doc: Doc) -> Ents:
    """The entities of a doc as (text, label) pairs."""
    return [(ent.text, ent.label_) for ent in doc.ents]


def offsets_of(doc: Doc) -> List[Tuple[int, int, str]]:
    """The entities of a doc as (start, end, label) token offsets."""
    return [(ent.start, ent.end, ent.label_) for ent in doc.ents]


def make_example(nlp: Language, text: str, ents: Ents) -> Example:
    """An Example whose reference has the given entities (found by their first occurrence)."""
    predicted = nlp.make_doc(text)
    reference = nlp.make_doc(text)
    spans = []
    for ent_text, label in ents:
        start = text.index(ent_text)
        span = reference.char_span(start, start + len(ent_text), label=label)
        assert span is not None, f"{ent_text!r} is not on token boundaries in {text!r}"
        spans.append(span)
    reference.ents = spans
    return Example(predicted, reference)


def make_examples(nlp: Language, data: Sequence[Tuple[str, Ents]] = TRAIN_DATA) -> List[Example]:
    return [make_example(nlp, text, ents) for text, ents in data]


def make_cnn_nlp(*, seed: int = 0, **ner_config) -> Language:
    """A blank English pipeline with one `ner_crf` on spaCy's CNN tok2vec (fast, no transformer)."""
    fix_random_seed(seed)
    nlp = spacy.blank("en")
    model = {
        "@architectures": "spacy-secner.TransformerBiLSTMCRF.v1",
        "hidden_size": 32,
        "depth": 1,
        "dropout": 0.0,
        "constrained": True,
        "tok2vec": dict(CNN_TOK2VEC),
    }
    nlp.add_pipe("ner_crf", config={"model": model, **ner_config})
    return nlp


def trf_config_str(model_dir: Optional[Path], *, pooling: str = "spacy-secner.reduce_first.v1") -> str:
    """A full `transformer` + `ner_crf` config on a local HF model directory, or on the
    embedded MiniLM (`spacy-secner.embedded_encoder.v1`) if `model_dir` is None."""
    if model_dir is None:
        return TRF_NLP_CONFIG.format(name_line="", pooling=pooling) + (
            '\n[components.transformer.model.name]\n@misc = "spacy-secner.embedded_encoder.v1"\n'
        )
    return TRF_NLP_CONFIG.format(name_line=f'name = "{model_dir}"', pooling=pooling)


def make_trf_nlp(
    model_dir: Optional[Path], *, pooling: str = "spacy-secner.reduce_first.v1", seed: int = 0, **ner_config
) -> Language:
    """`transformer` + `ner_crf` built from a full config, validated like `spacy train` does.

    ner_config: Settings of the ner_crf component to override, e.g. `overwrite=True`.
    """
    fix_random_seed(seed)
    config = spacy.util.load_config_from_str(trf_config_str(model_dir, pooling=pooling))
    config["components"]["ner_crf"].update(ner_config)
    return spacy.util.load_model_from_config(config, auto_fill=True, validate=True)


def make_grouped_trf_nlp(
    model_dir: Path,
    max_batch_wordpieces: int,
    *,
    transformer_config: Optional[Dict] = None,
    sentencizer: bool = True,
    packed_row_wordpieces: Optional[int] = None,
) -> Language:
    """The tiny `transformer` + `ner_crf` on `spacy-secner.TransformerModel.v1`, with sentence
    windows (and a sentencizer first, unless `sentencizer` is False), initialized; windows
    packed as the architecture's default does unless `packed_row_wordpieces` is given."""
    fix_random_seed(0)
    config = spacy.util.load_config_from_str(trf_config_str(model_dir))
    model = config["components"]["transformer"]["model"]
    model["@architectures"] = "spacy-secner.TransformerModel.v1"
    model["max_batch_wordpieces"] = max_batch_wordpieces
    if packed_row_wordpieces is not None:
        model["packed_row_wordpieces"] = packed_row_wordpieces
    model["get_spans"] = {
        "@span_getters": "spacy-secner.sent_strided_spans.v1",
        "window": 128,
        "stride": 96,
    }
    if transformer_config:
        model["transformer_config"] = transformer_config
    if sentencizer:
        config["nlp"]["pipeline"] = ["sentencizer", "transformer", "ner_crf"]
        config["components"]["sentencizer"] = {"factory": "sentencizer"}
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    nlp.initialize(lambda: make_examples(nlp))
    return nlp


LOAD_IN_FRESH_PROCESS = """
import json, sys
if "spacy_secner" in sys.modules:
    raise SystemExit("spacy_secner was imported before spacy.load")
import spacy
nlp = spacy.load(sys.argv[1])
texts = json.loads(open(sys.argv[2], encoding="utf8").read())
docs = list(nlp.pipe(texts))
ents = [[[e.start, e.end, e.label_] for e in doc.ents] for doc in docs]
iocs = [[[s.start_char, s.end_char, s.label_, s._.ioc_value] for s in doc.spans.get("iocs", [])]
        for doc in docs]
with open(sys.argv[3], "w", encoding="utf8") as f:
    json.dump({"ents": ents, "iocs": iocs, "pipe_names": nlp.pipe_names}, f)
"""


def load_in_fresh_process(path: Path, texts: List[str], workdir: Path) -> Dict:
    """`spacy.load(path)` in a new Python process that never imports spacy_secner itself (the
    factory must come from the entry points); RETURNS the entities and indicator spans per text
    as JSON data."""
    texts_file = workdir / "texts.json"
    out_file = workdir / "ents.json"
    texts_file.write_text(json.dumps(texts), encoding="utf8")
    run_isolated([LOAD_IN_FRESH_PROCESS, str(path), str(texts_file), str(out_file)], workdir)
    return json.loads(out_file.read_text(encoding="utf8"))


def run_isolated(args: List[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run `python -I -c ARGS...` offline and check it succeeded. -I puts no cwd or PYTHONPATH
    on sys.path, so the installed distribution, found through its entry points, is what loads."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-I", "-c", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def train_with_each_adam_update(tiny_bert_dir, monkeypatch, *, steps: int = 4):
    """The same 4 training steps of a tiny pipeline with thinc's per-parameter Adam loop and with
    the shims' fused update: for each, the `ner_crf` losses and the weights of every shim."""
    from thinc.api import Adam

    from spacy_secner.layers import shims

    runs = []
    for fused in (False, True):
        monkeypatch.setattr(shims._FusedAdamUpdate, "fused_adam", fused)
        fix_random_seed(0)
        nlp = make_grouped_trf_nlp(tiny_bert_dir, 16)
        optimizer = Adam(0.01, grad_clip=0.05, use_averages=False)
        losses = []
        for _ in range(steps):
            step = {}
            nlp.update(make_examples(nlp), sgd=optimizer, losses=step)
            losses.append(step["ner_crf"])
        weights = {
            (pipe, name): p.detach().cpu().clone()
            for pipe in ("transformer", "ner_crf")
            for node in nlp.get_pipe(pipe).model.walk()
            for shim in node.shims
            for name, p in shim._model.named_parameters()
        }
        runs.append((losses, weights))
    return runs


def train_until_gold(
    nlp: Language,
    examples: List[Example],
    *,
    max_steps: int = 300,
    check_every: int = 5,
    learn_rate: Optional[float] = None,
) -> Dict[str, object]:
    """Initialize and train `nlp` until it reproduces the gold entities of `examples`.

    RETURNS (Dict[str, object]): "losses" (the ner_crf loss per step), "steps", "predicted" (the
        entities per example after training) and "gold".
    """
    optimizer = nlp.initialize(lambda: examples)
    if learn_rate is not None:
        optimizer.learn_rate = learn_rate
    gold = [ents_of(eg.reference) for eg in examples]
    texts = [eg.reference.text for eg in examples]
    losses: List[float] = []
    predicted: List[Ents] = []
    for step in range(1, max_steps + 1):
        step_losses: Dict[str, float] = {}
        nlp.update(examples, sgd=optimizer, losses=step_losses)
        losses.append(step_losses["ner_crf"])
        if step % check_every == 0:
            predicted = [ents_of(doc) for doc in nlp.pipe(texts)]
            if predicted == gold:
                break
    return {"losses": losses, "steps": step, "predicted": predicted, "gold": gold}


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with the embedded MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from spacy_secner.encoders import embedded_encoder

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(embedded_encoder())
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=512,
        vocab_size=len(tokenizer),
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def trained_cnn_nlp() -> Language:
    """A CNN-tok2vec `ner_crf` trained to reproduce TRAIN_DATA. Shared: do not update or modify it."""
    nlp = make_cnn_nlp()
    result = train_until_gold(nlp, make_examples(nlp))
    assert result["predicted"] == result["gold"], "the shared CNN pipeline did not overfit"
    return nlp


@pytest.fixture(scope="session")
def trained_trf_nlp(tiny_bert_dir) -> Language:
    """A tiny-BERT `transformer` + `ner_crf` trained to reproduce TRAIN_DATA. Do not modify it."""
    nlp = make_trf_nlp(tiny_bert_dir)
    result = train_until_gold(nlp, make_examples(nlp))
    assert result["predicted"] == result["gold"], "the shared tiny-BERT pipeline did not overfit"
    return nlp


@pytest.fixture(params=["cnn", "tiny_bert"])
def trained_nlp(request) -> Language:
    """Each of the two shared trained pipelines in turn (read only)."""
    return request.getfixturevalue(f"trained_{'cnn' if request.param == 'cnn' else 'trf'}_nlp")
