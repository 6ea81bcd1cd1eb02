"""The noisy-label methods of the paper's Table VII, each a loss of the registry with OLS as an option.

``l2rw`` (Ren et al. 2018), ``mwnet`` (Meta-Weight-Net, Shu et al. 2019), ``bmm`` (Arazo et al.
2019), ``pencil`` (Yi & Wu 2019) and ``self_learning`` (Han et al. 2019); beyond Table VII,
``coteaching`` and ``coteaching_plus`` (Han et al. 2018, Yu et al. 2019), ``elr`` (Liu et al.
2020) and ``dividemix`` (Li et al. 2020), the two-network ones on a
:class:`~ols.models.pair.NetworkPair`. ``--loss-arg base=ols`` puts OLS under any of them
(:mod:`ols.losses.noisy.base` and each method state the rule). Their steps are tasks (:mod:`ols.tasks`).
"""

from .base import NoisyLabelMethod
from .bootstrapping import DynamicBootstrapping
from .coteaching import CoTeaching, CoTeachingPlus
from .dividemix import DivideMix
from .elr import EarlyLearningRegularization
from .pencil import PENCIL
from .reweight import LearningToReweight, MetaWeightNet
from .self_learning import SelfLearning

__all__ = ["NoisyLabelMethod", "CoTeaching", "CoTeachingPlus", "DivideMix", "EarlyLearningRegularization",
           "DynamicBootstrapping", "PENCIL", "LearningToReweight", "MetaWeightNet", "SelfLearning"]
