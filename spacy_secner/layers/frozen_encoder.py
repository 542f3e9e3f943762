"""The encoder as a frozen TorchScript graph, for predicting on the CPU.

At batch 1 a 6-layer encoder's forward pass on a sentence is a few hundred small operations:
Python's module calls and the eager dispatch of each operation cost a large part of its time.
Traced and frozen, the same forward pass runs without the Python calls. The frozen graph's
constants are the encoder's own weight tensors, not copies: no memory beyond the graph itself.
It is not passed through `torch.jit.optimize_for_inference`, which stores every linear weight
again, transposed: 41 MiB more for the embedded MiniLM, and no faster on the CPU measured in
BENCHMARKS.md (`bench_speed.py grouping` compares the two on any machine).

The graph runs the eager encoder's operations on the same weights; the check below allows
float32 rounding between the two (confidences within about 1e-6). It is built on the first
prediction, from that batch, checked against the eager encoder on a batch of another shape (a
trace can fix a shape or a branch of the code it follows), and rebuilt when the weights may have
changed: freezing may fold values computed from them into the graph. Its key is the caller's
count of the steps that may change weights without torch seeing it (thinc's optimizers write
through arrays that share the weights' memory; `HFEvalModeShim` counts its updates and parameter
averages), with each parameter's storage and version (what `load_state_dict` or an in-place
torch operation changes). An encoder whose graph cannot be built or does not match falls back to
its eager forward pass, with a warning, once. Packed rows of windows (`packing.py`) are traced
with their window ids: the graph builds their attention mask itself.
"""
import operator
import warnings
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from transformers.file_utils import ModelOutput
from transformers.utils import logging as hf_logging

from .packing import encoder_kwargs

# The inputs a frozen graph takes, in this order (the last two for packed rows of windows,
# `packing.py`); a call with any other keyword is eager.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "window_ids")
# The largest difference allowed between the graph's and the eager encoder's outputs on the
# check batch; float32 rounding gives about 1e-5 on hidden states of size ~1-10.
CHECK_ATOL = 1e-3


class _Tupled(torch.nn.Module):
    """The encoder called with the given keywords and `return_dict=False`: a traceable forward
    with positional inputs and tuple outputs."""

    def __init__(self, encoder: torch.nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.names = tuple(names)

    def forward(self, *inputs: torch.Tensor) -> Tuple[Any, ...]:
        return self.encoder(**encoder_kwargs(dict(zip(self.names, inputs))), return_dict=False)


class FrozenGraph:
    """One encoder's frozen graph, with the key of the weights it was built from."""

    def __init__(
        self,
        encoder: torch.nn.Module,
        inputs: Dict[str, torch.Tensor],
        key: Any,
        modules: Sequence[torch.nn.Module],
    ) -> None:
        self.names = tuple(name for name in INPUT_NAMES if name in inputs)
        self.key = key
        self.modules = list(modules)
        self.dicts = tensor_dicts(self.modules)
        check = _check_inputs(inputs)
        verbosity = hf_logging.get_verbosity()
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about every Python value it records (and reads every attribute
            # of the model, which makes transformers log about its loss settings); the check
            # below is what tells whether the graph holds for other shapes.
            warnings.simplefilter("ignore")
            hf_logging.set_verbosity_error()
            try:
                traced = torch.jit.trace(
                    _Tupled(encoder, self.names).eval(), self._args(inputs), check_trace=False
                )
                self.graph = torch.jit.freeze(traced)
            finally:
                hf_logging.set_verbosity(verbosity)
            expected = encoder(**encoder_kwargs(check))
            got = self.graph(*self._args(check))
        self.output_type = type(expected)
        self.output_keys = list(expected.keys())
        if len(got) != len(self.output_keys):
            raise ValueError(f"{len(got)} outputs for {len(self.output_keys)} expected")
        for key, value in zip(self.output_keys, got):
            _assert_close(key, value, expected[key])

    def __call__(self, inputs: Dict[str, torch.Tensor]) -> ModelOutput:
        with torch.no_grad():
            outputs = self.graph(*self._args(inputs))
        return self.output_type(**dict(zip(self.output_keys, outputs)))

    def _args(self, inputs: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        return tuple(inputs[name] for name in self.names)


def tensor_dicts(modules: Sequence[torch.nn.Module]) -> List[Dict[str, Optional[torch.Tensor]]]:
    """The parameter and buffer dicts of `modules` (an encoder's), listed once: walking the
    module tree, or even the modules, at every call cost more than reading the tensors."""
    return [tensors for module in modules for tensors in (module._parameters, module._buffers)]


def parameter_key(
    dicts: Sequence[Dict[str, Optional[torch.Tensor]]]
) -> Tuple[Tuple[int, ...], ...]:
    """The storage and version of each parameter and buffer in `dicts` (`tensor_dicts`): any
    in-place change (an optimizer step, `load_state_dict`) or new tensor changes it."""
    tensors = [t for tensors in dicts for t in tensors.values() if t is not None]
    return tuple(map(torch.Tensor.data_ptr, tensors)), tuple(map(_VERSION, tensors))


_VERSION = operator.attrgetter("_version")


def frozen_forward(
    encoder: torch.nn.Module, inputs: Dict[str, Any], generation: int = 0
) -> Optional[ModelOutput]:
    """The encoder's outputs on `inputs` through its frozen graph (built or rebuilt as needed),
    or None where a graph does not apply: a module in training mode, gradients on, a device
    other than the CPU, inputs other than `INPUT_NAMES`, an empty batch, or an encoder whose
    graph failed.

    generation (int): The caller's count of weight changes torch does not see; a new value
        rebuilds the graph.
    """
    if (
        encoder.training
        or torch.is_grad_enabled()
        or not set(inputs) <= set(INPUT_NAMES)
        or "input_ids" not in inputs
        or any(not isinstance(v, torch.Tensor) or v.device.type != "cpu" for v in inputs.values())
        or inputs["input_ids"].numel() == 0  # nothing to trace on
    ):
        return None
    state = _GRAPHS.get(encoder)
    if state is _FAILED:
        return None
    names = tuple(name for name in INPUT_NAMES if name in inputs)
    modules = state.modules if state is not None else list(encoder.modules())
    dicts = state.dicts if state is not None else tensor_dicts(modules)
    key = (generation, parameter_key(dicts))
    if state is None or state.names != names or state.key != key:
        try:
            state = FrozenGraph(encoder, inputs, key, modules)
        except Exception as error:  # noqa: BLE001  (any failure means: stay eager)
            warnings.warn(
                f"The encoder ({type(encoder).__name__}) predicts eagerly: its frozen "
                f"TorchScript graph could not be used ({type(error).__name__}: {error})."
            )
            _GRAPHS[encoder] = _FAILED
            return None
        # Held beside the encoder, not on it or its shim: copies, pickles and saved
        # pipelines never carry a graph.
        _GRAPHS[encoder] = state
    return state(inputs)


def drop_graph(encoder: torch.nn.Module) -> None:
    """Forget the encoder's frozen graph (and a failure to build one)."""
    _GRAPHS.pop(encoder, None)


_FAILED: Any = object()
_GRAPHS: "weakref.WeakKeyDictionary[torch.nn.Module, Any]" = weakref.WeakKeyDictionary()


def _check_inputs(inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A batch of another shape than `inputs`: one more row, 3 more wordpieces, the new row
    padded (mask 0) past the length of the first, so that a graph which fixed the batch size,
    the length or the absence of padding does not pass."""
    n, length = inputs["input_ids"].shape
    grown: Dict[str, torch.Tensor] = {}
    for name, value in inputs.items():
        # The new columns repeat each row's last one (its mask too).
        rows = torch.cat([value, value[:1]], 0)
        grown[name] = torch.cat([rows, rows[:, -1:].expand(-1, 3)], 1).contiguous()
    if "attention_mask" in grown:
        grown["attention_mask"][n, max(1, length // 2) :] = 0
    return grown


def _assert_close(key: str, got: Any, expected: Any) -> None:
    if isinstance(expected, (tuple, list)):
        if len(got) != len(expected):
            raise ValueError(f"{key}: {len(got)} tensors for {len(expected)}")
        for g, e in zip(got, expected):
            _assert_close(key, g, e)
        return
    if got.shape != expected.shape:
        raise ValueError(f"{key}: shape {tuple(got.shape)} for {tuple(expected.shape)}")
    diff = float((got - expected).abs().max()) if got.numel() else 0.0
    if not diff <= CHECK_ATOL:
        raise ValueError(f"{key} differs from the eager encoder's by {diff:.3g}")
