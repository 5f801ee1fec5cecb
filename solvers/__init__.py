"""Forward solvers for fixed points and roots, and linear solvers for their adjoint
systems.

Every solver is an immutable `equinox.Module` with `solve`, on one example:
`jax.vmap` a solve over a batch and each example stops at its own convergence. The
iterative solvers (`AbstractIterativeSolver`: `init` plus `step`) share one driver
loop; `SteadyState` is driven by diffrax. Fixed points: `Iteration`, `Anderson`,
`Broyden`, `SteadyState`. Roots (through g(z) = z - f(z)): `Newton`, `Chord`,
`Broyden`, `Bisection`.
"""

from innerloop.solvers._anderson import Anderson as Anderson
from innerloop.solvers._base import RESULTS as RESULTS
from innerloop.solvers._base import AbstractIterativeSolver as AbstractIterativeSolver
from innerloop.solvers._base import AbstractSolver as AbstractSolver
from innerloop.solvers._base import Solution as Solution
from innerloop.solvers._bisection import Bisection as Bisection
from innerloop.solvers._broyden import Broyden as Broyden
from innerloop.solvers._iteration import Iteration as Iteration
from innerloop.solvers._linear import Dense as Dense
from innerloop.solvers._linear import NormalCG as NormalCG
from innerloop.solvers._linear import solve_linear as solve_linear
from innerloop.solvers._newton import Chord as Chord
from innerloop.solvers._newton import Newton as Newton
from innerloop.solvers._steady_state import SteadyState as SteadyState

__all__ = [
    "RESULTS",
    "AbstractSolver",
    "AbstractIterativeSolver",
    "Anderson",
    "Bisection",
    "Broyden",
    "Chord",
    "Dense",
    "Iteration",
    "Newton",
    "NormalCG",
    "Solution",
    "SteadyState",
    "solve_linear",
]
