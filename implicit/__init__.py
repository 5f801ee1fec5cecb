"""Differentiating through loops: fixed points, roots and their gradient modes."""

from innerloop.implicit._argmin import argmin as argmin
from innerloop.implicit._deq import DEQ as DEQ
from innerloop.implicit._deq import DEQStats as DEQStats
from innerloop.implicit._deq import jacobian_frobenius as jacobian_frobenius
from innerloop.implicit._estimators import ES as ES
from innerloop.implicit._estimators import PES as PES
from innerloop.implicit._estimators import InfluenceBalancing as InfluenceBalancing
from innerloop.implicit._estimators import TruncatedBPTT as TruncatedBPTT
from innerloop.implicit._estimators import population_sharding as population_sharding
from innerloop.implicit._fixed_point import custom_fixed_point as custom_fixed_point
from innerloop.implicit._fixed_point import custom_root as custom_root
from innerloop.implicit._fixed_point import fixed_point as fixed_point
from innerloop.implicit._fixed_point import root as root
from innerloop.implicit._mdeq import MDEQ as MDEQ
from innerloop.implicit._mdeq import MultiscaleCell as MultiscaleCell
from innerloop.implicit._modes import AbstractGradient as AbstractGradient
from innerloop.implicit._modes import BackwardNotConvergedWarning as BackwardNotConvergedWarning
from innerloop.implicit._modes import Checkpointed as Checkpointed
from innerloop.implicit._modes import Implicit as Implicit
from innerloop.implicit._modes import JacobianFree as JacobianFree
from innerloop.implicit._modes import Phantom as Phantom
from innerloop.implicit._modes import Truncated as Truncated
from innerloop.implicit._modes import Unroll as Unroll
from innerloop.implicit._tolerance import NotConvergedError as NotConvergedError
from innerloop.implicit._unroll import unroll as unroll

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
    "MDEQ",
    "MultiscaleCell",
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
