"""Sample reweighting by meta-learning on a clean set: Ren et al. (``l2rw``) and Meta-Weight-Net (``mwnet``).

Both learn, in every step, how much each sample of the noisy batch should count, from how a
virtual SGD step on the batch would change the loss on a batch of the clean held-out set
(``--meta-size``). The step itself (the virtual step, the meta loss, the weighted update) is
:class:`~ols.tasks.meta_reweight.ReweightTask`'s; this file holds the options, the weight
network and the formulas.

**Under several ranks** the weights are those of one process with the global batch: the virtual
step takes the gradient summed over the ranks and the meta loss is the mean over every rank's clean
batch (both through :func:`~ols.distributed.sum_over_ranks`), the normalising sums are global,
and each rank scales its weighted loss by the number of ranks so DDP's mean gives the global sum.

**With OLS** (``--loss-arg base=ols``) the per-sample loss reweighted is OLS's, Eq. (4) (the
virtual passes read the soft labels and add nothing to them), and OLS's statistics, Eq. (5), add
each correctly classified sample's softmax weighted by its sample weight (a weight of 0: not at all).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from ...distributed import all_reduce_sum
from .base import NoisyLabelMethod, check_positive

#: why the meta-learning methods refuse --cuda-graph
SECOND_ORDER = ("its weights come from a second-order meta step in every training step (a virtual SGD step "
                "and a meta-gradient), which is not captured")


def clipped_normalised(u: Tensor) -> Tensor:
    """Ren et al.'s weights from ``u`` ``(B,)``: ``max(u, 0) / sum max(u, 0)`` over the global batch.

    All zero when every ``u_i <= 0`` (the official code divides by 1 then, ``reweight_model.py``:
    ``w / (sum + (sum == 0))``). The sum is all-reduced under several ranks; no host read.
    """
    w = u.clamp_min(0)
    total = w.sum()
    all_reduce_sum(total)
    return w / torch.where(total > 0, total, torch.ones_like(total))


class LearningToReweight(NoisyLabelMethod):
    r"""Ren et al., "Learning to reweight examples for robust deep learning" (ICML 2018): ``l2rw``.

    Each step, for the noisy batch ``(x_i, y_i)`` of ``B`` and a batch ``(x_j, y_j)`` of ``M`` clean
    held-out images (:class:`~ols.tasks.meta_reweight.ReweightTask`)::

        eps = 0                                                     (B,), one per sample
        theta'(eps) = theta - lr * grad_theta sum_i eps_i * l_i(theta)        a virtual SGD step
        u = -d/d eps  (1/M) sum_j l(x_j, y_j; theta'(eps))                    the meta loss's gradient
        w = max(u, 0) / sum_i max(u, 0)                                       (all 0 if none is > 0)
        loss = sum_i w_i * l_i(theta)                                         w without gradient

    as in the paper's Algorithm 1 and ``uber-research/learning-to-reweight-examples``
    (``reweight_model.py``: weights clipped at 0 and normalised, their gradient stopped). ``lr`` is
    the run's current learning rate (it only scales ``u``, which the normalisation cancels).

    **Batch norm.** Both virtual passes (the noisy batch at ``theta``, the clean one at ``theta'``)
    run the model in training mode, so its batch norm uses each batch's own statistics, as the
    official graphs do (``assigned_weights_resnet_model.py``: batch moments, no moving averages);
    the running statistics they would update are copies, thrown away. The real forward updates them
    once. The official weighting graphs' batch norm has no scale (``gamma``); here the model's own
    batch norm runs, scale included.

    The official code keeps 100 clean images (``--num_clean``) though the paper used 1,000
    (uber-research/learning-to-reweight-examples#6); ``--meta-size`` decides (1,000 for CIFAR).

    Args:
        meta_batch_size: ``M`` per rank; the run's batch size when ``None`` (100 and 100 officially).
        base, alpha, epochs: as :class:`~ols.losses.noisy.base.NoisyLabelMethod`.
    """

    key = "l2rw"

    needs_clean_set = True
    cuda_graph_refusal = SECOND_ORDER
    meta_reweight = "l2rw"

    def __init__(self, num_classes: int, base: str = "ce", alpha: Optional[float] = None, epochs: int = 1,
                 meta_batch_size: Optional[int] = None, ignore_index: int = -100, reduction: str = "mean",
                 validate: bool = True):
        super().__init__(num_classes, base, alpha, epochs, ignore_index, reduction, validate)
        if meta_batch_size is not None and (isinstance(meta_batch_size, bool) or not isinstance(
                meta_batch_size, int) or meta_batch_size < 1):
            raise ValueError("--loss-arg meta_batch_size must be a positive whole number, got "
                             f"{meta_batch_size!r}")
        self.meta_batch_size = meta_batch_size

    def phases(self) -> str:
        return (f"{self.name} (Ren et al. 2018): every step, a virtual SGD step on the batch and the loss of "
                "a clean held-out batch give each sample its weight")


class WeightNet(nn.Module):
    """Meta-Weight-Net's ``V(l; Theta)``: ``sigmoid(W2 relu(W1 l + b1) + b2)``, one hidden layer.

    ``forward(loss (B,)) -> weights (B,)`` in ``(0, 1)``; torch's default ``nn.Linear`` initialisation,
    as the official ``VNet(1, 100, 1)`` (``resnet.py``).
    """

    def __init__(self, hidden: int = 100):
        super().__init__()
        self.hidden = nn.Linear(1, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, loss: Tensor) -> Tensor:
        h = torch.relu(self.hidden(loss.unsqueeze(1).to(self.hidden.weight.dtype)))
        return torch.sigmoid(self.out(h)).squeeze(1)


META_OPTIMIZERS = ("sgd", "adam")


class MetaWeightNet(NoisyLabelMethod):
    r"""Meta-Weight-Net (Shu et al., NeurIPS 2019): ``mwnet``, each sample's weight a function of its loss.

    ``V(l; Theta)`` (:class:`WeightNet`, 100 hidden units) maps a sample's loss to its weight. Each step
    (:class:`~ols.tasks.meta_reweight.MetaWeightNetTask`), for the noisy batch of ``B`` and a clean
    batch of ``M``::

        v_i = V(l_i(theta).detach(); Theta)
        theta'(Theta) = theta - lr * grad_theta sum_i v_i l_i(theta) / n(v)     a virtual SGD step
        Theta <- Theta - meta step on (1/M) sum_j l(x_j, y_j; theta'(Theta))     the MLP's update
        loss = sum_i v_i l_i(theta) / n(v),   v_i = V(l_i; Theta) with the new Theta, no gradient

    ``n(v) = sum_i v_i`` with ``normalise=True`` (the paper, Eq. (5), and the original script
    ``train_WRN-28-10_Meta_PGC.py``; the sum taken as 1 if it is 0), or ``B`` with
    ``normalise=False`` (the "stable" ``MW-Net.py``, xjtushujun/meta-weight-net#7). ``lr`` is the
    run's current learning rate, as both scripts pass. The meta optimiser is the original script's,
    SGD with lr 1e-3, momentum 0.9, Nesterov and weight decay 5e-4, constant
    (``meta_optimizer="adam"``: ``MW-Net.py``'s Adam, lr 1e-3, weight decay 1e-4). ``V``'s weights
    and the meta optimiser's state are part of this loss's ``state_dict()``, so a checkpoint and a
    resume carry them. Batch norm in the virtual passes as :class:`LearningToReweight` says.

    Args:
        hidden: width of ``V``'s hidden layer (100).
        meta_lr: the meta optimiser's learning rate (1e-3).
        meta_optimizer: ``"sgd"`` (the original script, default) or ``"adam"`` (``MW-Net.py``).
        normalise: divide by the weights' sum (default), or by the batch size.
        meta_batch_size: ``M`` per rank; the run's batch size when ``None`` (100 officially).
        base, alpha, epochs: as :class:`~ols.losses.noisy.base.NoisyLabelMethod`.
    """

    key = "mwnet"

    needs_clean_set = True
    cuda_graph_refusal = SECOND_ORDER
    meta_reweight = "mwnet"

    def __init__(self, num_classes: int, base: str = "ce", alpha: Optional[float] = None, epochs: int = 1,
                 hidden: int = 100, meta_lr: float = 1e-3, meta_optimizer: str = "sgd",
                 normalise: bool = True, meta_batch_size: Optional[int] = None, ignore_index: int = -100,
                 reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, base, alpha, epochs, ignore_index, reduction, validate)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"--loss-arg hidden must be a positive whole number of units, got {hidden!r}")
        if meta_optimizer not in META_OPTIMIZERS:
            raise ValueError(f"--loss-arg meta_optimizer={meta_optimizer!r}: use one of "
                             f"{', '.join(META_OPTIMIZERS)}")
        if meta_batch_size is not None and (isinstance(meta_batch_size, bool) or not isinstance(
                meta_batch_size, int) or meta_batch_size < 1):
            raise ValueError("--loss-arg meta_batch_size must be a positive whole number, got "
                             f"{meta_batch_size!r}")
        self.meta_lr = check_positive("meta_lr", meta_lr)
        self.meta_optimizer_name, self.normalise = meta_optimizer, bool(normalise)
        self.meta_batch_size = meta_batch_size
        self.net = WeightNet(hidden)
        if meta_optimizer == "sgd":
            self.meta_optimizer = torch.optim.SGD(self.net.parameters(), lr=self.meta_lr, momentum=0.9,
                                                  nesterov=True, weight_decay=5e-4)
        else:
            self.meta_optimizer = torch.optim.Adam(self.net.parameters(), lr=self.meta_lr, weight_decay=1e-4)

    def weights(self, loss: Tensor) -> Tensor:
        """``V(loss.detach(); Theta)`` ``(B,)``: a differentiable function of ``Theta``."""
        return self.net(loss.detach().float())

    def normaliser(self, v: Tensor) -> Tensor:
        """``n(v)``: the sum of the weights over the global batch (1 if 0), or the global batch size.

        Differentiable under several ranks (:func:`~ols.distributed.sum_over_ranks`); no host read.
        """
        from ...distributed import sum_over_ranks

        if not self.normalise:
            return sum_over_ranks(torch.full((), float(v.shape[0]), device=v.device, dtype=v.dtype))
        total = sum_over_ranks(v.sum())
        return torch.where(total != 0, total, torch.ones_like(total))

    def get_extra_state(self) -> Dict[str, Any]:
        return {"meta_optimizer": self.meta_optimizer.state_dict()}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])

    def phases(self) -> str:
        return (f"{self.name} (Shu et al. 2019): every step, V (a {self.net.hidden.out_features}-unit MLP) "
                "maps each sample's loss to its weight, and a virtual SGD step and the loss of a clean "
                f"held-out batch update V ({self.meta_optimizer_name}, lr {self.meta_lr:g})")

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, meta_optimizer={self.meta_optimizer_name!r}, "
                f"meta_lr={self.meta_lr}, normalise={self.normalise}")
