"""Forward solvers for fixed points, and linear solvers for their adjoint systems.

Every solver is an immutable `equinox.Module` driven by one shared loop
(`AbstractSolver.solve`), on one example: `jax.vmap` a solve over a batch and each
example stops at its own convergence.
"""

from ._base import AbstractSolver as AbstractSolver
from ._base import Solution as Solution
from ._base import relative_residual as relative_residual
from .anderson import Anderson as Anderson
from .broyden import Broyden as Broyden
from .iteration import Iteration as Iteration
from .linear import Dense as Dense
from .linear import solve_linear as solve_linear
from .steady_state import SteadyState as SteadyState

__all__ = [
    "AbstractSolver",
    "Anderson",
    "Broyden",
    "Dense",
    "Iteration",
    "Solution",
    "SteadyState",
    "relative_residual",
    "solve_linear",
]
