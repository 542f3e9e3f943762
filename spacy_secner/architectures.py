"""Registered model builders: token vectors -> BiLSTM -> emission scores -> BIO CRF."""
import math
from io import BytesIO
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import ArgsKwargs, Model, PyTorchWrapper_v3, torch2xp, xp2torch
from thinc.types import Floats2d, Ints1d, Ragged

from .bio import entity_bounds
from .pytorch_bilstm_crf import BIOCRF, BiLSTMEmitter, SoftmaxTagger, lengths_to_mask


@registry.architectures("spacy-secner.TransformerBiLSTMCRF.v1")
def build_bilstm_crf_model(
    tok2vec: Model[List[Doc], List[Floats2d]],
    *,
    hidden_size: int = 256,
    depth: int = 1,
    dropout: float = 0.0,
    constrained: bool = True,
    nO: Optional[int] = None,
) -> Model[List[Doc], List[Floats2d]]:
    """Build the `ner_crf` model: per-token vectors, a BiLSTM, linear emissions and a CRF.

    tok2vec (Model[List[Doc], List[Floats2d]]): One vector per spaCy token, e.g. a
        `spacy-transformers.TransformerListener.v1` (pooling `spacy-secner.reduce_first.v1`
        keeps the first wordpiece of each word, `reduce_mean.v1` averages them) or spaCy's own
        CNN tok2vec.
    hidden_size (int): LSTM units per direction.
    depth (int): Stacked BiLSTM layers; 0 puts the linear layer straight on the token vectors.
    dropout (float): Dropout before the linear layer (and between stacked LSTM layers).
    constrained (bool): Forbid invalid BIO transitions in the CRF, in training and decoding.
    nO (Optional[int]): Number of BIO tags; set by the pipe from its labels.
    RETURNS (Model[List[Doc], List[Floats2d]]): Emission scores per token. The CRF that turns
        them into a loss or tags is the sublayer under the ref "crf"; see `crf_loss`/`crf_decode`.

    The BiLSTM's input width and the CRF's tags are only known at initialization, so both
    torch modules are built then (or by `build_heads` before weights are loaded).
    """
    return Model(
        "bilstm_crf",
        forward,
        init=init,
        layers=[tok2vec],
        refs={"tok2vec": tok2vec},
        dims={"nI": None, "nO": nO},
        attrs={
            "hidden_size": hidden_size,
            "depth": depth,
            "dropout": dropout,
            "constrained": constrained,
            "decoder": "crf",
            "tags": None,
        },
    )


@registry.architectures("spacy-secner.TransformerSoftmax.v1")
def build_softmax_model(
    tok2vec: Model[List[Doc], List[Floats2d]],
    *,
    dropout: float = 0.0,
    nO: Optional[int] = None,
) -> Model[List[Doc], List[Floats2d]]:
    """The plain token classifier: a linear layer over the token vectors and a softmax per
    token, with no BiLSTM and no CRF (the usual Hugging Face fine-tune, as a `ner_crf` model).

    tok2vec (Model[List[Doc], List[Floats2d]]): One vector per spaCy token.
    dropout (float): Dropout before the linear layer.
    nO (Optional[int]): Number of BIO tags; set by the pipe from its labels.
    RETURNS (Model[List[Doc], List[Floats2d]]): Emission scores per token, to be read by the
        `SoftmaxTagger` under the ref "crf" (token cross-entropy, argmax decoding).
    """
    model = build_bilstm_crf_model(tok2vec, depth=0, dropout=dropout, constrained=False, nO=nO)
    model.attrs["decoder"] = "softmax"
    return model


@registry.layers("spacy-secner.reduce_first.v1")
def reduce_first_or_zeros() -> Model[Ragged, Floats2d]:
    """Pool each token's wordpieces to the first one, and a token with none to zeros.

    thinc's `reduce_first.v1` rejects empty sequences, but whitespace tokens (a double space, a
    line break in a report) get no wordpiece from the transformer, so raw text would crash it.
    """
    return Model("reduce_first_or_zeros", _reduce_first_forward)


def _reduce_first_forward(
    model: Model[Ragged, Floats2d], Xr: Ragged, is_train: bool
) -> Tuple[Floats2d, Callable]:
    xp = model.ops.xp
    X = Xr.dataXd
    lengths = xp.asarray(Xr.lengths)
    nonempty = xp.nonzero(lengths)[0]
    firsts = (xp.cumsum(lengths) - lengths)[nonempty]
    Y = model.ops.alloc2f(len(lengths), X.shape[1])
    Y[nonempty] = X[firsts]

    def backprop(dY: Floats2d) -> Ragged:
        dX = model.ops.alloc2f(*X.shape)
        dX[firsts] = dY[nonempty]
        return Ragged(dX, Xr.lengths)

    return Y, backprop


def forward(
    model: Model[List[Doc], List[Floats2d]], docs: List[Doc], is_train: bool
) -> Tuple[List[Floats2d], Callable]:
    tokvecs, backprop_tok2vec = model.get_ref("tok2vec")(docs, is_train)
    scores, backprop_emitter = _on_nonempty(model.get_ref("emitter"), tokvecs, is_train)

    def backprop(d_scores: List[Floats2d]) -> Any:
        return backprop_tok2vec(backprop_emitter(d_scores))

    return scores, backprop


def init(model: Model, X: Optional[List[Doc]] = None, Y: Optional[Any] = None) -> None:
    tok2vec = model.get_ref("tok2vec")
    if X is not None:
        tok2vec.initialize(X=X)
        # A listener only knows its width once its upstream transformer is set up, so ask
        # the layer itself rather than the config, with a non-empty doc (a listener cannot
        # pool a batch of empty docs).
        sample = [doc for doc in X if len(doc)][:1] or X[:1]
        model.set_dim("nI", tok2vec.predict(sample)[0].shape[1], force=True)
    build_heads(model)


def set_tags(model: Model, tags: Sequence[str]) -> None:
    """Tell the model its BIO tag set (before `initialize` or `build_heads`)."""
    model.attrs["tags"] = list(tags)
    model.set_dim("nO", len(tags), force=True)


def has_heads(model: Model) -> bool:
    return model.has_ref("crf")


def build_heads(model: Model) -> None:
    """Create the BiLSTM emitter and the CRF for the model's width and tags.

    Called by `init`, and by the pipe before it reads saved weights, as thinc only loads
    weights into layers that already exist.
    """
    if has_heads(model):
        raise ValueError("The ner_crf model is already built; it cannot be resized.")
    tags = model.attrs["tags"]
    if not tags or not model.has_dim("nI"):
        raise ValueError(
            "The ner_crf model needs its tags and input width before it is built: "
            "initialize the pipe (nlp.initialize) or load a trained pipeline."
        )
    emitter = PyTorchWrapper_v3(
        BiLSTMEmitter(
            model.get_dim("nI"),
            len(tags),
            hidden_size=model.attrs["hidden_size"],
            depth=model.attrs["depth"],
            dropout=model.attrs["dropout"],
        ),
        convert_inputs=_emitter_inputs,
        convert_outputs=_emitter_outputs,
        deserialize_model=_load_state_dict,
    )
    decoder = model.attrs.get("decoder", "crf")
    crf = PyTorchWrapper_v3(
        SoftmaxTagger()
        if decoder == "softmax"
        else BIOCRF(tags, constrained=model.attrs["constrained"]),
        convert_inputs=_crf_inputs,
        convert_outputs=_crf_outputs,
        deserialize_model=_load_state_dict,
    )
    emitter.set_dim("nI", model.get_dim("nI"))
    emitter.set_dim("nO", len(tags))
    for name, layer in (("emitter", emitter), ("crf", crf)):
        model.layers.append(layer)
        model.set_ref(name, layer)


def crf_loss(
    model: Model, scores: List[Floats2d], gold: List[Ints1d]
) -> Tuple[float, List[Floats2d]]:
    """Mean CRF negative log-likelihood per sequence and its gradient for the scores.

    The CRF's own transition gradients are accumulated too, and are applied by the next
    `finish_update`, like every other weight of the model.
    """
    crf = model.get_ref("crf")
    keep = [i for i, s in enumerate(scores) if len(s)]
    d_scores = [model.ops.alloc2f(*s.shape) for s in scores]
    if not keep:
        return 0.0, d_scores
    loss, backprop = crf.begin_update(([scores[i] for i in keep], [gold[i] for i in keep], None))
    for i, d in zip(keep, backprop(1.0)):
        d_scores[i] = d
    return loss, d_scores


def crf_nll(model: Model, scores: List[Floats2d], gold: List[Ints1d]) -> float:
    """Mean CRF negative log-likelihood per sequence, without gradients (e.g. a dev loss)."""
    keep = [i for i, s in enumerate(scores) if len(s)]
    if not keep:
        return 0.0
    return model.get_ref("crf").predict(([scores[i] for i in keep], [gold[i] for i in keep], None))


def crf_decode(model: Model, scores: List[Floats2d]) -> List[Ints1d]:
    """Best tag sequence for each doc (Viterbi), as tag indices in host (numpy) arrays."""
    keep = [i for i, s in enumerate(scores) if len(s)]
    paths = [numpy.zeros((0,), dtype="int64") for _ in scores]
    if keep:
        crf = model.get_ref("crf")
        for i, path in zip(keep, crf.predict(([scores[i] for i in keep], None, None))):
            paths[i] = path
    return paths


def crf_span_confidence(
    model: Model, scores: List[Floats2d], paths: List[Ints1d]
) -> List[List[float]]:
    """The CRF's marginal probability of each decoded entity, per doc in entity order.

    P(tokens i..j-1 form exactly this entity) sums the probability of every tag sequence that
    agrees with the entity: its own tags inside and no `I-X` right after it (which would
    extend it). One forward-backward pass over the batch gives all of them.
    """
    tags = model.attrs["tags"]
    inside = {i: tags.index("I-" + tag[2:]) for i, tag in enumerate(tags) if tag != "O"}
    keep = [i for i, s in enumerate(scores) if len(s)]
    spans = []
    for row, doc_i in enumerate(keep):
        path = paths[doc_i].tolist()
        for start, end in entity_bounds([tags[t] for t in path]):
            spans.append((row, start, end, inside[path[start]]))
    confidences: List[List[float]] = [[] for _ in scores]
    if not spans:
        return confidences
    X = ([scores[i] for i in keep], [paths[i] for i in keep], numpy.asarray(spans, dtype="int64"))
    log_probs = model.get_ref("crf").predict(X)
    for (row, *_), log_p in zip(spans, log_probs.tolist()):
        confidences[keep[row]].append(min(1.0, math.exp(log_p)))
    return confidences


def _on_nonempty(
    layer: Model, Xs: List[Floats2d], is_train: bool
) -> Tuple[List[Floats2d], Callable]:
    """Run `layer` on the non-empty sequences only: packing and the CRF reject length 0."""
    keep = [i for i, x in enumerate(Xs) if len(x)]
    n_out = layer.get_dim("nO")
    Ys = [layer.ops.alloc2f(0, n_out) for _ in Xs]
    backprop_layer = None
    if keep:
        Ys_keep, backprop_layer = layer([Xs[i] for i in keep], is_train)
        for i, y in zip(keep, Ys_keep):
            Ys[i] = y

    def backprop(dYs: List[Floats2d]) -> List[Floats2d]:
        dXs = [layer.ops.alloc2f(*x.shape) for x in Xs]
        if backprop_layer is not None:
            for i, dx in zip(keep, backprop_layer([dYs[i] for i in keep])):
                dXs[i] = dx
        return dXs

    return Ys, backprop


def _emitter_inputs(
    model: Model, Xs: List[Floats2d], is_train: bool
) -> Tuple[ArgsKwargs, Callable]:
    lengths = [len(x) for x in Xs]
    device = model.shims[0].device
    X = xp2torch(model.ops.pad(Xs), requires_grad=is_train, device=device)

    def backprop(d_inputs: ArgsKwargs) -> List[Floats2d]:
        return model.ops.unpad(torch2xp(d_inputs.args[0]), lengths)

    return ArgsKwargs(args=(X, torch.tensor(lengths, device=device)), kwargs={}), backprop


def _emitter_outputs(
    model: Model, inputs_outputs: Tuple[List[Floats2d], torch.Tensor], is_train: bool
) -> Tuple[List[Floats2d], Callable]:
    Xs, Y = inputs_outputs
    lengths = [len(x) for x in Xs]

    def backprop(dYs: List[Floats2d]) -> ArgsKwargs:
        dY = xp2torch(model.ops.pad(dYs), device=Y.device)
        return ArgsKwargs(args=(Y,), kwargs={"grad_tensors": dY})

    return model.ops.unpad(torch2xp(Y), lengths), backprop


def _crf_inputs(
    model: Model, X: Tuple[List[Floats2d], Optional[List[Ints1d]], Any], is_train: bool
) -> Tuple[ArgsKwargs, Callable]:
    """X: scores, gold or decoded tags (None to decode), and what to compute from the tags:
    None for the mean NLL, True for one NLL per sequence, or (n, 4) span rows for their
    log-probabilities."""
    scores, gold, what = X
    lengths = [len(s) for s in scores]
    device = model.shims[0].device
    emissions = xp2torch(model.ops.pad(scores), requires_grad=is_train, device=device)
    mask = lengths_to_mask(torch.tensor(lengths, device=device), emissions.shape[1])
    kwargs = {}
    if gold is not None:
        # Filled on the host and copied once: one copy per sequence would each wait for a GPU.
        tags = numpy.zeros(tuple(mask.shape), dtype="int64")
        for i, g in enumerate(gold):
            tags[i, : len(g)] = model.ops.to_numpy(g)
        kwargs["tags"] = torch.from_numpy(tags).to(device)
        if what is True:
            kwargs["per_sequence"] = True
        elif what is not None:
            spans = numpy.asarray(model.ops.to_numpy(what), dtype="int64")
            kwargs["spans"] = torch.from_numpy(spans).to(device)

    def backprop(d_inputs: ArgsKwargs) -> List[Floats2d]:
        return model.ops.unpad(torch2xp(d_inputs.args[0]), lengths)

    return ArgsKwargs(args=(emissions, mask), kwargs=kwargs), backprop


def _crf_outputs(
    model: Model, inputs_outputs: Tuple[Any, torch.Tensor], is_train: bool
) -> Tuple[Any, Callable]:
    (scores, gold, what), Y = inputs_outputs

    def backprop(d_loss: float) -> ArgsKwargs:
        return ArgsKwargs(args=(Y,), kwargs={"grad_tensors": torch.tensor(d_loss, device=Y.device)})

    if gold is not None and what is not None:
        return Y.detach().cpu().numpy(), backprop
    if gold is not None:
        return float(Y.detach()), backprop
    # The tags go to the host once per batch: the pipe reads them there.
    paths = Y.cpu().numpy()
    return [paths[i, : len(s)] for i, s in enumerate(scores)], backprop


def _load_state_dict(module: torch.nn.Module, data: bytes, device: torch.device) -> Any:
    """Load weights as a plain state dict: never unpickle arbitrary objects from model files."""
    try:
        state = torch.load(BytesIO(data), map_location=device, weights_only=True)
        module.load_state_dict(state)
    except Exception as err:
        raise ValueError(
            f"Could not load the weights of {type(module).__name__}: the model files are corrupt "
            f"or were saved with another architecture or label set ({err})"
        ) from err
    return module.to(device)
