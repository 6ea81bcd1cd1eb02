"""Class relations in learned soft labels: how much non-target mass stays inside the true group."""

from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import Tensor

#: the share of non-target mass inside the true group: more is better (chance is a reference)
HIGHER_IS_BETTER = {"share": True, "chance": True}
HEADERS = {"share": "in-group share of non-target mass", "chance": "in-group share by chance"}


def within_group_share(soft_labels: Tensor, groups: Sequence[int]) -> Dict[str, float]:
    """For soft labels ``(K, K)`` (row c = target class c) and each class's group ``(K,)``.

    Returns ``share``: the mean over classes of (non-target mass on the other classes of
    the class's group) / (all non-target mass), and ``chance``: the same share if the
    mass were spread uniformly over the other classes, ``(g - 1) / (K - 1)`` averaged.
    """
    s = soft_labels.double()
    k = s.shape[0]
    g = torch.as_tensor(list(groups))
    same = (g[:, None] == g[None, :]) & ~torch.eye(k, dtype=torch.bool)
    off = s * (~torch.eye(k, dtype=torch.bool))
    total = off.sum(1)
    share = torch.where(total > 0, (off * same).sum(1) / total.clamp_min(1e-300), torch.zeros_like(total))
    chance = same.sum(1).double() / (k - 1)
    return {"share": float(share.mean()), "chance": float(chance.mean())}
