"""Specification of sae_core.optim.ScheduleFree: the three recurrences, each base step, the average."""

import math

import pytest
import torch

from sae_core.optim import ScheduleFree


def reference_trajectory(start, gradients, lr, beta, base, beta2=0.999, eps=1e-8):
    """The module docstring's recurrences written out in float64, one scalar at a time.

    `gradients(y)` gives ∇f at y. Returns the y at which each gradient was taken and the final x.
    """
    z = x = y = start
    v, points = 0.0, []
    for t in range(1, len(gradients) + 1):
        points.append(y)
        g = gradients[t - 1](y)
        if base == "adam":
            v = beta2 * v + (1 - beta2) * g * g
            d = g / (math.sqrt(v / (1 - beta2**t)) + eps)
        else:
            d = math.copysign(1.0, g) if g != 0 else 0.0
        z = z - lr * d
        x = x + (z - x) / t
        y = (1 - beta) * z + beta * x
    return points, x


@pytest.mark.parametrize("base", ["adam", "signum"])
def test_the_parameter_follows_y_and_use_average_writes_x(base):
    # f(w) = Σ_i c_i (w_i − a_i)², gradient 2 c_i (w_i − a_i), one scalar trajectory per coordinate.
    c = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    a = torch.tensor([1.0, -3.0, 0.25], dtype=torch.float64)
    start = torch.tensor([0.0, 0.5, 0.25], dtype=torch.float64)  # the last starts at its minimum
    lr, beta, steps = 0.1, 0.9, 7
    parameter = torch.nn.Parameter(start.clone())
    optimizer = ScheduleFree([parameter], lr=lr, base=base, beta=beta)
    seen = []
    for _ in range(steps):
        seen.append(parameter.detach().clone())
        parameter.grad = 2 * c * (parameter.detach() - a)
        optimizer.step()
    optimizer.use_average()

    for i in range(3):
        gradient = [lambda y, i=i: 2 * float(c[i]) * (y - float(a[i]))] * steps
        points, x = reference_trajectory(float(start[i]), gradient, lr, beta, base)
        assert [float(s[i]) for s in seen] == pytest.approx(points, rel=1e-12, abs=1e-12)
        assert float(parameter.detach()[i]) == pytest.approx(x, rel=1e-12, abs=1e-12)


def test_the_first_step_moves_z_by_lr_times_the_base_direction_and_x_to_z():
    parameter = torch.nn.Parameter(torch.zeros(4))
    optimizer = ScheduleFree([parameter], lr=0.5, base="signum", beta=0.8)
    parameter.grad = torch.tensor([3.0, -0.001, 0.0, -7.0])
    optimizer.step()
    state = optimizer.state[parameter]
    assert torch.equal(state["z"], torch.tensor([-0.5, 0.5, 0.0, 0.5]))
    assert torch.equal(state["x"], state["z"])  # x_2 = z_2: the average of one iterate
    assert torch.equal(parameter.detach(), state["z"])
    assert set(state) == set(ScheduleFree.state_keys("signum"))


def test_adam_base_state_holds_the_second_moment_and_signum_none():
    assert ScheduleFree.state_keys("adam") == ("step", "z", "x", "v")
    assert ScheduleFree.state_keys("signum") == ("step", "z", "x")


def test_parameters_without_gradients_are_left_alone_and_use_average_skips_them():
    trained, untouched = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.full((2,), 5.0))
    optimizer = ScheduleFree([trained, untouched], lr=0.1)
    trained.grad = torch.ones(2)
    optimizer.step()
    optimizer.use_average()
    assert torch.equal(untouched.detach(), torch.full((2,), 5.0))
    assert not optimizer.state[untouched]


@pytest.mark.parametrize("base", ["adam", "signum"])
def test_a_transposed_layout_gives_the_contiguous_result(base):
    # The Adam base runs a kernel that walks raw memory: a column-major parameter (as a transposed
    # view) with a row-major gradient, and state reloaded contiguous from a state dict, must still
    # pair each element with its own gradient and moments.
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(5, 3, generator=generator)
    row_major = torch.nn.Parameter(start.clone())
    column_major = torch.nn.Parameter(start.T.contiguous().T)
    assert not column_major.is_contiguous()
    optimizers = [ScheduleFree([p], lr=0.1, base=base) for p in (row_major, column_major)]
    for step in range(4):
        gradient = torch.randn(5, 3, generator=generator)
        for parameter, optimizer in zip((row_major, column_major), optimizers):
            parameter.grad = gradient.clone()
            optimizer.step()
        if step == 1:
            reloaded = ScheduleFree([column_major], lr=0.1, base=base)
            reloaded.load_state_dict(
                {**optimizers[1].state_dict(), "state": {
                    0: {key: value.contiguous() for key, value in optimizers[1].state_dict()["state"][0].items()}
                }}
            )
            optimizers[1] = reloaded
    assert torch.equal(column_major.detach(), row_major.detach())
    for optimizer in optimizers:
        optimizer.use_average()
    assert torch.equal(column_major.detach(), row_major.detach())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": 1e-3, "base": "sgd"}, "base"),
        ({"lr": 1e-3, "beta": 1.0}, "beta"),
        ({"lr": 1e-3, "beta2": -0.1}, "beta2"),
    ],
)
def test_bad_settings_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScheduleFree([torch.nn.Parameter(torch.zeros(1))], **kwargs)
