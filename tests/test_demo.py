"""The demo's measurements (`innerloop.demo`); the runs themselves are in test_cli.py."""

import jax
import pytest

from innerloop import demo
from innerloop.demo import _measure


@pytest.mark.parametrize("solver", ["iteration", "anderson"])
def test_adjoint_cost_counts_the_solve_of_the_trained_mode(solver, monkeypatch):
    x, _, y, _ = demo.load_digits_split()
    x, y = x[:32], y[:32]
    model = demo.make_model(jax.random.key(0), solver=solver)
    cost = demo.adjoint_cost(model, x, y)
    assert cost["max_steps"] == demo.ADJOINT_MAX_STEPS and cost["unconverged"] == 0
    assert cost["vjps"] >= 1 and cost["grad_rel_err"] <= 1e-6
    # Under other settings the rebuilt solve no longer reproduces the mode's gradient
    # (measured: rtol / 10 gives 6e-5, max_steps 3 gives 3e-3).
    settings = _measure._adjoint_settings
    monkeypatch.setattr(_measure, "_adjoint_settings",
                        lambda deq: (lambda s: (s[0], s[1] / 10, *s[2:]))(settings(deq)))
    assert demo.adjoint_cost(model, x, y)["grad_rel_err"] > 1e-6


def test_adjoint_cost_needs_implicit():
    model = demo.make_model(jax.random.key(0), grad="jacobianfree")
    x, _, y, _ = demo.load_digits_split()
    with pytest.raises(TypeError, match="adjoint_cost: .*Implicit"):
        demo.adjoint_cost(model, x[:4], y[:4])
