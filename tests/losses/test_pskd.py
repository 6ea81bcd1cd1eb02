"""PS-KD against a plain re-implementation of the official training loop (main.py): the same targets
and losses over three epochs, float64 gradients, and a resume in the middle."""

import torch
import torch.nn.functional as F

from ols.losses import create_loss

K, N, B, EPOCHS, ALPHA_T = 4, 12, 4, 3, 0.8


def stream():
    """Fixed logits for every (epoch, batch), batches in a shuffled order each epoch."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, K, (N,), generator=g)
    out = []
    for _ in range(EPOCHS):
        order = torch.randperm(N, generator=g)
        out.append([(torch.randn(B, K, generator=g, dtype=torch.float64) * 2, order[i:i + B])
                    for i in range(0, N, B)])
    return labels, out


def official(labels, epochs):
    """main.py, written out: all_predictions starts at zero, holds the one-hot label during epoch 0,
    and each batch's softmax replaces the sample's row after its loss."""
    all_predictions = torch.zeros(N, K, dtype=torch.float64)
    losses = []
    for epoch, batches in enumerate(epochs):
        alpha_t = max(0.0, ALPHA_T * ((epoch + 1) / EPOCHS))
        for z, idx in batches:
            onehot = F.one_hot(labels[idx], K).double()
            if epoch == 0:
                all_predictions[idx] = onehot
            soft = (1 - alpha_t) * onehot + alpha_t * all_predictions[idx]
            losses.append(torch.sum(-soft * F.log_softmax(z, 1), 1).mean())
            all_predictions[idx] = F.softmax(z, 1).detach()
    return losses


def ours(labels, epochs, crit=None, start=0):
    crit = crit or create_loss("pskd", K, num_samples=N, epochs=EPOCHS)
    losses = []
    for epoch, batches in list(enumerate(epochs))[start:]:
        crit.set_progress(epoch / EPOCHS)  # as the engine, at the epoch's start
        for z, idx in batches:
            losses.append(crit(z, labels[idx], index=idx))
        crit.step()  # at the epoch's end
    return losses, crit


def test_equals_the_official_loop_over_three_epochs():
    labels, epochs = stream()
    want = official(labels, epochs)
    got, crit = ours(labels, epochs)
    torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=1e-6, atol=1e-9)
    assert abs(float(crit.alpha_t) - ALPHA_T) < 1e-7  # the last epoch's (held in float32)


def test_gradients_equal_the_official_target_and_pass_gradcheck():
    labels, epochs = stream()
    _, crit = ours(labels, epochs[:1])  # one epoch stored: the teachers are real predictions now
    crit.set_progress(1 / EPOCHS)
    z, idx = epochs[1][0]
    za = z.clone().requires_grad_()
    crit(za, labels[idx], index=idx).backward()
    teacher = crit.previous[idx].double()
    alpha = ALPHA_T * 2 / EPOCHS
    target = (1 - alpha) * F.one_hot(labels[idx], K).double() + alpha * teacher
    zb = z.clone().requires_grad_()
    torch.sum(-target * F.log_softmax(zb, 1), 1).mean().backward()
    torch.testing.assert_close(za.grad, zb.grad, rtol=1e-6, atol=1e-9)
    crit.eval()  # no statistics while gradcheck calls it many times
    assert torch.autograd.gradcheck(lambda t: crit(t, labels[idx], index=idx), (z.clone().requires_grad_(),))


def test_a_resume_between_epochs_continues_exactly():
    labels, epochs = stream()
    straight, _ = ours(labels, epochs)
    first, crit = ours(labels, epochs[:2])
    again = create_loss("pskd", K, num_samples=N, epochs=EPOCHS)
    again.load_state_dict(crit.state_dict())
    rest, _ = ours(labels, epochs, crit=again, start=2)
    torch.testing.assert_close(torch.stack(first + rest), torch.stack(straight), rtol=0, atol=0)


def test_needs_the_index_and_the_runs_length():
    import pytest

    crit = create_loss("pskd", K, num_samples=N, epochs=EPOCHS)
    with pytest.raises(ValueError, match="pskd needs each sample's dataset index"):
        crit(torch.randn(2, K), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        create_loss("pskd", K, num_samples=N, epochs=0)
    assert not crit.linear_in_target
