"""Two networks trained as one run (Co-teaching, DivideMix): one module holding both.

The pair *is* the run's model, so everything the engine does to a model it does to both networks
at once and nothing else has to know there are two: one optimiser over both parameter sets (each
parameter keeps its own momentum or Adam moments, so this is two optimisers with the same
settings), one schedule, one weight average (``--ema-decay``), one DDP wrapper, one autocast,
one ``model`` entry in the checkpoint (``members.0.*`` and ``members.1.*``), resumed as one.

``pair(x)`` is the ensemble: the log of the mean of the two softmaxes, ``(B, K)``, which is what
``ols eval``, the test error and every attack see (its argmax is the ensemble's prediction, and
its softmax the ensemble's probabilities). ``pair(x, members=True)`` is ``(2, B, K)``, each
network's own logits, and ``pair(xs, apart=True)`` runs member ``i`` on ``xs[i]`` (two inputs of
one shape): a task calls the pair once with gradients per step, so DDP sees one forward.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


class NetworkPair(nn.Module):
    """Two classifiers over the same inputs and classes; ``forward`` as the module docstring says.

    Args:
        first, peer: the two networks (:class:`~ols.models.wrapper.Classifier` each); ``peer`` may be
            another architecture (``--peer-model``) with the same output shape.
    """

    def __init__(self, first: nn.Module, peer: nn.Module):
        super().__init__()
        self.members = nn.ModuleList([first, peer])

    @property
    def num_exits(self) -> int:
        return 1

    def forward(self, x: Tensor, members: bool = False, apart: bool = False) -> Tensor:
        """Ensemble log-probs ``(B, K)``; ``members``: ``(2, B, K)`` logits; ``apart``: ``x`` is 2 inputs."""
        if apart:
            return torch.stack([net(part) for net, part in zip(self.members, x.unbind(0))])
        logits = torch.stack([net(x) for net in self.members])  # (2, B, K)
        if members:
            return logits
        return ensemble_log_probs(logits)

    def features(self, x: Tensor) -> Tensor:
        """The first network's ``(B, D)`` penultimate features (t-SNE plots one of them)."""
        return self.members[0].features(x)


def ensemble_log_probs(logits: Tensor) -> Tensor:
    """``log(mean_m softmax(logits[m]))`` ``(B, K)`` of stacked logits ``(M, B, K)``, in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.logsumexp(logp, dim=0) - math.log(logits.shape[0])


def check_peer(first: nn.Module, peer: nn.Module, input_shape: Sequence[int], names: Sequence[str]) -> None:
    """Refuse, in one line, a peer whose output for the dataset's inputs differs from the first network's."""
    probe = torch.zeros(2, *input_shape, device=next(first.parameters()).device)
    shapes = []
    for net, name in zip((first, peer), names):
        was = net.training
        net.eval()
        try:
            with torch.no_grad():
                shapes.append(tuple(net(probe).shape))
        except Exception as err:  # a network that cannot take these inputs at all
            raise ValueError(f"--peer-model {names[1]}: the network {name} does not take this dataset's "
                             f"inputs {tuple(input_shape)} ({type(err).__name__}); pick another --peer-model"
                             ) from None
        finally:
            net.train(was)
    if shapes[0] != shapes[1]:
        raise ValueError(f"--peer-model {names[1]} gives outputs of shape {shapes[1][1:]} where --model "
                         f"{names[0]} gives {shapes[0][1:]}; the two networks must predict the same classes")
