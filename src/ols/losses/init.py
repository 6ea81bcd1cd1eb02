"""The soft labels before the first update, ``S^0``: a named choice or a user's prior."""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import torch
from torch import Tensor

#: the named ``init`` choices (besides ``"ls:<eps>"`` and a prior)
NAMED_INITS = ("uniform", "zeros", "onehot")


def make_soft_label_matrix(init: Union[str, Tensor, np.ndarray], num_classes: int) -> Tensor:
    """The ``(K, K)`` float32 soft labels used before the first update, ``S^0``; row ``c``: class ``c``.

    ``init`` is a ``(K, K)`` prior (tensor, array or ``.npy`` path; see :func:`prior_matrix`)
    or one of:

    * ``"uniform"``: every entry ``1/K`` (the paper's text, Sec. III-B). Before the first
      update OLS then equals ``F.cross_entropy(..., label_smoothing=1 - alpha)``.
    * ``"zeros"``: the official CIFAR script; the first period trains on ``alpha * CE``.
    * ``"onehot"``: the identity; the first period trains on plain CE.
    * ``"ls:<eps>"``: ``(1 - eps) * I + eps / K``, torch's label-smoothing target.
    """
    if isinstance(init, (Tensor, np.ndarray)) or (isinstance(init, str) and init.endswith(".npy")):
        return prior_matrix(init, num_classes)
    diagonal, off = named_init(init, num_classes)
    return (diagonal - off) * torch.eye(num_classes) + off


def named_init(init: str, num_classes: int) -> Tuple[float, float]:
    """``(diagonal, off-diagonal)`` entry of the named ``S^0`` ``init`` (see :func:`make_soft_label_matrix`).

    Every named init is a constant on the diagonal and another off it, so a top-k store builds
    its rows from the pair without a ``K x K`` matrix.
    """
    if not isinstance(init, str):
        raise ValueError(f"init must be a string such as 'uniform', 'zeros', 'onehot', 'ls:0.1' or a .npy "
                         f"path, or a (K, K) prior tensor; got {init!r} ({type(init).__name__})")
    k = num_classes
    if init == "uniform":
        return 1.0 / k, 1.0 / k
    if init == "zeros":
        return 0.0, 0.0
    if init == "onehot":
        return 1.0, 0.0
    if init.startswith("ls:"):
        try:
            eps = float(init[3:])
        except ValueError:
            raise ValueError(f"init={init!r}: the part after 'ls:' must be a number, e.g. 'ls:0.1'") from None
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"init={init!r}: eps must be in [0, 1], got {eps}")
        return 1.0 - eps + eps / k, eps / k
    raise ValueError(f"unknown init {init!r}; use one of 'uniform', 'zeros', 'onehot' or 'ls:<eps>'")


def prior_matrix(prior: Union[Tensor, np.ndarray, str], num_classes: int) -> Tensor:
    """A user's ``(K, K)`` class-similarity prior (a tensor, an array or a ``.npy`` path) as soft labels.

    Entries must be finite and non-negative; each row is divided by its sum, so similarity
    scores (WordNet, CLIP, human confusions) serve as they are. Row ``c`` is the target of
    class ``c``.
    """
    where = f"init={prior!r}" if isinstance(prior, str) else "init (a prior matrix)"
    if isinstance(prior, str):
        try:
            prior = np.load(prior, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{where}: cannot read the .npy file ({err})") from None
    matrix = torch.as_tensor(np.asarray(prior) if not isinstance(prior, Tensor) else prior).double()
    k = num_classes
    if matrix.shape != (k, k):
        raise ValueError(f"{where}: a prior must be ({k}, {k}) for num_classes={k}, got "
                         f"{tuple(matrix.shape)}")
    if not bool(torch.isfinite(matrix).all()) or bool((matrix < 0).any()):
        raise ValueError(f"{where}: a prior must hold finite, non-negative entries")
    total = matrix.sum(1, keepdim=True)
    if bool((total == 0).any()):
        row = int(torch.nonzero(total.squeeze(1) == 0)[0])
        raise ValueError(f"{where}: row {row} of the prior is all zero; give every class some mass")
    return (matrix / total).float()
