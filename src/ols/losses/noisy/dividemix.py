"""DivideMix, Li, Socher & Hoi (ICLR 2020): "Learning with Noisy Labels as Semi-supervised Learning".

The registry's ``dividemix``: two networks (a :class:`~ols.models.pair.NetworkPair`). After a
warm-up on every label, once an epoch each network's per-sample losses are fitted with a
two-component Gaussian mixture; the posterior of the low-loss component is each sample's clean
probability ``w``, and ``w > p_threshold`` splits the data into a labelled and an unlabelled part.
Each network trains on the split its **peer** made (co-divide), with MixMatch: labels of the
labelled part refined by the network's own prediction (co-refinement), labels of the unlabelled
part guessed by both networks (co-guessing), both sharpened, the batch mixed with a partner. The
step is :mod:`ols.tasks.dividemix`; the formulas are the functions below.

Facts from the authors' ``Train_cifar.py`` (``LiJunnan1992/DivideMix``; read, not copied):

* **division**: cross-entropy of the un-augmented training images in eval mode, min-max
  normalised, ``GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4)``; here
  with ``random_state`` fixed (theirs is unseeded), so a run is reproducible;
* **co-refinement**: ``sharpen(w * y + (1 - w) * p_own, T)``, ``p_own`` the mean softmax of the
  network's two views; **co-guessing**: ``sharpen`` of the mean softmax of both networks on both
  views; ``T = 0.5``;
* **MixMatch**: ``lambda ~ Beta(4, 4)``, ``lambda = max(lambda, 1 - lambda)``, every row mixed with
  a random partner; ``L_x`` the soft cross-entropy over the rows of labelled samples, ``L_u`` the
  squared error of the probabilities over the unlabelled rows (mean over rows and classes), the
  prior penalty ``sum_c pi_c log(pi_c / mean p_c)`` (``pi`` uniform) over all mixed rows;
  ``L = L_x + lambda_u(t) L_u + penalty``, ``lambda_u(t) = lambda_u * clip((t - warmup) / 16, 0, 1)``
  with ``t`` the epoch and its fraction done (``lambda_u`` 25 by default; their Table 7 gives 0 to
  150 by noise rate);
* **warm-up**: cross-entropy on every label, 10 of 300 epochs for CIFAR-10, 30 for CIFAR-100.

**One engine step, not their two loops.** Their epoch trains network A on its labelled loader (64
a step) with an unlabelled loader (64) beside it, then network B likewise. Here each step trains
both networks on the same batch of ``--batch-size`` samples (two augmented views each), each
network's labelled and unlabelled parts being the batch's samples on either side of its peer's
split, so their sizes follow the split and the epoch is the run's epoch. The peer's guesses come
from its eval-mode forward, as theirs; a network's own predictions from its train-mode forward.
A batch without a labelled (unlabelled) sample has ``L_x = 0`` (``L_u = 0``). The warm-up and
ramp lengths are the paper's proportions of ``--epochs``. Not built: the asymmetric-noise
confidence penalty and the 90 %-noise loss averaging.

**With OLS** (``--loss-arg base=ols``): ``L_x`` trains on OLS's target ``q(t)`` of the mixed refined
label ``t`` (Eq. (4) with a soft label, :meth:`~ols.losses.noisy.base.NoisyLabelMethod.base_loss_probs`),
each network with its own soft labels; their statistics count the labelled samples whose un-mixed
prediction is their label; in the warm-up, plain OLS on every label. The division stays on
cross-entropy.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import check_positive, epoch_span, phase_epochs
from .two_networks import TwoNetworkMethod

#: their warm-up: 10 (CIFAR-10) or 30 (CIFAR-100) of 300 epochs; the lambda_u ramp: 16 of 300
WARMUP_SHARE = {10: 10 / 300, 100: 30 / 300}
RAMP_SHARE = 16 / 300
#: their GaussianMixture settings
GMM = {"n_components": 2, "max_iter": 10, "tol": 1e-2, "reg_covar": 5e-4}


def clean_probability(losses: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(n,)`` float32: each sample's posterior of the low-mean component of a mixture fitted to ``losses``.

    ``losses`` ``(n,)`` are min-max normalised first; if they are all equal every sample is clean (1).
    """
    from sklearn.mixture import GaussianMixture

    losses = np.asarray(losses, dtype=np.float64)
    span = losses.max() - losses.min() if losses.size else 0.0
    if not span > 0:
        return np.ones(losses.shape, dtype=np.float32)
    x = ((losses - losses.min()) / span).reshape(-1, 1)
    gmm = GaussianMixture(random_state=seed, **GMM).fit(x)
    return gmm.predict_proba(x)[:, int(gmm.means_.argmin())].astype(np.float32)


def sharpen(probs: Tensor, temperature: float) -> Tensor:
    """``p^(1/T) / sum_k p_k^(1/T)`` row-wise for ``probs`` ``(B, K)``."""
    p = probs.pow(1.0 / temperature)
    return p / p.sum(1, keepdim=True)


def co_refine(labels_one_hot: Tensor, clean: Tensor, own: Tensor, temperature: float) -> Tensor:
    """``sharpen(w * y + (1 - w) * p_own, T)`` ``(B, K)``; ``clean`` ``(B,)`` is ``w``, ``own`` ``p_own``."""
    w = clean.unsqueeze(1).to(own.dtype)
    return sharpen(w * labels_one_hot.to(own.dtype) + (1 - w) * own, temperature)


def co_guess(predictions: Tensor, temperature: float) -> Tensor:
    """``sharpen(mean_j p_j, T)`` ``(B, K)`` of ``predictions`` ``(J, B, K)`` (both networks, both views)."""
    return sharpen(predictions.mean(0), temperature)


def mixmatch_terms(logits: Tensor, targets: Tensor, labelled: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(L_x, L_u, penalty)`` of mixed ``logits`` ``(R, K)`` against mixed ``targets`` ``(R, K)``.

    ``labelled`` ``(R,)`` bool says which rows began as a labelled sample. ``L_x``: the mean over
    those rows of ``-sum_k t_k log softmax(z)_k``; ``L_u``: the mean over the other rows and the
    classes of ``(softmax(z) - t)^2``; ``penalty``: ``sum_k (1/K) log((1/K) / mean_r softmax(z)_rk)``.
    An empty part contributes 0. No host read.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    probs = logp.exp()
    lab = labelled.to(logp.dtype)
    l_x = -((targets * logp).sum(1) * lab).sum() / lab.sum().clamp_min(1)
    unl = 1.0 - lab
    l_u = (((probs - targets) ** 2).mean(1) * unl).sum() / unl.sum().clamp_min(1)
    k = logits.shape[1]
    prior = torch.full((k,), 1.0 / k, dtype=probs.dtype, device=probs.device)
    penalty = (prior * torch.log(prior / probs.mean(0))).sum()
    return l_x, l_u, penalty


def lambda_u_ramp(progress: float, warmup: int, ramp: int, lambda_u: float) -> float:
    """``lambda_u * clip((progress - warmup) / ramp, 0, 1)``; ``progress``: 0-based epoch and its share."""
    if ramp <= 0:
        return lambda_u if progress >= warmup else 0.0
    return lambda_u * min(max((progress - warmup) / ramp, 0.0), 1.0)


class DivideMix(TwoNetworkMethod):
    """DivideMix (Li et al., ICLR 2020): ``dividemix``, co-divided data and MixMatch between two networks.

    The rules, defaults and departures from the authors' code are the module docstring's.

    **State**: ``clean`` ``(2, N)``, each network's clean probability of every training sample from
    the last fit (``fitted`` says whether one ran), replicated on every rank.

    Args:
        num_samples: ``N``.
        warmup_epochs: epochs of cross-entropy on every label; 10/300 (``K <= 10``) or 30/300 of
            ``--epochs`` when ``None``, at least 1.
        p_threshold: the clean probability above which a sample is labelled (0.5).
        temperature: the sharpening ``T`` (0.5).
        mixup_alpha: MixMatch's Beta parameter (4).
        lambda_u: the unlabelled loss's weight after the ramp (25).
        ramp_epochs: the ramp's length; 16/300 of ``--epochs`` when ``None``.
        seed: the mixture's ``random_state`` and the step's draws (``ols train`` passes ``--seed``).
        base, alpha, epochs: as :class:`~ols.losses.noisy.base.NoisyLabelMethod`.
    """

    key = "dividemix"
    cuda_graph_refusal = "its step changes at the warm-up's end and mixes by draws made outside it"

    def __init__(self, num_classes: int, num_samples: int, base: str = "ce", alpha: Optional[float] = None,
                 epochs: int = 1, warmup_epochs: Optional[int] = None, p_threshold: float = 0.5,
                 temperature: float = 0.5, mixup_alpha: float = 4.0, lambda_u: float = 25.0,
                 ramp_epochs: Optional[int] = None, seed: int = 0, ignore_index: int = -100,
                 reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, base, alpha, epochs, ignore_index, reduction, validate)
        share = WARMUP_SHARE[10 if num_classes <= 10 else 100]
        self.warmup_epochs = phase_epochs("warmup_epochs", warmup_epochs, share, epochs, least=1)
        self.p_threshold = check_positive("p_threshold", p_threshold, zero=True)
        if self.p_threshold >= 1:
            raise ValueError(f"--loss-arg p_threshold must be in [0, 1), got {p_threshold}")
        self.temperature = check_positive("temperature", temperature)
        self.mixup_alpha = check_positive("mixup_alpha", mixup_alpha)
        self.lambda_u = check_positive("lambda_u", lambda_u, zero=True)
        self.ramp_epochs = phase_epochs("ramp_epochs", ramp_epochs, RAMP_SHARE, epochs)
        self.seed = int(seed)
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        self.num_samples = num_samples
        self.register_buffer("clean", torch.ones(2, num_samples))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def warming_up(self, epoch: int) -> bool:
        """Whether 1-based ``epoch`` is in the warm-up."""
        return epoch <= self.warmup_epochs

    def set_division(self, index: Tensor, losses: np.ndarray) -> None:
        """Fit each network's mixture to ``losses`` ``(n, 2)`` of the training samples ``index`` ``(n,)``."""
        for m in range(2):
            w = clean_probability(losses[:, m], self.seed)
            self.clean[m].index_copy_(0, index, torch.as_tensor(w, device=self.clean.device))
        self.fitted.fill_(True)

    def phases(self) -> str:
        w, r = self.warmup_epochs, self.ramp_epochs
        return (f"{self.name} (Li et al. 2020): {epoch_span(1, w)} warm-up on every label; then each epoch a "
                f"mixture on each network's losses splits the data (p_threshold {self.p_threshold:g}) and "
                f"MixMatch trains on the peer's split, lambda_u rising to {self.lambda_u:g} "
                + (f"over {epoch_span(w + 1, w + r)}" if r else "at once")
                + f" (warmup_epochs={w}, ramp_epochs={r})")

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, warmup_epochs={self.warmup_epochs}, "
                f"p_threshold={self.p_threshold}, temperature={self.temperature}, "
                f"mixup_alpha={self.mixup_alpha}, lambda_u={self.lambda_u}, ramp_epochs={self.ramp_epochs}")


def mix_draws(seed: int, epoch: int, rank: int, batch: int, rows: int, alpha: float):
    """``[(lam, perm)]`` for the two networks of a step: ``max(l, 1 - l)``, ``l ~ Beta(alpha, alpha)``."""
    rng = np.random.default_rng((seed, epoch, rank, batch, 0xD1))
    out = []
    for _ in range(2):
        lam = float(rng.beta(alpha, alpha))
        out.append((max(lam, 1.0 - lam), rng.permutation(rows)))
    return out

