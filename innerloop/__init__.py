"""innerloop: learn through loops in JAX.

    import innerloop as il
    sol = il.fixed_point(f, z0, theta, solver=il.solvers.Anderson(memory=5),
                         grad=il.Implicit(), tol=1e-5, max_steps=100)
"""

__version__ = "0.1.0"

from innerloop import flows as flows
from innerloop import implicit as implicit
from innerloop import population as population
from innerloop import rules as rules
from innerloop import solvers as solvers
from innerloop.flows import Flow as Flow
from innerloop.implicit import DEQ as DEQ
from innerloop.implicit import ES as ES
from innerloop.implicit import MDEQ as MDEQ
from innerloop.implicit import PES as PES
from innerloop.implicit import AbstractGradient as AbstractGradient
from innerloop.implicit import BackwardNotConvergedWarning as BackwardNotConvergedWarning
from innerloop.implicit import Checkpointed as Checkpointed
from innerloop.implicit import DEQStats as DEQStats
from innerloop.implicit import Implicit as Implicit
from innerloop.implicit import JacobianFree as JacobianFree
from innerloop.implicit import NotConvergedError as NotConvergedError
from innerloop.implicit import Phantom as Phantom
from innerloop.implicit import Truncated as Truncated
from innerloop.implicit import TruncatedBPTT as TruncatedBPTT
from innerloop.implicit import Unroll as Unroll
from innerloop.implicit import argmin as argmin
from innerloop.implicit import custom_fixed_point as custom_fixed_point
from innerloop.implicit import custom_root as custom_root
from innerloop.implicit import fixed_point as fixed_point
from innerloop.implicit import population_sharding as population_sharding
from innerloop.implicit import root as root
from innerloop.implicit import unroll as unroll
from innerloop.solvers import RESULTS as RESULTS
from innerloop.solvers import Solution as Solution


def __getattr__(name: str):
    # `innerloop.testing` needs hypothesis (the `testing` extra): loaded on first use.
    if name == "testing":
        import importlib

        return importlib.import_module("innerloop.testing")
    raise AttributeError(f"module 'innerloop' has no attribute {name!r}")

__all__ = [
    "ES",
    "PES",
    "TruncatedBPTT",
    "argmin",
    "population_sharding",
    "unroll",
    "AbstractGradient",
    "BackwardNotConvergedWarning",
    "Checkpointed",
    "DEQ",
    "DEQStats",
    "MDEQ",
    "Flow",
    "Implicit",
    "NotConvergedError",
    "RESULTS",
    "JacobianFree",
    "Phantom",
    "Solution",
    "Truncated",
    "Unroll",
    "custom_fixed_point",
    "custom_root",
    "fixed_point",
    "flows",
    "implicit",
    "population",
    "root",
    "rules",
    "solvers",
]
