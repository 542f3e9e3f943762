"""PyTorch shims that predict without switching the wrapped module's mode on every call.

thinc's `PyTorchShim.predict` (and so spacy-transformers' `HFShim`) puts the module in `eval()`
mode before each call and back in `train()` mode after it. Each switch visits every submodule
(about a hundred in a 6-layer encoder), and a pipe makes several calls per batch. These shims
switch only when the mode has to change: predicting leaves the module in eval mode, and
`begin_update` puts it back in train mode, as thinc's already does at each training step.
Everything else (serialization, devices, gradient scaling) is the base shim's.
"""
from typing import Any

import torch
from spacy_transformers.layers.hf_shim import HFShim
from thinc.api import ArgsKwargs, PyTorchShim


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


class EvalModeShim(_PredictInEvalMode, PyTorchShim):
    """thinc's `PyTorchShim`, predicting in eval mode without a switch per call."""


class HFEvalModeShim(_PredictInEvalMode, HFShim):
    """spacy-transformers' `HFShim`, predicting in eval mode without a switch per call."""
