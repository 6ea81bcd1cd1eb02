"""The class-pair task (CS-KD): a batch, then a same-class partner per sample, whose no-grad forward
gives the teacher."""

import torch

from ols.losses import create_loss
from ols.tasks import ClassPairTask


class _BroadcastsBuffers(torch.nn.Module):
    """What DDP does to a module with a buffer: before every forward, rank 0's buffer is copied into it
    in place (``broadcast_buffers=True``). The forward saves the buffer for its backward, as a
    batch norm's backward keeps its running statistics (pytorch/pytorch#22095 has this form)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.register_buffer("scale", torch.ones(3))

    def forward(self, x):
        with torch.no_grad():
            self.scale.copy_(self.scale.clone())  # the broadcast: same values, one version later
        return self.lin(x) * self.scale


def test_the_class_pair_task_survives_a_buffer_broadcast_before_each_forward_and_equals_its_parts():
    """The partners' no-grad forward runs before the training forward, so DDP's in-place buffer
    copy cannot change what the training forward saved for its backward."""
    torch.manual_seed(0)
    model = _BroadcastsBuffers()
    crit = create_loss("cskd", 3)
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0])
    out = ClassPairTask(crit)(model, x, y, torch.arange(4))
    out["loss"].backward()  # raised "modified by an inplace operation" with the partners second
    got = [p.grad.clone() for p in model.lin.parameters()]
    model.zero_grad()
    with torch.no_grad():
        teacher = model(x[4:])
    z = model(x[:4])
    crit(z, teacher, y).backward()
    assert torch.allclose(out["logits"], torch.cat([z, teacher]).detach())
    for g, want in zip(got, (p.grad for p in model.lin.parameters())):
        assert torch.allclose(g, want)
