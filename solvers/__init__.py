"""Forward solvers for fixed points and roots, and linear solvers for their adjoint
systems.

Every solver is an immutable `equinox.Module` driven by one shared loop
(`AbstractSolver.solve`), on one example: `jax.vmap` a solve over a batch and each
example stops at its own convergence. Fixed points: `Iteration`, `Anderson`,
`Broyden`, `SteadyState`. Roots (through g(z) = z - f(z)): `Newton`, `Chord`,
`Broyden`, `Bisection`.
"""

from ._base import RESULTS as RESULTS
from ._base import AbstractSolver as AbstractSolver
from ._base import Solution as Solution
from .anderson import Anderson as Anderson
from .bisection import Bisection as Bisection
from .broyden import Broyden as Broyden
from .iteration import Iteration as Iteration
from .linear import NormalCG as NormalCG
from .linear import Dense as Dense
from .linear import solve_linear as solve_linear
from .newton import Chord as Chord
from .newton import Newton as Newton
from .steady_state import SteadyState as SteadyState

__all__ = [
    "RESULTS",
    "AbstractSolver",
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
