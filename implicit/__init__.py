"""Differentiating through loops: fixed points, roots and their gradient modes."""

from .deq import DEQ as DEQ
from .deq import DEQStats as DEQStats
from .deq import jacobian_frobenius as jacobian_frobenius
from .fixed_point import fixed_point as fixed_point
from .fixed_point import root as root
from .modes import AbstractGradient as AbstractGradient
from .modes import BackwardNotConvergedWarning as BackwardNotConvergedWarning
from .modes import Checkpointed as Checkpointed
from .modes import Implicit as Implicit
from .modes import JacobianFree as JacobianFree
from .modes import Phantom as Phantom
from .modes import Truncated as Truncated
from .modes import Unroll as Unroll

__all__ = [
    "AbstractGradient",
    "BackwardNotConvergedWarning",
    "Checkpointed",
    "DEQ",
    "DEQStats",
    "Implicit",
    "JacobianFree",
    "Phantom",
    "Truncated",
    "Unroll",
    "fixed_point",
    "jacobian_frobenius",
    "root",
]
