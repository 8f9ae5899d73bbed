"""Schedule-free optimisation (Defazio et al. 2024, "The Road Less Scheduled") with an Adam or a sign
base step: the optimisers `TrainConfig.optimizer` calls "schedule_free_adam" and "schedule_free_signum".

Three points per parameter, and no learning-rate schedule, because the output is an average:

    y_t     = (1 − β) z_t + β x_t          where the gradient g_t = ∇f(y_t) is taken (the parameter)
    z_{t+1} = z_t − γ d_t                  the base step
    x_{t+1} = x_t + (z_{t+1} − x_t) / t    the uniform average of z_2 .. z_{t+1}

for t = 1, 2, … and x_1 = z_1 = y_1 = the initial parameter. β plays momentum's part. The base
direction d_t is

    adam:   v_t = β₂ v_{t−1} + (1 − β₂) g_t²,   d_t = g_t / (sqrt(v_t / (1 − β₂^t)) + ε)
    signum: d_t = sign(g_t)                    (signSGD, Bernstein et al. 2018: sparsify's default)

The parameter holds y while training; a trained model is evaluated at x, which `use_average()`
writes into the parameters once training is over. State per parameter: the step count t, z, x, and
v for the Adam base: one tensor the size of the parameter more than Adam keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

BASE_STEPS = ("adam", "signum")


class ScheduleFree(torch.optim.Optimizer):
    """Schedule-free descent with base step `base` ("adam" or "signum") at learning rate γ = `lr`,
    interpolation β = `beta` and, for Adam, second-moment rate β₂ = `beta2` and ε = `eps`."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        base: str = "adam",
        beta: float = 0.95,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ):
        if base not in BASE_STEPS:
            raise ValueError(f"ScheduleFree: base must be one of {BASE_STEPS}, got {base!r}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"ScheduleFree: lr must be a positive number, got {lr!r}")
        for name, value in (("beta", beta), ("beta2", beta2)):
            if not 0 <= value < 1:
                raise ValueError(f"ScheduleFree: {name} must be in [0, 1), got {value!r}")
        super().__init__(params, {"lr": lr, "base": base, "beta": beta, "beta2": beta2, "eps": eps})

    @staticmethod
    def state_keys(base: str) -> tuple[str, ...]:
        """Names of the per-parameter state tensors (what a checkpoint must hold)."""
        return ("step", "z", "x", "v") if base == "adam" else ("step", "z", "x")

    def _state(self, parameter: Tensor, base: str) -> dict:
        state = self.state[parameter]
        if not state:
            state["step"] = torch.tensor(0.0, device=parameter.device)  # where the fused kernel reads it
            state["z"] = parameter.detach().clone()
            state["x"] = parameter.detach().clone()
            if base == "adam":
                state["v"] = torch.zeros_like(parameter)
        # State restored by load_state_dict is contiguous whatever the parameter's layout, and its
        # step count stays on the CPU.
        state["step"] = state["step"].to(parameter.device)
        for key in ("z", "x", "v"):
            if key in state:
                state[key] = _in_layout_of(parameter, state[key])
        return state

    @torch.no_grad()
    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("ScheduleFree does not take a closure")
        for group in self.param_groups:
            base, lr, beta = group["base"], group["lr"], group["beta"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                grad = _in_layout_of(parameter, parameter.grad)
                state = self._state(parameter, base)
                state["step"] += 1
                t = float(state["step"])
                z, x = state["z"], state["x"]
                if base == "adam":
                    # The base step is Adam with β₁ = 0, whose first moment m ← β₁ m + (1 − β₁) g is
                    # the gradient itself: passing g as its own m, torch's fused Adam kernel updates
                    # v and z in one pass with no temporaries (unfused, v.sqrt() allocates a tensor
                    # the size of the parameter every step). It reads t from state["step"].
                    torch._fused_adam_(
                        [z], [grad], [grad], [state["v"]], [], [state["step"]],
                        lr=lr, beta1=0.0, beta2=group["beta2"], weight_decay=0.0, eps=group["eps"],
                        amsgrad=False, maximize=False,
                    )
                else:
                    z.add_(grad.sign(), alpha=-lr)
                x.lerp_(z, 1.0 / t)
                torch.lerp(z, x, beta, out=parameter)

    @torch.no_grad()
    def use_average(self) -> None:
        """Write the averaged point x into every parameter that has taken a step (end of training)."""
        for group in self.param_groups:
            for parameter in group["params"]:
                state = self.state[parameter]
                if state:
                    parameter.copy_(state["x"])


def _in_layout_of(parameter: Tensor, tensor: Tensor) -> Tensor:
    """`tensor` itself if it has `parameter`'s strides, else a copy that does.

    The fused Adam kernel walks its operands as flat memory: operands of one shape but different
    layouts (a transposed gradient, a state tensor loaded contiguous) would silently pair the wrong
    elements, so every operand is put in the parameter's layout first (a no-op in training).
    """
    if tensor.stride() == parameter.stride():
        return tensor
    return torch.empty_like(parameter).copy_(tensor)
