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

Both update all their parameters at once with thinc's Adam arithmetic (`adam_step.py`)
instead of calling the optimizer once per parameter, and `HFEvalModeShim` loads a saved encoder
without building it with random weights first (see its `from_bytes`). Everything else
(devices, gradient scaling) is the base shim's.
"""
import contextlib
from io import BytesIO
from pathlib import Path
from typing import Any, Dict, Iterator

import srsly
import torch
from spacy.util import SimpleFrozenDict
from spacy_transformers.data_classes import HFObjects
from spacy_transformers.layers.hf_shim import HFShim
from spacy_transformers.util import make_tempdir
from thinc.api import ArgsKwargs, Optimizer, PyTorchShim, get_torch_default_device, xp2torch

from .adam_step import AdamState, fused_adam_step, fused_adam_supported
from .frozen_encoder import frozen_forward
from .packing import encoder_kwargs


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


class _FusedAdamUpdate:
    """`finish_update` for a `PyTorchShim` subclass: one fused Adam step for the whole module
    (`adam_step.fused_adam_step`) where the optimizer allows it, thinc's loop otherwise."""

    # False keeps thinc's per-parameter loop (for comparisons).
    fused_adam = True

    id: int
    _model: torch.nn.Module
    _grad_scaler: Any

    def finish_update(self, optimizer: Optimizer) -> None:
        if not (self.fused_adam and fused_adam_supported(optimizer)):
            super().finish_update(optimizer)  # type: ignore[misc]
            return
        # A new optimizer's counts start at zero, and `fused_adam_step` then starts the
        # moments from zeros too, as thinc's would.
        state: AdamState = self.__dict__.setdefault("_adam_state", {})
        params = list(self._model.named_parameters())
        if self._grad_scaler.found_inf:
            # As thinc: an overflow in mixed precision skips the update.
            for _, param in params:
                if param.grad is not None:
                    param.grad.zero_()
        else:
            fused_adam_step(optimizer, self.id, params, state)
        self._grad_scaler.update()


class _FirstParameterDevice:
    """`device` for a `PyTorchShim` subclass: the device of the module's first parameter, as
    thinc's, found again by one dict lookup: thinc walks the module tree at every call, and
    the pipes ask a few times per batch (tens of microseconds each for one sentence)."""

    _model: torch.nn.Module

    @property
    def device(self) -> Any:
        found = self.__dict__.get("_first_parameter")
        if found is not None:
            model, owner, name, tensor = found
            if model is self._model and owner._parameters.get(name) is tensor:
                return tensor.device
        for owner in self._model.modules():
            for name, tensor in owner._parameters.items():
                if tensor is not None:
                    self.__dict__["_first_parameter"] = (self._model, owner, name, tensor)
                    return tensor.device
        return get_torch_default_device()


class EvalModeShim(
    _FirstParameterDevice, _PredictInEvalMode, _AveragedParams, _FusedAdamUpdate, PyTorchShim
):
    """thinc's `PyTorchShim`, predicting in eval mode without a switch per call, and using the
    optimizer's parameter averages."""


class HFEvalModeShim(
    _FirstParameterDevice, _PredictInEvalMode, _AveragedParams, _FusedAdamUpdate, HFShim
):
    """spacy-transformers' `HFShim`, predicting in eval mode without a switch per call, using
    the optimizer's parameter averages, and loading the saved weights as the encoder's own.
    With `frozen_inference`, it predicts on the CPU through the encoder's frozen TorchScript
    graph (`frozen_encoder.py`). It takes packed rows of windows (`packing.py`): inputs with
    `window_ids` and `position_ids`."""

    frozen_inference = False
    accepts_packed_rows = True
    # Counts the calls that may change the weights without torch seeing it (thinc writes
    # them through arrays that share their memory): a frozen graph is rebuilt after any.
    _weights_generation = 0

    def predict(self, inputs: ArgsKwargs) -> Any:
        if self.frozen_inference and not inputs.args and not self._mixed_precision:
            if self._model.training:
                self._model.eval()
            with torch.no_grad():
                output = frozen_forward(self._model, inputs.kwargs, self._weights_generation)
            if output is not None:
                return output
        return super().predict(ArgsKwargs(inputs.args, encoder_kwargs(inputs.kwargs)))

    def begin_update(self, inputs: ArgsKwargs) -> Any:
        self._weights_generation += 1
        return super().begin_update(ArgsKwargs(inputs.args, encoder_kwargs(inputs.kwargs)))

    def finish_update(self, optimizer: Optimizer) -> None:
        super().finish_update(optimizer)
        self._weights_generation += 1

    @contextlib.contextmanager
    def use_params(self, params: Dict[Any, Any]) -> Iterator[None]:
        self._weights_generation += 1
        try:
            with super().use_params(params):
                yield
        finally:
            self._weights_generation += 1

    def from_bytes(self, bytes_data: bytes) -> "HFEvalModeShim":
        """What `HFShim.from_bytes` loads, with one copy of the weights less at its peak.

        The base class builds the encoder with random weights and copies the saved ones into
        them while the serialized bytes are still held, so `spacy.load` briefly holds the
        weights once more than it needs (87 MiB for the embedded MiniLM) and draws random
        weights it throws away. Here the encoder is built without weights and takes the loaded tensors
        as they are (`load_state_dict(assign=True)`). A shim saved before initialization, or a
        state that does not match the encoder exactly, takes the base class's path.
        """
        from transformers.integrations.accelerate import init_empty_weights
        from transformers.modeling_utils import no_init_weights

        msg = srsly.msgpack_loads(bytes_data)
        if not msg["config"]:
            return super().from_bytes(bytes_data)
        tok_dict = dict(msg["tokenizer"])
        tok_kwargs = tok_dict.pop("kwargs", {})
        with make_tempdir() as temp_dir:
            config_file = temp_dir / "config.json"
            srsly.write_json(config_file, msg["config"])
            config = self.config_cls.from_pretrained(config_file)
            for name, data in tok_dict.items():
                Path(temp_dir / name).write_bytes(data)
            tokenizer = self.tokenizer_cls.from_pretrained(str(temp_dir.absolute()), **tok_kwargs)
            vocab_file_contents = None
            if hasattr(tokenizer, "vocab_file"):
                vocab_file = temp_dir / tokenizer.vocab_files_names["vocab_file"]
                vocab_file_contents = vocab_file.read_bytes()
        # Parameters on the meta device, buffers (position ids) built as usual.
        with init_empty_weights(include_buffers=False), no_init_weights():
            transformer = self.model_cls.from_config(config)
        device = get_torch_default_device()
        state = torch.load(BytesIO(msg.pop("state")), map_location=device)
        del msg
        try:
            transformer.load_state_dict(state, assign=True)
        except RuntimeError:
            # spacy-transformers warns and loads what matches: its path, with its message.
            return super().from_bytes(bytes_data)
        del state
        transformer.tie_weights()
        if any(t.is_meta for t in (*transformer.parameters(), *transformer.buffers())):
            return super().from_bytes(bytes_data)
        self._hfmodel = HFObjects(
            tokenizer, transformer, vocab_file_contents, SimpleFrozenDict(), SimpleFrozenDict()
        )
        self._model = transformer
        self._model.to(device)
        return self
