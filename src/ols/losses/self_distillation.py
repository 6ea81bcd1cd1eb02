r"""Deep supervision with distillation over the exits of a multi-exit network: BYOT and BYOT + OLS.

One loss serves every preset. For exits ``z_0`` (the deepest, the teacher) to ``z_{E-1}``:

.. math::

    L = \sum_i w_i \, \mathrm{base}_i(z_i, y)
        + \mathrm{kd} \sum_{i>0} T^2 \, \mathrm{KL}\big(\mathrm{softmax}(z_0/T) \,\|\,
          \mathrm{softmax}(z_i/T)\big)

with ``z_0`` detached inside the KL (BYOT's Eq. 2 without the feature hints, which the
OLS paper removes: Sec. V-B). The presets:

* ``byot`` (:class:`BYOT`): CE at every exit. Defaults follow the BYOT re-implementation the
  OLS authors build on (luanyunteng/pytorch-be-your-own-teacher ``train.py:63-69,206-228``):
  ``kd = 0.1``, ``T = 3`` with the ``T^2`` factor, every exit weighted ``1 - kd``. The
  journal code (ArchipLab-LinfengZhang/pytorch-self-distillation-final ``train.py:17-31,150-159``)
  is ``kd=0.3, t_squared=False, deepest_weight=1, shallow_weight=0.7``. A soft-target
  cross-entropy to the teacher, as both codebases write it, differs from this KL by the
  teacher's entropy: the same gradients, a loss larger by a constant.
* ``byot+ols`` (:class:`BYOTOLS`): the same with OLS as the base. **One** soft-label store,
  observed from the deepest exit only; every exit's OLS term reads it.
  ``stores="per_exit"`` gives each exit its own store, observed from that exit (an ablation).
* ``ds+ols`` (:class:`DeepSupervisedOLS`): what the official OLS repository runs under the
  name "BYOT + OLS" (``cifar/scripts/train_cifar_all_methods_deepsupervision.py:419-435``):
  deep supervision plus OLS with no KD term, the deepest exit weighted 0.75 hard + 0.75
  soft and each shallow exit 0.25 hard + 0.125 soft, and CE on the deepest exit alone
  until the first update period closes (the first epoch).

The shallow exits of the first period get the gradient ``0 * loss``, not none, so DDP's
reducer sees every parameter (weight decay and momentum still move them; the official
script leaves them untouched).
"""

from __future__ import annotations

import copy
import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ols import OnlineLabelSmoothing
from .protocol import is_periodic, needs_index
from .standard import CrossEntropy

#: the ``stores`` choices of a periodic base
STORES = ("shared", "per_exit")


def distillation_kl(student: Tensor, teacher: Tensor, T: float) -> Tensor:
    r"""``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, the batch mean; ``teacher`` detached.

    ``student``, ``teacher``: ``(B, K)`` logits.
    """
    log_q = F.log_softmax(student.float() / T, dim=1)
    log_p = F.log_softmax(teacher.detach().float() / T, dim=1)
    return T * T * F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def _non_negative(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite weight >= 0, got {value}")
    return float(value)


class DeepSupervision(nn.Module):
    r"""Deep supervision with distillation, ``L`` of the module docstring, over exits deepest first.

    ``forward(logits, target)``: ``logits`` a list of ``E`` tensors ``(B, K)``, deepest first
    (what a :class:`~ols.models.exits.MultiExit` gives in training mode), ``target`` ``(B,)``.
    Returns the scalar batch mean.

    **State.** A periodic base (OLS) keeps its soft labels in ``base`` (``stores="shared"``:
    one store, observed from ``z_0`` alone; shallow exits read it with ``observe=False``) or
    in ``bases`` (``"per_exit"``: one per exit, each observing its own exit). :meth:`step`
    closes every store's period; ``soft_labels`` is the deepest exit's.

    Args:
        num_classes: ``K``.
        base: the per-exit loss, an instance (default: cross-entropy); any loss that needs no
            sample index. ``stores="per_exit"`` deep-copies it once per further exit. From the
            command line, ``--loss-arg base=NAME`` names it (the registry builds it, with
            ``alpha`` and ``base_args``).
        num_exits: ``E``; required for ``stores="per_exit"``, checked against the input otherwise.
        deepest_weight, shallow_weight: ``w_0`` and ``w_i`` for ``i > 0`` (>= 0).
        kd: weight of the distillation term (>= 0; 0 turns it off).
        T: distillation temperature (> 0).
        t_squared: multiply the KL by ``T^2`` (Hinton et al.'s gradient scale).
        shallow_alpha: OLS only: the shallow exits' ``alpha`` (default: the base's).
        stores: ``"shared"`` or ``"per_exit"``, for a periodic base.
        first_period_deepest_only: until the base's first ``step()``, the loss is CE on the
            deepest exit alone (the official recipe's first epoch); needs a periodic base.
    """

    takes_exits = True
    needs_index = False

    def __init__(self, num_classes: int, base: Optional[nn.Module] = None, num_exits: Optional[int] = None,
                 deepest_weight: float = 1.0, shallow_weight: float = 1.0, kd: float = 0.0, T: float = 1.0,
                 t_squared: bool = True, shallow_alpha: Optional[float] = None,
                 stores: str = "shared", first_period_deepest_only: bool = False):
        super().__init__()
        first = CrossEntropy(num_classes) if base is None else base
        if not isinstance(first, nn.Module):
            raise TypeError(f"base must be a loss instance (an nn.Module), got {type(first).__name__}; "
                            "by name: create_loss('deep_supervision', K, base='ols')")
        self.num_classes, self.base_name = num_classes, type(first).__name__
        self.deepest_weight = _non_negative("deepest_weight", deepest_weight)
        self.shallow_weight = _non_negative("shallow_weight", shallow_weight)
        self.kd = _non_negative("kd", kd)
        if not math.isfinite(T) or T <= 0:
            raise ValueError(f"T (the distillation temperature) must be > 0, got {T}; BYOT uses T=3")
        self.T, self.t_squared = float(T), bool(t_squared)
        if stores not in STORES:
            raise ValueError(f"stores must be one of {', '.join(STORES)}, got {stores!r}")
        if num_exits is not None and num_exits < 2:
            raise ValueError(f"num_exits must be at least 2 (the deepest exit and one more), got {num_exits}")
        self.num_exits, self.stores = num_exits, stores
        if needs_index(first):
            raise ValueError(f"base {self.base_name} needs each sample's dataset index, which deep "
                             "supervision does not pass; use ce, ls or ols")
        self.periodic = is_periodic(first)
        if shallow_alpha is not None and not self.periodic:
            raise ValueError(f"shallow_alpha needs an OLS base, not {self.base_name}")
        self.shallow_alpha = shallow_alpha
        if first_period_deepest_only and not self.periodic:
            raise ValueError(f"first_period_deepest_only needs a base with update periods (ols), "
                             f"not {self.base_name}")
        self.first_period_deepest_only = bool(first_period_deepest_only)
        if self.first_period_deepest_only:
            self.warm_up = CrossEntropy(num_classes)  # the deepest exit's loss until the first step
        if self.periodic and stores == "per_exit":
            if num_exits is None:
                raise ValueError("stores='per_exit' needs num_exits (the model's num_exits)")
            self.bases = nn.ModuleList([first] + [copy.deepcopy(first) for _ in range(num_exits - 1)])
        else:
            self.base = first

    # -- the periodic-loss protocol (ols.losses.protocol), forwarded to the base's stores --
    @property
    def _stores(self) -> List[nn.Module]:
        if not self.periodic:
            return []
        return list(self.bases) if hasattr(self, "bases") else [self.base]

    @property
    def update_every(self) -> Optional[int]:
        return self._stores[0].update_every if self.periodic else None

    def step(self) -> None:
        """Close every store's update period (a collective under ``torch.distributed``); no-op for CE."""
        for store in self._stores:
            store.step()

    @property
    def soft_labels(self) -> Optional[Tensor]:
        """The deepest exit's ``(K, K)`` soft labels (``None`` for a base without them)."""
        return self._stores[0].soft_labels if self.periodic else None

    def _exit_loss(self, i: int, z: Tensor, y: Tensor) -> Tensor:
        if not self.periodic:
            return self.base(z, y)
        if hasattr(self, "bases"):
            return self.bases[i](z, y, alpha=self.shallow_alpha if i else None)
        if i == 0:
            return self.base(z, y)
        return self.base(z, y, observe=False, alpha=self.shallow_alpha)

    def forward(self, logits: Sequence[Tensor], target: Tensor) -> Tensor:
        if isinstance(logits, Tensor) or len(logits) < 2:
            raise ValueError(f"{type(self).__name__} takes every exit's logits, deepest first; the model "
                             "gave one output: train a model with exits (--exits byot)")
        if self.num_exits is not None and len(logits) != self.num_exits:
            raise ValueError(f"{type(self).__name__} was built for {self.num_exits} exits, got {len(logits)}")
        total = self.deepest_weight * self._exit_loss(0, logits[0], target)
        for i in range(1, len(logits)):  # not enumerate(start=1): a graph break under torch 2.4
            z = logits[i]
            total = total + self.shallow_weight * self._exit_loss(i, z, target)
            if self.kd:
                kl = distillation_kl(z, logits[0], self.T)
                total = total + self.kd * (kl if self.t_squared else kl / (self.T * self.T))
        if self.first_period_deepest_only:
            warm = self._stores[0].store.num_updates == 0  # a tensor: no device sync, no graph break
            deepest_ce = self.warm_up(logits[0], target)
            total = torch.where(warm, deepest_ce + 0.0 * total, total)  # 0 * total: DDP sees every parameter
        return total

    def extra_repr(self) -> str:
        return (f"base={self.base_name!r}, num_exits={self.num_exits}, deepest_weight={self.deepest_weight}, "
                f"shallow_weight={self.shallow_weight}, kd={self.kd}, T={self.T}, stores={self.stores!r}")


class BYOT(DeepSupervision):
    """BYOT (Zhang et al., ICCV 2019) without feature hints: CE at every exit plus KD to the deepest.

    ``deepest_weight`` and ``shallow_weight`` default to ``1 - kd`` (luanyunteng's
    ``(1 - alpha) * sum CE``); see the module docstring for the journal variant.
    """

    def __init__(self, num_classes: int, num_exits: Optional[int] = None, kd: float = 0.1, T: float = 3.0,
                 t_squared: bool = True, deepest_weight: Optional[float] = None,
                 shallow_weight: Optional[float] = None):
        rest = 1.0 - kd
        super().__init__(num_classes, CrossEntropy(num_classes), num_exits,
                         rest if deepest_weight is None else deepest_weight,
                         rest if shallow_weight is None else shallow_weight, kd, T, t_squared)


class BYOTOLS(DeepSupervision):
    """BYOT + OLS (the paper's Tables II and IV): BYOT with OLS (``alpha``, Eq. 4) at every exit."""

    def __init__(self, num_classes: int, num_exits: Optional[int] = None, alpha: float = 0.5, kd: float = 0.1,
                 T: float = 3.0, t_squared: bool = True, deepest_weight: Optional[float] = None,
                 shallow_weight: Optional[float] = None, stores: str = "shared",
                 first_period_deepest_only: bool = False):
        rest = 1.0 - kd
        super().__init__(num_classes, OnlineLabelSmoothing(num_classes, alpha=alpha), num_exits,
                         rest if deepest_weight is None else deepest_weight,
                         rest if shallow_weight is None else shallow_weight, kd, T, t_squared,
                         stores=stores, first_period_deepest_only=first_period_deepest_only)


class DeepSupervisedOLS(DeepSupervision):
    """The official repository's "BYOT + OLS": deep supervision plus OLS, no KD (module docstring).

    Exit ``i`` trains on ``hard_i * CE(z_i, y) + soft_i * CE(z_i, S[y])``; as OLS terms that is
    weight ``hard + soft`` at ``alpha = hard / (hard + soft)`` (1.5 at 0.5 for the deepest
    exit, 0.375 at 2/3 for the others).
    """

    def __init__(self, num_classes: int, num_exits: Optional[int] = None, deepest_hard: float = 0.75,
                 deepest_soft: float = 0.75, shallow_hard: float = 0.25, shallow_soft: float = 0.125,
                 first_period_deepest_only: bool = True, stores: str = "shared"):
        for name, value in (("deepest_hard", deepest_hard), ("deepest_soft", deepest_soft),
                            ("shallow_hard", shallow_hard), ("shallow_soft", shallow_soft)):
            _non_negative(name, value)
        deep, shallow = deepest_hard + deepest_soft, shallow_hard + shallow_soft
        if deep == 0 or shallow == 0:
            raise ValueError("ds+ols: each exit needs a hard or a soft weight above 0")
        super().__init__(num_classes, OnlineLabelSmoothing(num_classes, alpha=deepest_hard / deep), num_exits,
                         deep, shallow, shallow_alpha=shallow_hard / shallow, stores=stores,
                         first_period_deepest_only=first_period_deepest_only)
