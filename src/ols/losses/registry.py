"""The loss registry: ``create_loss(name, num_classes, **kw)``."""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, Optional

from torch import nn

from ..utils.names import unknown_name
from .bootstrap import BootstrapHard, BootstrapSoft
from .cskd import ClassWiseSelfKD
from .ddgsd import DataDistortionSelfDistillation
from .disturblabel import DisturbLabel
from .focal import FLSD53, FocalLoss
from .label_relaxation import LabelRelaxation
from .logit_penalty import LogitPenalty
from .logitnorm import LogitNorm
from .maxsup import MaxSup
from .nls import NegativeLabelSmoothing
from .noisy import (
    PENCIL,
    CoTeaching,
    CoTeachingPlus,
    DivideMix,
    DynamicBootstrapping,
    EarlyLearningRegularization,
    LearningToReweight,
    MetaWeightNet,
    SelfLearning,
)
from .ols import OnlineLabelSmoothing
from .ols_single import OnlineLabelSmoothingSingle
from .pairwise_confusion import PairwiseConfusion
from .protocol import networks_of
from .pskd import ProgressiveSelfKD
from .robust import GeneralizedCrossEntropy, SymmetricCrossEntropy
from .self_distillation import BYOT, BYOTOLS, DeepSupervisedOLS, DeepSupervision
from .standard import CrossEntropy, LabelSmoothing
from .tfkd import TeacherFreeKD
from .zipf import ZipfLabelSmoothing


class DeepSupervisionByName(DeepSupervision):
    """Deep supervision over a multi-exit network, its per-exit loss named: ``base`` any registry name.

    The registry's ``deep_supervision``: :class:`~ols.losses.self_distillation.DeepSupervision`
    (which takes a loss instance) with the base built here, ``alpha`` and ``base_args`` going to
    the base's constructor; the other arguments as there.
    """

    def __init__(self, num_classes: int, base: str = "ce", num_exits: Optional[int] = None,
                 deepest_weight: float = 1.0, shallow_weight: float = 1.0, kd: float = 0.0,
                 T: float = 1.0, t_squared: bool = True, alpha: Optional[float] = None,
                 shallow_alpha: Optional[float] = None, stores: str = "shared",
                 first_period_deepest_only: bool = False, base_args: Optional[Dict[str, Any]] = None):
        if not isinstance(base, str):
            raise TypeError(f"base names a registry loss here (e.g. 'ols'), got {type(base).__name__}; "
                            "pass an instance to ols.losses.self_distillation.DeepSupervision instead")
        if issubclass(_lookup(base), DeepSupervision):  # an unknown base is an error here
            raise ValueError(f"base {base!r} is itself a deep-supervision loss; name a per-exit loss "
                             "(ce, ls, ols)")
        kw = dict(base_args or {})
        if alpha is not None:
            if "alpha" not in loss_parameters(base):
                raise ValueError(f"alpha was given, but the base loss {base!r} has no alpha")
            kw["alpha"] = alpha
        super().__init__(num_classes, create_loss(base, num_classes, **kw), num_exits, deepest_weight,
                         shallow_weight, kd, T, t_squared, shallow_alpha, stores, first_period_deepest_only)


#: name -> loss class; every class is built as ``cls(num_classes, **kw)``.
LOSSES: Dict[str, Callable[..., nn.Module]] = {
    "ce": CrossEntropy,
    "ls": LabelSmoothing,
    "bootsoft": BootstrapSoft,
    "boothard": BootstrapHard,
    "disturblabel": DisturbLabel,
    "sce": SymmetricCrossEntropy,
    "gce": GeneralizedCrossEntropy,
    "pairwise_confusion": PairwiseConfusion,
    "tfkd_reg": TeacherFreeKD,
    # the newer competitors (issue 28): formulas and sources in each class's docstring
    "maxsup": MaxSup,
    "logit_penalty": LogitPenalty,
    "focal": FocalLoss,
    "flsd": FLSD53,
    "logitnorm": LogitNorm,
    "nls": NegativeLabelSmoothing,
    "label_relaxation": LabelRelaxation,
    "zipf": ZipfLabelSmoothing,
    "pskd": ProgressiveSelfKD,
    "cskd": ClassWiseSelfKD,
    "ols": OnlineLabelSmoothing,
    "ols_single": OnlineLabelSmoothingSingle,
    # self-distillation: the first four need a model with exits (--exits byot), ddgsd two views
    "deep_supervision": DeepSupervisionByName,
    "byot": BYOT,
    "byot+ols": BYOTOLS,
    "ds+ols": DeepSupervisedOLS,
    "ddgsd": DataDistortionSelfDistillation,
    # the noisy-label methods of Table VII (issue 40); --loss-arg base=ols puts OLS under each
    "l2rw": LearningToReweight,
    "mwnet": MetaWeightNet,
    "bmm": DynamicBootstrapping,
    "pencil": PENCIL,
    "self_learning": SelfLearning,
    # beyond Table VII (issue 43): two networks (a NetworkPair) for the Co-teaching pair and DivideMix
    "coteaching": CoTeaching,
    "coteaching_plus": CoTeachingPlus,
    "elr": EarlyLearningRegularization,
    "dividemix": DivideMix,
}


def loss_parameters(name: str) -> Dict[str, inspect.Parameter]:
    """The keyword arguments that loss ``name`` accepts besides ``num_classes``."""
    cls = _lookup(name)
    params = dict(inspect.signature(cls.__init__).parameters)
    for skip in ("self", "num_classes"):
        params.pop(skip, None)
    return params


#: constructor arguments every classification loss shares: not shown as a loss's defaults
COMMON_ARGS = ("ignore_index", "reduction", "validate", "weight", "warn_unstepped_after")


def loss_summary(name: str) -> str:
    """One line: the first line of the loss's docstring and its own defaults (``ols list-presets``)."""
    cls = _lookup(name)
    doc = (inspect.getdoc(cls) or "").strip().splitlines()
    defaults = [f"{k}={p.default}" for k, p in loss_parameters(name).items()
                if k not in COMMON_ARGS and isinstance(p.default, (int, float, str)) and p.default is not None
                and not isinstance(p.default, bool)]
    return f"{doc[0] if doc else cls.__name__}" + (f" [{', '.join(defaults)}]" if defaults else "")


def loss_networks(name: str) -> int:
    """How many networks loss ``name`` trains (:func:`~ols.losses.protocol.networks_of`)."""
    return networks_of(_lookup(name))


def _lookup(name: str) -> Callable[..., nn.Module]:
    try:
        return LOSSES[name]
    except KeyError:
        raise unknown_name("loss", name, LOSSES, plural="losses") from None


def create_loss(name: str, num_classes: int, **kw: Any) -> nn.Module:
    """Build the loss registered as ``name`` for ``num_classes`` classes.

    Keyword arguments go to the loss's constructor; an argument the loss does not take
    is an error that lists the ones it does.

    >>> create_loss("ls", 10, eps=0.2)
    LabelSmoothing(num_classes=10, reduction='mean')
    """
    cls = _lookup(name)
    accepted = loss_parameters(name)
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise ValueError(
            f"loss {name!r} does not take {', '.join(unknown)}; it takes: "
            f"{', '.join(accepted) or 'nothing'}"
        )
    for key, value in kw.items():  # no option of any loss is meant to be NaN or infinite
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"loss {name!r}: {key}={value} must be a finite number")
    return cls(num_classes, **kw)
