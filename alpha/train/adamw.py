"""AdamW whose CUDA step is one Triton kernel over every parameter.

``torch.optim.AdamW(fused=True)`` launches one multi-tensor kernel per parameter group and
moves the seed model's 488 MB of state (17.4M parameters) at 2.7 TB/s on an H200; the kernel of
``alpha.train.adamw_kernels`` covers both groups in one launch from a table of addresses, and can
store the new weights' 16-bit shadows on the way (``shadows``), which saves the copy pass that
would otherwise refresh them. The maths, the state (``step``, ``exp_avg``, ``exp_avg_sq`` per
parameter, PyTorch's layout) and the ``grad_scale`` / ``found_inf`` protocol are those of
PyTorch's fused AdamW, which this class is and falls back to wherever the kernel does not apply:
on the CPU, without Triton, with a closure, amsgrad or maximize, or while some parameter has no
gradient. The table is rebuilt whenever a tensor moved (checked on every eager step, by address).
The kernel reads the step count of the first parameter: all parameters step together, as they do
under this class (every step updates all of them, or, skipped, none).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from alpha.model.kernel_support import kernels_available


class AdamW(torch.optim.AdamW):
    def __init__(self, params: Iterable[Any], **kwargs: Any) -> None:
        super().__init__(params, fused=True, **kwargs)
        # 16-bit copies of some parameters, refreshed by each step (the kernel path writes them
        # itself; the fallback copies them after its update)
        self.shadows: dict[torch.Tensor, torch.Tensor] = {}
        self._launch: Any = None
        self._launch_key: tuple[int, ...] | None = None
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        tensors = self._kernel_tensors() if closure is None else None
        if tensors is None:
            loss = super().step(closure)
            if self.shadows:
                pairs = list(self.shadows.items())
                torch._foreach_copy_([s for _, s in pairs], [p for p, _ in pairs])
            return loss
        params, steps = tensors
        launch = self._launch_for(params)
        group = self.param_groups[0]
        device = params[0].device
        one, zero = self._device_constants(device)
        lr = group["lr"]
        if not isinstance(lr, torch.Tensor):
            lr = torch.full((), lr, dtype=torch.float32, device=device)
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        beta1, beta2 = group["betas"]
        launch(
            lr,
            steps[0],
            one if grad_scale is None else grad_scale,
            zero if found_inf is None else found_inf,
            float(beta1),
            float(beta2),
            float(group["eps"]),
        )
        increment = one if found_inf is None else one - found_inf  # a skipped step is not counted
        torch._foreach_add_(steps, [increment] * len(steps))  # tensors: no host read, capturable
        return None

    def _kernel_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """(params, their step counters) when the kernel applies to this step, else None."""
        first = self.param_groups[0]
        params: list[torch.Tensor] = []
        for group in self.param_groups:
            if group["amsgrad"] or group["maximize"] or group.get("differentiable"):
                return None
            if group["betas"] != first["betas"] or group["eps"] != first["eps"]:
                return None
            if not _same_lr(group["lr"], first["lr"]):
                return None
            params.extend(group["params"])
        if not params or not kernels_available(params[0].device):
            return None
        if any(p.grad is None or p.dtype != torch.float32 for p in params):
            return None
        steps = []
        for p in params:
            state = self.state[p]
            if not state:
                state.update(initial_state(p, on_device=True))
            steps.append(state["step"])
        return params, steps

    def _launch_for(self, params: list[torch.Tensor]) -> Any:
        from alpha.train.adamw_kernels import AdamWLaunch

        grads = [p.grad for p in params]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        shadows = [self.shadows.get(p) for p in params]
        key = tuple(
            t.data_ptr() if t is not None else 0 for t in (*params, *grads, *exp_avgs, *exp_avg_sqs, *shadows)
        )
        if key != self._launch_key:
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError("AdamW's tensors moved during CUDA graph capture: step before capturing")
            decays = [float(g["weight_decay"]) for g in self.param_groups for _ in g["params"]]
            self._launch = AdamWLaunch(params, grads, exp_avgs, exp_avg_sqs, shadows, decays)  # type: ignore[arg-type]
            self._launch_key = key
        return self._launch

    def _device_constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._constants:
            self._constants[device] = (
                torch.ones((), dtype=torch.float32, device=device),
                torch.zeros((), dtype=torch.float32, device=device),
            )
        return self._constants[device]


def initial_state(p: torch.Tensor, on_device: bool) -> dict[str, torch.Tensor]:
    """AdamW's state for ``p`` before its first step, as PyTorch creates it (``step`` on the
    device for the fused and capturable forms, ``on_device``)."""
    return {
        "step": torch.zeros((), dtype=torch.float32, device=p.device if on_device else None),
        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
    }


def _same_lr(a: float | torch.Tensor, b: float | torch.Tensor) -> bool:
    """One learning rate: the same device tensor, or equal numbers."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return a == b
