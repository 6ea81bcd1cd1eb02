"""The noisy-label methods of the paper's Table VII, each a loss of the registry with OLS as an option.

``l2rw`` (Ren et al. 2018), ``mwnet`` (Meta-Weight-Net, Shu et al. 2019), ``bmm`` (Arazo et al.
2019), ``pencil`` (Yi & Wu 2019) and ``self_learning`` (Han et al. 2019); ``--loss-arg base=ols``
puts OLS under any of them (:mod:`ols.losses.noisy.base` states each rule). Their steps are tasks
(:mod:`ols.tasks`).
"""

from .base import NoisyLabelMethod
from .bootstrapping import DynamicBootstrapping
from .pencil import PENCIL
from .reweight import LearningToReweight, MetaWeightNet
from .self_learning import SelfLearning

__all__ = ["NoisyLabelMethod", "DynamicBootstrapping", "PENCIL", "LearningToReweight", "MetaWeightNet",
           "SelfLearning"]
