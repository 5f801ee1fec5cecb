"""Normalizing flows with surjections (SurVAE Flows, Nielsen et al. 2020) and with
implicit inverses (residual flows, Chen et al. 2019; implicit flows, Lu et al. 2021),
whose fixed-point and root solves `innerloop.implicit` differentiates exactly.

Every transform maps one example (no batch axis; batch with `jax.vmap`):

    z, contribution = t.forward(x, key)        x = t.inverse(z, key)

and declares its `kind` (`Kind`: bijective, inference surjection, generative surjection,
stochastic). `Flow(base, transforms).log_prob(x, key)` adds the contributions to the
base's log-density: exact for bijections and inference surjections, a lower bound with
generative surjections and stochastic layers.

    import jax, innerloop as il
    from innerloop.flows import Abs, AffineCoupling, Flow, StandardNormal, fit
    flow = Flow(StandardNormal(2), [Abs(2), AffineCoupling(2, jax.random.key(0))])
    flow, losses = fit(flow, data, jax.random.key(1), steps=500)
"""

# the protocol (_base.py)
from innerloop.flows._base import AbstractTransform as AbstractTransform
from innerloop.flows._base import Kind as Kind

# bijections (_bijections.py)
from innerloop.flows._bijections import ActNorm as ActNorm
from innerloop.flows._bijections import AffineCoupling as AffineCoupling
from innerloop.flows._bijections import LeakyReLU as LeakyReLU
from innerloop.flows._bijections import Logit as Logit
from innerloop.flows._bijections import LULinear as LULinear
from innerloop.flows._bijections import Permutation as Permutation
from innerloop.flows._bijections import Reverse as Reverse
from innerloop.flows._bijections import RQSCoupling as RQSCoupling
from innerloop.flows._bijections import Sigmoid as Sigmoid
from innerloop.flows._bijections import Squeeze as Squeeze

# flows (_flow.py)
from innerloop.flows._flow import Flow as Flow
from innerloop.flows._flow import StandardNormal as StandardNormal
from innerloop.flows._flow import fit as fit
from innerloop.flows._flow import multiscale as multiscale

# residual and implicit flows (_residual.py)
from innerloop.flows._residual import ImplicitBlock as ImplicitBlock
from innerloop.flows._residual import LipschitzMLP as LipschitzMLP
from innerloop.flows._residual import ResidualBlock as ResidualBlock
from innerloop.flows._residual import exact_logdet as exact_logdet
from innerloop.flows._residual import roulette_logdet as roulette_logdet

# surjections and stochastic layers (_surjections.py)
from innerloop.flows._surjections import VAE as VAE
from innerloop.flows._surjections import Abs as Abs
from innerloop.flows._surjections import Augment as Augment
from innerloop.flows._surjections import MaxPool1D as MaxPool1D
from innerloop.flows._surjections import MaxPool2D as MaxPool2D
from innerloop.flows._surjections import Slice as Slice
from innerloop.flows._surjections import Sort as Sort
from innerloop.flows._surjections import UniformDequantization as UniformDequantization
from innerloop.flows._surjections import VariationalDequantization as VariationalDequantization

__all__: list[str] = []
__all__ += ["AbstractTransform", "Kind"]
__all__ += [  # bijections
    "ActNorm", "AffineCoupling", "LULinear", "LeakyReLU", "Logit", "Permutation", "RQSCoupling",
    "Reverse", "Sigmoid", "Squeeze",
]
__all__ += [  # surjections and stochastic layers
    "Abs", "Augment", "MaxPool1D", "MaxPool2D", "Slice", "Sort", "UniformDequantization",
    "VAE", "VariationalDequantization",
]
__all__ += [  # residual and implicit flows
    "ImplicitBlock", "LipschitzMLP", "ResidualBlock", "exact_logdet", "roulette_logdet",
]
__all__ += ["Flow", "StandardNormal", "fit", "multiscale"]
