"""The `ner_crf` pipe: named entities from a BiLSTM-CRF over any token-vector layer."""
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy
import srsly
from spacy import util
from spacy.errors import Errors
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc, Span
from spacy.training import Example, validate_examples
from spacy.training import validate_get_examples
from spacy.vocab import Vocab
from spacy_transformers.layers import TransformerListener
from thinc.api import Config, Model, Optimizer, set_dropout_rate
from thinc.types import Floats2d, Ints1d, Ints2d

from .batching import padded_batches
from .bio import bio_tags, biluo_to_bio, repair_bio
from .calibration import apply_calibration, name_key, needs_names
from .layers import DocEntities, build_heads, crf_loss, crf_nll, decode_entities, has_heads
from .layers import head_layers, set_tags

DEFAULT_NER_CRF_MODEL = """
[model]
@architectures = "spacy-secner.TransformerBiLSTMCRF.v1"
hidden_size = 256
depth = 1
dropout = 0.0
constrained = true

[model.tok2vec]
@architectures = "spacy-transformers.TransformerListener.v1"
grad_factor = 1.0
upstream = "*"

[model.tok2vec.pooling]
@layers = "spacy-secner.reduce_first.v1"
"""
DEFAULT_MODEL = Config().from_str(DEFAULT_NER_CRF_MODEL)["model"]

# The CRF's marginal probability of a predicted entity; None for entities from other pipes.
if not Span.has_extension("confidence"):
    Span.set_extension("confidence", default=None)

# The pipe's settings in its cfg: when a saved pipe is loaded, the constructor's (the config's)
# values stay, and only the learned state (labels, width, calibration) comes from the saved cfg.
_SETTINGS = ("overwrite", "confidence", "max_batch_tokens")


@Language.factory(
    "ner_crf",
    assigns=["doc.ents", "token.ent_iob", "token.ent_type"],
    default_config={
        "model": DEFAULT_MODEL,
        "overwrite": False,
        "head_learn_rate_factor": 1.0,
        "confidence": True,
        "max_batch_tokens": 8192,
        "scorer": {"@scorers": "spacy.ner_scorer.v1"},
    },
    default_score_weights={
        "ents_f": 1.0,
        "ents_p": 0.0,
        "ents_r": 0.0,
        "ents_per_type": None,
    },
)
def make_ner_crf(
    nlp: Language,
    name: str,
    model: Model[List[Doc], List[Floats2d]],
    overwrite: bool,
    head_learn_rate_factor: float,
    confidence: bool,
    max_batch_tokens: int,
    scorer: Optional[Callable],
) -> "CRFEntityRecognizer":
    """Create a `ner_crf` pipe: BIO tags decoded by a CRF, written to `doc.ents`.

    model (Model[List[Doc], List[Floats2d]]): Emission scores per token with their decoder,
        such as `spacy-secner.TransformerBiLSTMCRF.v1`.
    overwrite (bool): Replace entities already on the doc (from an `entity_ruler` earlier in
        the pipeline, say). By default they are kept and only the predicted entities that do
        not overlap them are added.
    head_learn_rate_factor (float): The BiLSTM, emission and CRF weights learn at the
        optimizer's rate times this factor, while the encoder keeps the optimizer's rate: a
        freshly initialized head can learn fast without shaking the pretrained encoder.
    max_batch_tokens (int): At prediction, the docs of a batch are grouped by length and the
        head runs on chunks of at most this many padded tokens (longest doc x docs; a longer doc
        goes alone): it bounds the memory the BiLSTM and CRF take on long documents. Results do
        not depend on it.
    confidence (bool): Give each predicted entity `span._.confidence`, the CRF's marginal
        probability of exactly that span (one extra batched CRF pass).
    scorer (Optional[Callable]): Scorer for `nlp.evaluate`; spaCy's NER scorer by default.
    """
    return CRFEntityRecognizer(
        nlp.vocab,
        model,
        name,
        overwrite=overwrite,
        head_learn_rate_factor=head_learn_rate_factor,
        confidence=confidence,
        max_batch_tokens=max_batch_tokens,
        scorer=scorer,
    )


class CRFEntityRecognizer(TrainablePipe):
    """Sequence-labelling NER whose CRF only decodes well-formed BIO entities."""

    def __init__(
        self,
        vocab: Vocab,
        model: Model[List[Doc], List[Floats2d]],
        name: str = "ner_crf",
        *,
        overwrite: bool = False,
        head_learn_rate_factor: float = 1.0,
        confidence: bool = True,
        max_batch_tokens: int = 8192,
        scorer: Optional[Callable] = None,
    ) -> None:
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}")
        self.cfg: Dict = {
            "labels": [],
            "overwrite": overwrite,
            "confidence": confidence,
            "max_batch_tokens": max_batch_tokens,
        }
        self.head_learn_rate_factor = head_learn_rate_factor

    @property
    def labels(self) -> tuple:
        return tuple(self.cfg["labels"])

    @property
    def label_data(self) -> List[str]:
        return list(self.labels)

    @property
    def tags(self) -> List[str]:
        return bio_tags(self.labels)

    def add_label(self, label: str) -> int:
        """Add an entity label before training. RETURNS (int): 0 if it was there, else 1."""
        if not isinstance(label, str):
            raise ValueError(Errors.E187)
        if label in self.labels:
            return 0
        if has_heads(self.model):
            raise ValueError(
                f"Cannot add label '{label}' to the trained '{self.name}' pipe: its CRF is "
                "sized for its labels. Add labels before nlp.initialize()."
            )
        self.cfg["labels"] = sorted([*self.labels, label])
        self.vocab.strings.add(label)
        return 1

    def predict(self, docs: Iterable[Doc]) -> DocEntities:
        """Best BIO tag indices per doc, the entities they hold (start, end, label index) and,
        if `confidence` is on, each entity's marginal probability under the CRF, through the
        calibration map of `cfg["calibration"]` when there is one (see `calibration.py`). Does
        not modify the docs.
        """
        docs = list(docs)
        self._require_initialized()
        self._require_transformer_output(docs)
        # The head pads, pools and runs the BiLSTM per chunk of similar lengths (spaCy's own
        # length batcher), so a batch of long documents is never held padded all at once. Empty
        # docs keep their empty tags: a listener cannot pool them. The decoder then reads the
        # sentences of all docs at once (`decode_entities`).
        nonempty = [i for i, doc in enumerate(docs) if len(doc)]
        scores: List[Floats2d] = [None] * len(nonempty)  # type: ignore[list-item]
        for group in padded_batches([len(docs[i]) for i in nonempty], self.cfg["max_batch_tokens"]):
            for j, doc_scores in zip(group, self.model.predict([docs[nonempty[j]] for j in group])):
                scores[j] = doc_scores
        found = decode_entities(
            self.model, [docs[i] for i in nonempty], scores, self.cfg["confidence"]
        )
        result = DocEntities(
            [numpy.zeros((0,), dtype="int64") for _ in docs],
            [numpy.zeros((0, 3), dtype="int64") for _ in docs],
            [[] for _ in docs],
        )
        for j, i in enumerate(nonempty):
            result.tag_ids[i] = found.tag_ids[j]
            result.entities[i] = found.entities[j]
            result.confidences[i] = found.confidences[j]
        calibration = self.cfg.get("calibration")
        keys = None
        if needs_names(calibration):
            # A map by name tells the entities whose text is a training entity from new ones.
            labels = self.labels
            keys = [
                [name_key(doc[start:end].text, labels[label]) for start, end, label in found_ents]
                for doc, found_ents in zip(docs, (ents.tolist() for ents in result.entities))
            ]
        calibrated = apply_calibration(calibration, result.confidences, keys)
        return result._replace(confidences=calibrated)

    def set_annotations(self, docs: Iterable[Doc], predictions: DocEntities) -> None:
        """Write the predicted entities to `doc.ents`, with `span._.confidence` on each."""
        labels = [self.vocab.strings.add(label) for label in self.labels]
        for doc, found, confidences in zip(docs, predictions.entities, predictions.confidences):
            # The decoder read the entities off the tags as spaCy does (an orphan `I-X`,
            # possible without the BIO constraint, starts an entity).
            predicted = [
                Span(doc, start, end, label=labels[label]) for start, end, label in found.tolist()
            ]
            kept, ents = predicted, predicted
            if not self.cfg["overwrite"] and doc.has_annotation("ENT_IOB"):
                kept, ents = _merge_keeping_existing(doc.ents, predicted)
            # What `doc.ents = ents` does, without making each span a second time.
            doc.set_ents(ents, default="outside")
            # A span's extension values are stored on the doc by its character offsets: only
            # the predictions kept get a confidence, so an existing entity at the offsets of a
            # dropped prediction does not take the dropped one's.
            kept_ids = {id(span) for span in kept}
            for span, confidence in zip(predicted, confidences):
                if id(span) in kept_ids:
                    span._.confidence = confidence

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optional[Optimizer] = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """Learn from a batch of examples; the loss is the CRF's mean negative log-likelihood.
        Examples whose reference has no entity annotation at all teach nothing (see `get_loss`).
        """
        if losses is None:
            losses = {}
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        validate_examples(examples, "CRFEntityRecognizer.update")
        self._require_initialized()
        if not any(len(eg.predicted) and _has_gold_ents(eg) for eg in examples):
            return losses
        set_dropout_rate(self.model, drop)
        scores, backprop = self.model.begin_update([eg.predicted for eg in examples])
        loss, d_scores = self.get_loss(examples, scores)
        backprop(d_scores)
        if sgd is not None:
            self.finish_update(sgd)
        losses[self.name] += loss
        return losses

    def finish_update(self, sgd: Optimizer) -> None:
        """Update the weights, the head's at `head_learn_rate_factor` times the optimizer's rate."""
        self.model.get_ref("tok2vec").finish_update(sgd)
        base_rate = sgd.learn_rate
        sgd.learn_rate = base_rate * self.head_learn_rate_factor
        try:
            for layer in head_layers(self.model):
                layer.finish_update(sgd)
        finally:
            sgd.learn_rate = base_rate

    def get_loss(self, examples: Iterable[Example], scores: List[Floats2d]):
        """CRF negative log-likelihood and its gradient for the scores.

        The CRF's transitions are weights of the loss itself, so their gradients are
        accumulated here too, and applied by the next `finish_update`. For a loss without
        gradients, use `nll`. As spaCy's pipes treat missing annotation, an example whose
        reference has no entity annotation at all (`has_annotation("ENT_IOB")` false) adds
        nothing to the loss and gets zero gradients; a gold label the pipe does not know raises.
        """
        examples = list(examples)
        validate_examples(examples, "CRFEntityRecognizer.get_loss")
        annotated = [i for i, eg in enumerate(examples) if _has_gold_ents(eg)]
        gold = self._gold_ids([examples[i] for i in annotated])
        loss, d_annotated = crf_loss(self.model, [scores[i] for i in annotated], gold)
        d_scores = [self.model.ops.alloc2f(*s.shape) for s in scores]
        for i, d in zip(annotated, d_annotated):
            d_scores[i] = d
        return loss, d_scores

    def nll(self, examples: Iterable[Example], docs: Optional[List[Doc]] = None) -> float:
        """Mean CRF negative log-likelihood of the gold tags per non-empty doc, without
        gradients, computed in chunks of at most `max_batch_tokens` padded tokens.

        As a dev loss, it scores a gold entity of a label the pipe does not know as missed (its
        tokens count as O), and leaves out the examples whose reference has no entity
        annotation at all.

        docs (Optional[List[Doc]]): The examples' predicted docs after the pipes before this
            one (a transformer, say). Defaults to the examples' predicted docs as they are.
        """
        examples = list(examples)
        self._require_initialized()
        docs = docs if docs is not None else [eg.predicted for eg in examples]
        kept = [i for i, doc in enumerate(docs) if len(doc) and _has_gold_ents(examples[i])]
        if not kept:
            return 0.0
        gold = self._gold_ids([examples[i] for i in kept], unknown_as_o=True)
        total = 0.0
        for group in padded_batches([len(docs[i]) for i in kept], self.cfg["max_batch_tokens"]):
            scores = self.model.predict([docs[kept[j]] for j in group])
            total += crf_nll(self.model, scores, [gold[j] for j in group]) * len(group)
        return total / len(kept)

    def score(self, examples: Iterable[Example], **kwargs) -> Dict[str, Any]:
        """The scorer's scores (`spacy.ner_scorer.v1` by default), and `{name}_loss`: the mean
        CRF negative log-likelihood of the gold entities per doc (`nll`).

        The loss is read off the docs as the pipeline predicted them: a transformer's output is
        still on them, so only this pipe's head runs again, not the pipeline. spaCy's training
        loop passes these scores to its logger, where `spacy-secner.curve_logger.v1` records
        the loss as the dev loss.
        """
        examples = list(examples)
        scores = dict(super().score(examples, **kwargs))
        if examples and has_heads(self.model):
            scores[f"{self.name}_loss"] = self.nll(examples)
        return scores

    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        labels: Optional[Sequence[str]] = None,
    ) -> None:
        """Take the labels (from `labels` or the data) and build the model. Initializing an
        initialized pipe starts it over, as spaCy's pipes do: new weights, no calibration map.
        """
        validate_get_examples(get_examples, "CRFEntityRecognizer.initialize")
        listener = self._listener()
        if listener is not None and not listener.has_dim("nO"):
            # Only a transformer component set up before this pipe gives its listener a width.
            raise self._no_transformer_error(listener, "there is none")
        if labels is None:
            labels = {
                ent.label_ for eg in get_examples() for ent in eg.reference.ents
            } | set(self.labels)
        if not labels:
            raise ValueError(
                f"The '{self.name}' pipe found no entity labels: pass labels= or training "
                "examples with entities."
            )
        for label in labels:
            self.vocab.strings.add(label)
        if has_heads(self.model):
            _drop_heads(self.model)
            self.cfg.pop("calibration", None)  # fitted to the weights being replaced
        self.cfg["labels"] = sorted(labels)
        set_tags(self.model, self.tags)
        sample = [eg.predicted for eg in islice(get_examples(), 10)]
        self.model.initialize(X=sample)
        self.cfg["width"] = self.model.get_dim("nI")

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()):
        """Load the pipe from bytes: labels first, so the CRF is sized before its weights."""
        msg = srsly.msgpack_loads(bytes_data)
        if "cfg" not in exclude and "cfg" in msg:
            self._load_cfg(srsly.json_loads(msg["cfg"]))
        if "vocab" not in exclude and "vocab" in msg:
            self.vocab.from_bytes(msg["vocab"], exclude=exclude)
        if "model" not in exclude and "model" in msg:
            self._build_for_loading()
            self._load_model(msg["model"], "bytes")
        return self

    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()):
        """Load the pipe from a directory: labels first, so the CRF is sized before its weights."""
        path = util.ensure_path(path)
        if "cfg" not in exclude and (path / "cfg").exists():
            self._load_cfg(srsly.read_json(path / "cfg"))
        if "vocab" not in exclude and (path / "vocab").exists():
            self.vocab.from_disk(path / "vocab", exclude=exclude)
        if "model" not in exclude:
            if not (path / "model").exists():
                raise ValueError(f"'{self.name}' has no saved model at {path / 'model'}")
            self._build_for_loading()
            self._load_model((path / "model").read_bytes(), str(path / "model"))
        return self

    def _load_cfg(self, saved: Dict[str, Any]) -> None:
        """Take the learned state from a saved cfg, keeping this pipe's `_SETTINGS`. A
        calibration map comes only from there: one fitted to the weights being replaced goes."""
        settings = {key: self.cfg[key] for key in _SETTINGS}
        self.cfg.pop("calibration", None)
        self.cfg.update(saved)
        self.cfg.update(settings)

    def _load_model(self, data: bytes, source: str) -> None:
        try:
            self.model.from_bytes(data)
        except Exception as err:
            # msgpack and thinc report a damaged file as e.g. "Unpack failed: incomplete input".
            raise ValueError(
                f"Could not load the '{self.name}' model weights from {source}: the data is "
                f"corrupt or truncated, or was saved with another architecture ({err})"
            ) from err

    def _build_for_loading(self) -> None:
        if has_heads(self.model):
            return
        if not self.labels or "width" not in self.cfg:
            raise ValueError(
                f"The saved '{self.name}' pipe has no labels or input width in its cfg: "
                "the directory is not a trained ner_crf pipe or is corrupt."
            )
        set_tags(self.model, self.tags)
        self.model.set_dim("nI", self.cfg["width"], force=True)
        build_heads(self.model)

    def _require_initialized(self) -> None:
        if not has_heads(self.model):
            raise ValueError(
                f"The '{self.name}' pipe is not initialized: call nlp.initialize() (or train "
                "it) before using it."
            )

    def _listener(self) -> Optional[TransformerListener]:
        """The transformer listener the model reads its token vectors from, if any."""
        return next((n for n in self.model.walk() if isinstance(n, TransformerListener)), None)

    def _require_transformer_output(self, docs: List[Doc]) -> None:
        """Raise if the model listens to a transformer that has not run on the docs: the
        listener would give zeros, hence no entities."""
        listener = self._listener()
        if listener is None:
            return
        has_data = Doc.has_extension("trf_data")
        if any(not has_data or doc._.trf_data is None for doc in docs if len(doc)):
            raise self._no_transformer_error(
                listener, "the docs have no transformer output (doc._.trf_data)"
            )

    def _no_transformer_error(self, listener: TransformerListener, problem: str) -> ValueError:
        upstream = listener.upstream_name
        source = "a transformer component" if upstream == "*" else f"the component '{upstream}'"
        return ValueError(
            f"The '{self.name}' pipe reads its token vectors from {source} placed before it in "
            f"the pipeline, but {problem}. Add one before it (nlp.add_pipe(\"transformer\", "
            f"before=\"{self.name}\"), or source both from a trained pipeline) and do not "
            f"exclude or disable it, or give '{self.name}' a token-vector layer of its own "
            "(its model.tok2vec)."
        )

    def _gold_ids(self, examples: List[Example], *, unknown_as_o: bool = False) -> List[Ints1d]:
        """Gold tag indices per example; a label the pipe does not know raises, or with
        `unknown_as_o` becomes O (the entity is missed)."""
        index = {tag: i for i, tag in enumerate(self.tags)}
        gold = []
        for eg in examples:
            tags = biluo_to_bio(eg.get_aligned_ner())
            if unknown_as_o:
                tags = [tag if tag in index else "O" for tag in tags]
            # Misaligned tokens ("-") become O; an I- they orphan starts its entity, so the gold
            # path is always one the constrained CRF allows.
            tags = repair_bio(tags)
            try:
                # Host arrays: the CRF's input conversion copies the batch to the device at once.
                gold.append(numpy.asarray([index[t] for t in tags], dtype="int64"))
            except KeyError as err:
                raise ValueError(
                    f"Entity tag {err} in a training doc is not among the labels of "
                    f"'{self.name}' {self.labels}: {eg.reference.text[:80]!r}"
                ) from None
        return gold


def _merge_keeping_existing(
    existing: Sequence[Span], predicted: Sequence[Span]
) -> Tuple[List[Span], List[Span]]:
    """The predicted entities that overlap no existing one, and the existing entities plus
    those, in order."""
    taken = set()
    for ent in existing:
        taken.update(range(ent.start, ent.end))
    kept = [s for s in predicted if not taken.intersection(range(s.start, s.end))]
    return kept, sorted([*existing, *kept], key=lambda s: s.start)


def _has_gold_ents(example: Example) -> bool:
    """Whether the reference has entity annotation (spaCy's test for missing annotation)."""
    return example.reference.has_annotation("ENT_IOB")


def _drop_heads(model: Model) -> None:
    """Remove the emitter and decoder, so that `initialize` builds them again."""
    heads = head_layers(model)
    model.layers[:] = [layer for layer in model.layers if all(layer is not h for h in heads)]
    for name in ("emitter", "decoder"):
        model.set_ref(name, None)
