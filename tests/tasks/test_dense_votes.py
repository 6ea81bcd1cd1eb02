"""Zipf's dense votes: the votes against a by-hand count, the loss ranked by them against the official
formula (scipy's rankdata), the task found by the registry, and a run end to end."""

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from ols.cli import main
from ols.losses import create_loss
from ols.tasks.dense_votes import DenseVoteTask, dense_votes

K = 5


def test_votes_are_the_argmax_of_the_head_at_each_position():
    torch.manual_seed(0)
    head = torch.nn.Linear(3, K)
    fmap = torch.randn(2, 3, 2, 3)
    votes = dense_votes(fmap, head)
    want = torch.zeros(2, K)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                want[b, int(head(fmap[b, :, i, j]).argmax())] += 1
    torch.testing.assert_close(votes, want)
    assert votes.sum(1).tolist() == [6.0, 6.0]


def test_the_loss_ranks_by_the_votes_as_the_official_gen_pdf():
    torch.manual_seed(1)
    z = torch.randn(4, K, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    votes = torch.tensor([[3.0, 1, 1, 0, 0], [0, 5, 0, 0, 0], [2, 2, 1, 0, 0], [0, 0, 0, 4, 1]])
    crit = create_loss("zipf", K, dense=True)
    got = crit(z, y, votes=votes)
    # official: rank = rankdata(-votes, method="min"); q = 1/rank over the non-targets, renormalised;
    # KL(q || softmax of the non-target logits), batch mean; plus CE
    rank = rankdata(-votes.numpy(), axis=1, method="min")
    loss = F.cross_entropy(z, y)
    kls = []
    for b in range(4):
        keep = [k for k in range(K) if k != int(y[b])]
        q = torch.tensor(1.0 / rank[b, keep], dtype=torch.float32)
        q = q / q.sum()
        log_p = torch.log_softmax(z[b, keep], 0)
        kls.append((q * (q.log() - log_p)).sum())
    torch.testing.assert_close(got, loss + 0.1 * torch.stack(kls).mean())
    assert not torch.allclose(got, crit(z, y))  # without votes it ranks by the logits
    with pytest.raises(ValueError, match=r"votes must be \(B, K\)"):
        crit(z, y, votes=votes[:, :3])


def test_the_registry_picks_the_dense_vote_task_and_it_feeds_the_votes(monkeypatch):
    from ols.config import TrainConfig
    from ols.models import create_model
    from ols.tasks.registry import build_task

    model = create_model("cnn", K, in_channels=1)
    crit = create_loss("zipf", K, dense=True)
    task = build_task(TrainConfig(loss="zipf", model="cnn"), crit, model)
    assert isinstance(task, DenseVoteTask)
    seen = {}
    original = crit.forward

    def spy(logits, target, votes=None):
        seen["votes"] = votes
        return original(logits, target, votes=votes)

    monkeypatch.setattr(crit, "forward", spy)
    x = torch.randn(3, 1, 8, 8)
    task(model, x, torch.tensor([0, 1, 2]), torch.arange(3))
    fmap = model.body[:-2](x) if hasattr(model, "body") else None
    assert seen["votes"].shape == (3, K) and seen["votes"].sum(1).tolist() == [float(fmap[0, 0].numel())] * 3
    plain = build_task(TrainConfig(loss="zipf", model="cnn"), create_loss("zipf", K), model)
    assert not isinstance(plain, DenseVoteTask)


def test_dense_zipf_trains_end_to_end_and_refuses_a_model_without_a_map(tmp_path, capsys):
    def train(model, dataset="digits"):
        args = ["--dataset", dataset, "--model", model, "--loss", "zipf", "--loss-arg", "dense=true"]
        return main(["train", *args, "--epochs", "1", "--no-progress", "--out", str(tmp_path / model)])

    assert train("cnn") == 0
    assert train("mlp", "manyclass") == 2  # feature vectors: no map to vote on
    assert "needs a model that pools a feature map" in capsys.readouterr().err
