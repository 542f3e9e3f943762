"""PyTorch shims that predict without switching the wrapped module's mode on every call.

thinc's `PyTorchShim.predict` (and so spacy-transformers' `HFShim`) puts the module in `eval()`
mode before each call and back in `train()` mode after it. Each switch visits every submodule
(about a hundred in a 6-layer encoder), and a pipe makes several calls per batch. These shims
switch only when the mode has to change: predicting leaves the module in eval mode, and
`begin_update` puts it back in train mode, as thinc's already does at each training step.

They also make the optimizer's parameter averages (`use_averages = true`) reach the module.
thinc's optimizer keys a shim's parameters as `(shim id, parameter name)`, while
`PyTorchShim.use_params` looks for string keys `"pytorch_<id>_<name>"`, so spaCy's evaluation
and saving "with the averages" silently used the current weights instead.

Everything else (serialization, devices, gradient scaling) is the base shim's.
"""
import contextlib
from typing import Any, Dict, Iterator

import torch
from spacy_transformers.layers.hf_shim import HFShim
from thinc.api import ArgsKwargs, PyTorchShim, xp2torch


class _PredictInEvalMode:
    """`predict` for a `PyTorchShim` subclass: no gradients, eval mode, switched only if needed."""

    _model: torch.nn.Module
    _mixed_precision: bool

    def predict(self, inputs: ArgsKwargs) -> Any:
        if self._model.training:
            self._model.eval()
        with torch.no_grad():
            with torch.autocast(device_type="cuda", enabled=self._mixed_precision):
                return self._model(*inputs.args, **inputs.kwargs)


class _AveragedParams:
    """`use_params` for a `PyTorchShim` subclass that finds the optimizer's own keys."""

    id: int
    device: Any
    _model: torch.nn.Module

    @contextlib.contextmanager
    def use_params(self, params: Dict[Any, Any]) -> Iterator[None]:
        state = {
            name: xp2torch(params[(self.id, name)], device=self.device)
            for name, _ in self._model.named_parameters()
            if (self.id, name) in params
        }
        if not state:
            with super().use_params(params):  # type: ignore[misc]
                yield
            return
        backup = {name: value.detach().clone() for name, value in self._model.state_dict().items()}
        # Parameters the optimizer never updated (frozen ones) keep their values.
        self._model.load_state_dict(state, strict=False)
        try:
            yield
        finally:
            self._model.load_state_dict(backup)


class EvalModeShim(_PredictInEvalMode, _AveragedParams, PyTorchShim):
    """thinc's `PyTorchShim`, predicting in eval mode without a switch per call, and using the
    optimizer's parameter averages."""


class HFEvalModeShim(_PredictInEvalMode, _AveragedParams, HFShim):
    """spacy-transformers' `HFShim`, predicting in eval mode without a switch per call, and
    using the optimizer's parameter averages."""
