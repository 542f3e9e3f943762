"""The `ner_crf` model as a thinc layer: token vectors -> BiLSTM emitter -> CRF (or softmax).

The layer's output is the emission scores per token; its decoder (the CRF, whose transitions
are weights, or a weightless softmax) turns scores into a loss, tags or span probabilities
through the functions of `crf.py`. The BiLSTM's input width and the tag set are only known at
initialization, so both torch modules are built then, or by `build_heads` before saved weights
are read (thinc only loads weights into layers that exist).
"""
from io import BytesIO
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.tokens import Doc
from thinc.api import ArgsKwargs, Model, torch2xp, xp2torch
from thinc.layers.pytorchwrapper import forward as pytorch_forward
from thinc.types import Floats2d, Ints1d

from ..pytorch_bilstm_crf import BIOCRF, BiLSTMEmitter, SoftmaxTagger, lengths_to_mask
from .shims import EvalModeShim

DECODERS = ("crf", "softmax")


def bilstm_crf_model(
    tok2vec: Model[List[Doc], List[Floats2d]],
    *,
    hidden_size: int,
    depth: int,
    dropout: float,
    constrained: bool,
    decoder: str = "crf",
    nO: Optional[int] = None,
) -> Model[List[Doc], List[Floats2d]]:
    """Emission scores per token from `tok2vec`, decoded by a CRF or a per-token softmax.

    decoder (str): "crf" (pytorch-crf's linear-chain CRF, BIO-constrained if `constrained`) or
        "softmax" (independent tokens: the plain token classifier).
    """
    if decoder not in DECODERS:
        raise ValueError(f"Unknown decoder {decoder!r}: expected one of {DECODERS}")
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
            "decoder": decoder,
            "tags": None,
        },
    )


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
    """Whether the emitter and decoder exist (the model is initialized or loaded)."""
    return model.has_ref("decoder")


def head_layers(model: Model) -> List[Model]:
    """The layers above the token vectors: the emitter and the decoder."""
    return [model.get_ref("emitter"), model.get_ref("decoder")]


def build_heads(model: Model) -> None:
    """Create the BiLSTM emitter and the decoder for the model's width and tags."""
    if has_heads(model):
        raise ValueError("The ner_crf model is already built; it cannot be resized.")
    tags = model.attrs["tags"]
    if not tags or not model.has_dim("nI"):
        raise ValueError(
            "The ner_crf model needs its tags and input width before it is built: "
            "initialize the pipe (nlp.initialize) or load a trained pipeline."
        )
    emitter = _torch_layer(
        BiLSTMEmitter(
            model.get_dim("nI"),
            len(tags),
            hidden_size=model.attrs["hidden_size"],
            depth=model.attrs["depth"],
            dropout=model.attrs["dropout"],
        ),
        convert_inputs=_emitter_inputs,
        convert_outputs=_emitter_outputs,
    )
    if model.attrs["decoder"] == "softmax":
        module: torch.nn.Module = SoftmaxTagger(tags)
    else:
        module = BIOCRF(tags, constrained=model.attrs["constrained"])
    decoder = _torch_layer(module, convert_inputs=_decoder_inputs, convert_outputs=_decoder_outputs)
    emitter.set_dim("nI", model.get_dim("nI"))
    emitter.set_dim("nO", len(tags))
    # The order of `layers` is the order of the saved weights: emitter, then decoder.
    for name, layer in (("emitter", emitter), ("decoder", decoder)):
        model.layers.append(layer)
        model.set_ref(name, layer)


def _torch_layer(
    module: torch.nn.Module, *, convert_inputs: Callable, convert_outputs: Callable
) -> Model:
    """thinc's `PyTorchWrapper_v3` around `module` (same layer name, attributes, dimensions and
    serialization), with a shim that does not switch the module's mode at every prediction,
    and weights read as plain state dicts."""
    return Model(
        "pytorch",
        pytorch_forward,
        attrs={"convert_inputs": convert_inputs, "convert_outputs": convert_outputs},
        shims=[EvalModeShim(module, deserialize_model=_load_state_dict)],
        dims={"nI": None, "nO": None},
    )


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


def _decoder_inputs(
    model: Model, X: Tuple[List[Floats2d], Optional[List[Ints1d]], Any], is_train: bool
) -> Tuple[ArgsKwargs, Callable]:
    """X: scores, gold or decoded tags (None to decode), and what to compute: with tags, None
    for the mean NLL, True for one NLL per sequence, or (n, 4) span rows for their
    log-probabilities; without tags, None for the best paths, or "entities" or "confidences"
    for the best paths, their entities and (with "confidences") the entities' probabilities."""
    scores, gold, what = X
    lengths = [len(s) for s in scores]
    device = model.shims[0].device
    emissions = xp2torch(model.ops.pad(scores), requires_grad=is_train, device=device)
    mask = lengths_to_mask(torch.tensor(lengths, device=device), emissions.shape[1])
    kwargs: Dict[str, Any] = {}
    if gold is None and what is not None:
        kwargs = {"entities": True, "confidence": what == "confidences"}
    elif gold is not None:
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


def _decoder_outputs(
    model: Model, inputs_outputs: Tuple[Any, torch.Tensor], is_train: bool
) -> Tuple[Any, Callable]:
    (scores, gold, what), Y = inputs_outputs

    def backprop(d_loss: float) -> ArgsKwargs:
        return ArgsKwargs(args=(Y,), kwargs={"grad_tensors": torch.tensor(d_loss, device=Y.device)})

    if gold is None and what is not None:
        # Paths, entities and probabilities, already on the host.
        return tuple(y.numpy() for y in Y), backprop
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
