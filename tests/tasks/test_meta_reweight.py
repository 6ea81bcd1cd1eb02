"""Ren et al.'s weights and Meta-Weight-Net's step against plain re-implementations of the authors' code.

* ``l2rw``: ``uber-research/learning-to-reweight-examples`` (``reweight_model.py``) takes the weights from
  the Jacobian-vector product at ``eps = 0``: ``u_i = lr * <grad l_i(theta), grad L_meta(theta)>``, then
  ``max(u, 0)`` normalised. The reference loops over the samples' gradients; the task takes the virtual step.
* ``mwnet``: ``xjtushujun/meta-weight-net`` (``train_WRN-28-10_Meta_PGC.py``): a virtual model with the
  weights as plain tensors, ``theta - lr * grad``, the clean loss's gradient into the MLP, its SGD step,
  then the real step with the updated MLP. The reference writes the network and the MLP as functions of
  their weight tensors (the authors' ``MetaModule`` way), not with ``functional_call``.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ols import create_loss
from ols.tasks.base import TaskData
from ols.tasks.meta_reweight import MetaWeightNetTask, ReweightTask

K, B, M, D, LR = 4, 10, 6, 5, 0.3


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, xm = torch.randn(B, D, generator=g), torch.randn(M, D, generator=g)
    return x, torch.randint(0, K, (B,), generator=g), xm, torch.randint(0, K, (M,), generator=g)


def _attach(task, lr=LR):
    labels = torch.zeros(B, dtype=torch.long)
    task.attach(TaskData(source=None, labels=labels, true_labels=labels, flipped=labels.bool(),
                         train_index=np.arange(B), meta_index=np.arange(0), batch_size=B, eval_batch_size=B,
                         seed=0, epochs=1, lr=lambda: lr))
    return task


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, K)).train()


def test_l2rw_weights_equal_the_official_jacobian_vector_product_and_leave_batch_norm_alone():
    model = _bn_model()
    x, y, xm, ym = _batch()
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "tracked" in k}
    task = _attach(ReweightTask(create_loss("l2rw", K)))
    w = task.sample_weights(model, x, y, xm, ym)
    for key, value in buffers.items():  # the virtual passes moved copies of the statistics only
        assert torch.equal(model.state_dict()[key], value), key

    ref = copy.deepcopy(model)
    params = [p for p in ref.parameters()]
    per = F.cross_entropy(ref(x), y, reduction="none")
    meta_grad = torch.autograd.grad(F.cross_entropy(ref(xm), ym), params)
    u = torch.stack([LR * sum((g * mg).sum() for g, mg in
                              zip(torch.autograd.grad(per[i], params, retain_graph=True), meta_grad))
                     for i in range(B)])
    expected = u.clamp_min(0) / u.clamp_min(0).sum()
    torch.testing.assert_close(w, expected, rtol=1e-4, atol=1e-7)
    assert (w == 0).any() and (w > 0).any() and w.sum() == pytest.approx(1.0)


def test_l2rw_all_weights_zero_when_no_sample_helps():
    from ols.losses.noisy.reweight import clipped_normalised

    assert torch.equal(clipped_normalised(torch.tensor([-1.0, 0.0, -2.0])), torch.zeros(3))
    expected = torch.tensor([0, 0.25, 0.75])
    torch.testing.assert_close(clipped_normalised(torch.tensor([-1.0, 1.0, 3.0])), expected)


def test_l2rw_trains_on_the_weighted_loss_and_ols_counts_each_row_by_its_weight():
    model = _bn_model()
    x, y, xm, ym = _batch(1)
    crit = create_loss("l2rw", K, base="ols", alpha=0.5)
    task = _attach(ReweightTask(crit))
    w = task.sample_weights(model, x, y, xm, ym)
    torch.manual_seed(1)
    out = task.compute(model, x, y, torch.arange(B), xm, ym)
    logits = out["logits"].detach()
    ols = create_loss("ols", K, alpha=0.5, reduction="none")  # Eq. (4) per sample, S uniform still
    expected = (w * ols(logits, y, observe=False)).sum()
    torch.testing.assert_close(out["loss"].detach(), expected)
    probs = logits.softmax(1)
    correct = (logits.argmax(1) == y) & (w > 0)
    sums = torch.zeros(K + 1, K).index_add_(0, torch.where(correct, y, K), probs * w.unsqueeze(1))
    torch.testing.assert_close(crit.base.store.sums[:K], sums[:K])


def _mlp_weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(7, D, generator=g) * 0.5, torch.randn(7, generator=g) * 0.1,
            torch.randn(K, 7, generator=g) * 0.5, torch.randn(K, generator=g) * 0.1]


def _mlp(weights, x):
    return F.linear(F.relu(F.linear(x, weights[0], weights[1])), weights[2], weights[3])


def _vnet(weights, loss):
    return torch.sigmoid(F.linear(F.relu(F.linear(loss.unsqueeze(1), weights[0], weights[1])), weights[2],
                                  weights[3])).squeeze(1)


@pytest.mark.parametrize("normalise", [True, False])
def test_mwnet_step_equals_the_official_script_written_out(normalise):
    x, y, xm, ym = _batch(2)
    weights = _mlp_weights()
    model = nn.Sequential(nn.Linear(D, 7), nn.ReLU(), nn.Linear(7, K))
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights):
            p.copy_(w)
    torch.manual_seed(3)
    crit = create_loss("mwnet", K, normalise=normalise)
    theta = [p.detach().clone().requires_grad_(True) for p in crit.net.parameters()]
    task = _attach(MetaWeightNetTask(crit))

    # the official script: a virtual model, the clean loss into V's weights, V's SGD step
    w = [t.clone().requires_grad_(True) for t in weights]
    cost = F.cross_entropy(_mlp(w, x), y, reduction="none")
    v = _vnet(theta, cost.detach())
    norm = v.sum() if normalise else torch.tensor(float(B))
    grads = torch.autograd.grad((cost * v / norm).sum(), w, create_graph=True)
    virtual = [a - LR * g for a, g in zip(w, grads)]
    meta = F.cross_entropy(_mlp(virtual, xm), ym)
    vnet_opt = torch.optim.SGD(theta, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    vnet_opt.zero_grad()
    meta.backward()
    vnet_opt.step()
    cost = F.cross_entropy(_mlp(w, x), y, reduction="none")
    with torch.no_grad():
        v_new = _vnet(theta, cost)
        v_new = v_new / (v_new.sum() if normalise else B)
    expected = (cost * v_new).sum()
    (expected_grad,) = torch.autograd.grad(expected, [w[0]])

    out = task.compute(model, x, y, torch.arange(B), xm, ym)
    for mine, ref in zip(crit.net.parameters(), theta):
        torch.testing.assert_close(mine.detach(), ref.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["loss"].detach(), expected.detach(), rtol=1e-5, atol=1e-7)
    out["loss"].backward()
    torch.testing.assert_close(model[0].weight.grad, expected_grad, rtol=1e-4, atol=1e-7)


def test_mwnet_keeps_its_mlp_and_optimiser_state_in_the_loss_state():
    crit = create_loss("mwnet", K, meta_optimizer="adam")
    task = _attach(MetaWeightNetTask(crit))
    model = nn.Sequential(nn.Linear(D, 7), nn.ReLU(), nn.Linear(7, K))
    x, y, xm, ym = _batch(4)
    task.compute(model, x, y, torch.arange(B), xm, ym)
    state = crit.state_dict()
    assert "net.hidden.weight" in state and state["_extra_state"]["meta_optimizer"]["state"]
    again = create_loss("mwnet", K, meta_optimizer="adam")
    again.load_state_dict(state)
    steps = [s["step"] for s in again.meta_optimizer.state_dict()["state"].values()]
    assert all(float(s) == 1 for s in steps)
    for a, b in zip(again.net.parameters(), crit.net.parameters()):
        assert torch.equal(a, b)


def test_each_steps_clean_batch_comes_from_the_clean_set_augmented_and_is_drawn_again_on_resume(tmp_path):
    from ols.config import TrainConfig
    from ols.distributed import DistContext
    from ols.run_setup import build_run

    cfg = TrainConfig(dataset="synthetic", data_args={"train_per_class": 4}, model="cnn", loss="l2rw",
                      meta_size=100, noise_rate=0.6, batch_size=16, loss_args={"meta_batch_size": 12},
                      out=str(tmp_path))
    r = build_run(cfg, DistContext())
    x, idx = torch.zeros(16, 3, 16, 16), torch.arange(16)
    r.task.set_epoch(2)
    drawn = [r.task.prepare(x, r.train_y[idx], idx)[3:] for _ in range(3)]
    r.task.set_epoch(2, start_batch=2)
    again = r.task.prepare(x, r.train_y[idx], idx)[3:]
    assert torch.equal(drawn[2][0], again[0]) and torch.equal(drawn[2][1], again[1])
    assert not torch.equal(drawn[0][0], drawn[1][0]) and drawn[0][0].shape == (12, 3, 16, 16)
    clean = r.source.train_x[torch.as_tensor(r.meta_index)].float() / 255
    plain = [(img[None] == clean).flatten(1).all(1).any() for img in drawn[0][0]]
    assert not all(plain)  # cropped and flipped, as the training batches are
