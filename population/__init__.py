"""Learning dynamics of populations: games, equilibria, ratings, population training
and quality-diversity archives, as pure JAX functions that `jit`, `vmap` over many games
and differentiate through equilibria with the implicit function theorem.

Following "Designing Learning Dynamics" (Garnelo, Balduzzi and Czarnecki, NeurIPS 2020
tutorial): a population's members meet in pairwise zero-sum games; with no absolute
fitness they are rated against each other (Elo, Nash averaging, alpha-Rank); the Nash
equilibrium of the meta-game chooses whom to train against (PSRO); a quality-diversity
archive keeps the best member of each behaviour niche (MAP-Elites).

Builds on `innerloop.implicit` (`fixed_point`, `argmin`, `ES`) only.
"""

# Each module's public names, one block per module.

# equilibria (_equilibria.py)
from innerloop.population._equilibria import PDHG as PDHG
from innerloop.population._equilibria import AbstractGameSolver as AbstractGameSolver
from innerloop.population._equilibria import Equilibrium as Equilibrium
from innerloop.population._equilibria import FictitiousPlay as FictitiousPlay
from innerloop.population._equilibria import RegretMatchingPlus as RegretMatchingPlus
from innerloop.population._equilibria import Replicator as Replicator
from innerloop.population._equilibria import Simplex as Simplex
from innerloop.population._equilibria import exploitability as exploitability
from innerloop.population._equilibria import nash as nash
from innerloop.population._equilibria import qre as qre

# games (_games.py)
from innerloop.population._games import FunctionalGame as FunctionalGame
from innerloop.population._games import blotto_allocations as blotto_allocations
from innerloop.population._games import blotto_game as blotto_game
from innerloop.population._games import blotto_payoff as blotto_payoff
from innerloop.population._games import disc_game as disc_game
from innerloop.population._games import evaluate as evaluate
from innerloop.population._games import lotto_game as lotto_game
from innerloop.population._games import random_zero_sum as random_zero_sum
from innerloop.population._games import rock_paper_scissors as rock_paper_scissors
from innerloop.population._games import transitive_cyclic_game as transitive_cyclic_game
from innerloop.population._games import transitive_game as transitive_game

# population training (_psro.py)
from innerloop.population._psro import PSROResult as PSROResult
from innerloop.population._psro import effective_diversity as effective_diversity
from innerloop.population._psro import masked_nash as masked_nash
from innerloop.population._psro import population_performance as population_performance
from innerloop.population._psro import psro as psro
from innerloop.population._psro import relative_performance as relative_performance

# quality diversity (_qd.py)
from innerloop.population._qd import CVT as CVT
from innerloop.population._qd import Archive as Archive
from innerloop.population._qd import ESEmitter as ESEmitter
from innerloop.population._qd import ESState as ESState
from innerloop.population._qd import Grid as Grid
from innerloop.population._qd import MAPElites as MAPElites
from innerloop.population._qd import MAPElitesState as MAPElitesState
from innerloop.population._qd import MutationEmitter as MutationEmitter
from innerloop.population._qd import novelty as novelty
from innerloop.population._qd import planar_arm as planar_arm

# ratings (_ratings.py)
from innerloop.population._ratings import AlphaRank as AlphaRank
from innerloop.population._ratings import Elo as Elo
from innerloop.population._ratings import NashAverage as NashAverage
from innerloop.population._ratings import alpharank as alpharank
from innerloop.population._ratings import bradley_terry as bradley_terry
from innerloop.population._ratings import elo as elo
from innerloop.population._ratings import melo as melo
from innerloop.population._ratings import nash_averaging as nash_averaging

__all__: list[str] = []
__all__ += [  # equilibria (_equilibria.py)
    "AbstractGameSolver", "Equilibrium", "FictitiousPlay", "PDHG", "RegretMatchingPlus",
    "Replicator", "Simplex", "exploitability", "nash", "qre",
]
__all__ += [  # games (_games.py)
    "FunctionalGame", "blotto_allocations", "blotto_game", "blotto_payoff", "disc_game",
    "evaluate", "lotto_game", "random_zero_sum", "rock_paper_scissors",
    "transitive_cyclic_game", "transitive_game",
]
__all__ += [  # quality diversity (_qd.py)
    "Archive", "CVT", "ESEmitter", "ESState", "Grid", "MAPElites", "MAPElitesState",
    "MutationEmitter", "novelty", "planar_arm",
]
__all__ += [  # ratings (_ratings.py)
    "AlphaRank", "Elo", "NashAverage", "alpharank", "bradley_terry", "elo", "melo",
    "nash_averaging",
]
__all__ += [  # population training (_psro.py)
    "PSROResult", "effective_diversity", "masked_nash", "population_performance", "psro",
    "relative_performance",
]
