"""Differentiating through loops: fixed points, roots and their gradient modes."""

from .argmin import argmin as argmin
from .deq import DEQ as DEQ
from .deq import DEQStats as DEQStats
from .deq import jacobian_frobenius as jacobian_frobenius
from .estimators import ES as ES
from .estimators import PES as PES
from .estimators import InfluenceBalancing as InfluenceBalancing
from .estimators import TruncatedBPTT as TruncatedBPTT
from .estimators import population_sharding as population_sharding
from ._tolerance import NotConvergedError as NotConvergedError
from .fixed_point import custom_fixed_point as custom_fixed_point
from .fixed_point import custom_root as custom_root
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
from .unroll import unroll as unroll

__all__ = [
    "ES",
    "InfluenceBalancing",
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
    "Implicit",
    "NotConvergedError",
    "JacobianFree",
    "Phantom",
    "Truncated",
    "Unroll",
    "custom_fixed_point",
    "custom_root",
    "fixed_point",
    "jacobian_frobenius",
    "root",
]
