"""Update rules: plasticity rules, plastic networks, learned optimizers and
shared-parameter experts (VS-ML, Badger, MPLP).

Plasticity (`ABCD`, `Polynomial`, `HebbianMemory`, `CLAPP`, ...):
`delta_w = rule(coefficients, pre, post, w)` with `w` of shape (n_post, n_pre).

Learned optimizers (`MLPLOpt`, `RNNMLPLOpt`, `LearnableAdam`; task families in
`rules.tasks`):
`lopt.init(key) -> meta_params`, `lopt.optax(meta_params)` an optax
`GradientTransformationExtraArgs` (the loss reaches the rule as optax's extra
argument `value=`, as for `optax.lbfgs` and `reduce_on_plateau`), and
`meta_train(lopt, family, ...)` with PES, checkpoints and exact resume.
"""

from innerloop.rules import tasks as tasks
from innerloop.rules._badger import Badger as Badger
from innerloop.rules._bandit import UCB as UCB
from innerloop.rules._bandit import Always as Always
from innerloop.rules._bandit import BayesOptimal as BayesOptimal
from innerloop.rules._bandit import ExploreOnce as ExploreOnce
from innerloop.rules._bandit import Lifetimes as Lifetimes
from innerloop.rules._bandit import Thompson as Thompson
from innerloop.rules._bandit import bandit_policies as bandit_policies
from innerloop.rules._bandit import bayes_optimal as bayes_optimal
from innerloop.rules._bandit import lifetimes as lifetimes
from innerloop.rules._bandit import regime as regime
from innerloop.rules._bandit import regime_fractions as regime_fractions
from innerloop.rules._bandit_agents import BanditLSTM as BanditLSTM
from innerloop.rules._bandit_agents import meta_train_bandit as meta_train_bandit
from innerloop.rules._byol import BYOL as BYOL
from innerloop.rules._byol import BYOLMetrics as BYOLMetrics
from innerloop.rules._byol import BYOLState as BYOLState
from innerloop.rules._byol import SSLNetwork as SSLNetwork
from innerloop.rules._byol import cosine_loss as cosine_loss
from innerloop.rules._byol import ridge_predictor as ridge_predictor
from innerloop.rules._checkpoint import checkpoint_path as checkpoint_path
from innerloop.rules._checkpoint import load_checkpoint as load_checkpoint
from innerloop.rules._clapp import CLAPP as CLAPP
from innerloop.rules._clapp import CLAPPLayer as CLAPPLayer
from innerloop.rules._clapp import CLAPPMetrics as CLAPPMetrics
from innerloop.rules._guess import GuessTarget as GuessTarget
from innerloop.rules._lopt import LearnableAdam as LearnableAdam
from innerloop.rules._lopt import MLPLOpt as MLPLOpt
from innerloop.rules._lopt import RNNMLPLOpt as RNNMLPLOpt
from innerloop.rules._mean_teacher import MeanTeacher as MeanTeacher
from innerloop.rules._mean_teacher import MeanTeacherMetrics as MeanTeacherMetrics
from innerloop.rules._mean_teacher import MeanTeacherState as MeanTeacherState
from innerloop.rules._memory import HebbianMemory as HebbianMemory
from innerloop.rules._meta_train import MetaTrainResult as MetaTrainResult
from innerloop.rules._meta_train import UnrolledTask as UnrolledTask
from innerloop.rules._meta_train import meta_train as meta_train
from innerloop.rules._mplp import MPLP as MPLP
from innerloop.rules._plasticity import ABCD as ABCD
from innerloop.rules._plasticity import SHARING as SHARING
from innerloop.rules._plasticity import VARIANTS as VARIANTS
from innerloop.rules._plasticity import PlasticMLP as PlasticMLP
from innerloop.rules._plasticity import Polynomial as Polynomial
from innerloop.rules._plasticity import SparseHebbian as SparseHebbian
from innerloop.rules._plasticity import oja as oja
from innerloop.rules._pretrained import save_pretrained as save_pretrained
from innerloop.rules._ssl_augment import Augment as Augment
from innerloop.rules._ssl_augment import gaussian_noise as gaussian_noise
from innerloop.rules._ssl_augment import random_mask as random_mask
from innerloop.rules._ssl_augment import random_roll as random_roll
from innerloop.rules._ssl_augment import random_scale as random_scale
from innerloop.rules._ssl_augment import random_shear as random_shear
from innerloop.rules._ssl_augment import random_shift as random_shift
from innerloop.rules._ssl_simclr import SimCLR as SimCLR
from innerloop.rules._ssl_simclr import SimCLRMetrics as SimCLRMetrics
from innerloop.rules._ssl_simclr import SimCLRState as SimCLRState
from innerloop.rules._ssl_simclr import nt_xent as nt_xent
from innerloop.rules._targets import CollapseMonitor as CollapseMonitor
from innerloop.rules._targets import CollapseStats as CollapseStats
from innerloop.rules._targets import CollapseWarning as CollapseWarning
from innerloop.rules._targets import byol_tau as byol_tau
from innerloop.rules._targets import collapse_stats as collapse_stats
from innerloop.rules._targets import consistency_rampup as consistency_rampup
from innerloop.rules._targets import ema_update as ema_update
from innerloop.rules._topology import Adjacency as Adjacency
from innerloop.rules._topology import Attention as Attention
from innerloop.rules._topology import FullyConnected as FullyConnected
from innerloop.rules._topology import Ring as Ring
from innerloop.rules._vsml import VSML as VSML
from innerloop.rules._vsml import VSMLLayer as VSMLLayer
from innerloop.rules._vsml import VSMLParams as VSMLParams
from innerloop.rules._vsml import VSMLState as VSMLState

__all__ = [
    # plasticity
    "ABCD", "SHARING", "VARIANTS", "Polynomial", "oja", "SparseHebbian", "HebbianMemory",
    "CLAPP", "CLAPPLayer", "CLAPPMetrics", "PlasticMLP",
    # learned optimizers
    "LearnableAdam", "MLPLOpt", "RNNMLPLOpt", "UnrolledTask", "meta_train",
    "MetaTrainResult", "checkpoint_path", "load_checkpoint", "save_pretrained", "tasks",
    # shared-parameter experts
    "VSMLLayer", "VSML", "VSMLParams", "VSMLState", "Badger", "FullyConnected", "Ring",
    "Adjacency", "Attention", "MPLP", "GuessTarget",
    # self-supervised targets
    "ema_update", "byol_tau", "consistency_rampup", "collapse_stats", "CollapseStats",
    "CollapseMonitor", "CollapseWarning", "BYOL", "BYOLState", "BYOLMetrics", "SSLNetwork",
    "cosine_loss", "ridge_predictor", "SimCLR", "SimCLRState", "SimCLRMetrics", "nt_xent",
    "MeanTeacher", "MeanTeacherState", "MeanTeacherMetrics", "Augment", "random_shift",
    "random_scale", "gaussian_noise", "random_mask", "random_roll", "random_shear",
    # learning not to learn (the task: tasks.GaussianBandit, tasks.bandit_grid)
    "BayesOptimal", "bayes_optimal", "Always", "ExploreOnce", "Thompson", "UCB",
    "bandit_policies", "Lifetimes", "lifetimes", "regime", "regime_fractions", "BanditLSTM",
    "meta_train_bandit",
]
