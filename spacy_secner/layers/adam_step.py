"""thinc's Adam update for all the parameters of a PyTorch module at once.

thinc's `PyTorchShim.finish_update` calls the optimizer once per parameter (116 for the
MiniLM pipeline): two array conversions, a norm for gradient clipping that is compared on the
host (on a GPU, one device synchronisation per parameter), the update kernel, and a conversion
back. `fused_adam_step` computes the same update with PyTorch's fused Adam kernel (what
`torch.optim.Adam(fused=True)` runs) and multi-tensor (`_foreach`) operations: a handful of
calls per module, none of which waits for the device.

The arithmetic is thinc's `Optimizer.__call__` with Adam (`ops.adam`), term for term: per
parameter, the gradient is clipped to `grad_clip` by its own norm, the moments are
`m = b1 m + (1 - b1) g` and `v = b2 v + (1 - b2) g^2`, and the weights move by
`lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`, with `t` the parameter's own update
count. Results agree with thinc's to float32 rounding. For optimizers it does not cover (RAdam,
parameter averages, no momentum) `fused_adam_supported` is False, and the shims keep thinc's
loop.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from thinc.api import Optimizer

# Moments and update count of one module's parameters, by parameter name.
AdamState = Dict[str, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def fused_adam_supported(optimizer: Optimizer) -> bool:
    """Whether `fused_adam_step` computes what `optimizer` would."""
    return (
        type(optimizer) is Optimizer
        and optimizer.averages is None
        and not optimizer.use_radam
        and optimizer.b1 > 0.0
        and optimizer.b2 > 0.0
    )


@torch.no_grad()
def fused_adam_step(
    optimizer: Optimizer,
    shim_id: int,
    named_params: Sequence[Tuple[str, torch.nn.Parameter]],
    state: AdamState,
) -> None:
    """Update the parameters that have a gradient in place, as `optimizer` would one by one,
    and zero their gradients. `state` holds the moments and step counts between calls (empty:
    a new optimizer); the counts follow the optimizer's own (`nr_update`, keyed as thinc keys
    them), so schedules and bias correction see what they would see on thinc's path."""
    # Parameters by update count: the bias correction below is one number per call.
    groups: Dict[int, Tuple[List[torch.Tensor], ...]] = {}
    for name, param in named_params:
        if param.grad is None or param.numel() == 0:
            continue
        key = (shim_id, name)
        optimizer.nr_update[key] += 1
        count = optimizer.nr_update[key]
        if count == 1 or name not in state:
            state[name] = (
                torch.zeros_like(param),
                torch.zeros_like(param),
                torch.zeros((), dtype=torch.float32, device=param.device),
            )
        group = groups.setdefault(count, ([], [], [], [], []))
        for values, value in zip(group, (param.data, param.grad, *state[name])):
            values.append(value)
    if not groups:
        return
    learn_rate, b1, b2, clip = optimizer.learn_rate, optimizer.b1, optimizer.b2, optimizer.grad_clip
    for count, (params, grads, mom1, mom2, steps) in groups.items():
        if optimizer.L2 != 0 and not optimizer.L2_is_weight_decay:
            torch._foreach_add_(grads, params, alpha=optimizer.L2)
        if clip:
            # Each gradient clipped by its own norm, decided on the device.
            norms = torch.stack(torch._foreach_norm(grads))
            factors = torch.where(norms >= clip, clip / norms, 1.0).to(grads[0].dtype)
            torch._foreach_mul_(grads, list(factors.unbind(0)))
        torch._foreach_add_(steps, 1.0)
        # PyTorch's fused Adam divides sqrt(v) by sqrt(1 - b2^t) before adding eps, thinc adds
        # eps first and scales the step: the same update with eps / sqrt(1 - b2^t) here.
        torch._fused_adam_(
            params,
            grads,
            mom1,
            mom2,
            [],
            steps,
            lr=learn_rate,
            beta1=b1,
            beta2=b2,
            weight_decay=0.0,
            eps=optimizer.eps / (1.0 - b2**count) ** 0.5,
            amsgrad=False,
            maximize=False,
        )
        if optimizer.L2 != 0 and optimizer.L2_is_weight_decay:
            torch._foreach_add_(params, params, alpha=-learn_rate * optimizer.L2)
        torch._foreach_zero_(grads)
