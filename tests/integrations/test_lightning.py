"""OLS inside real Lightning runs: the callback steps at the right point, checkpoints hold this
epoch's soft labels, a resumed fit continues exactly, and 2-process ddp_spawn agrees with one
process that saw all the data, with the loss inside or outside the DDP-wrapped module."""

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ols import OnlineLabelSmoothing

L = pytest.importorskip("lightning.pytorch")
from ols.integrations.lightning import OLSCallback  # noqa: E402

N, D, K, BATCH, LR = 64, 8, 4, 16, 0.5


def dataset():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(N) % K
    x = torch.randn(N, D, generator=g) + 2.0 * torch.nn.functional.one_hot(y, D).float()
    return TensorDataset(x, y)


def make_linear():
    torch.manual_seed(1)
    return nn.Linear(D, K)


class Net(L.LightningModule):
    """A linear classifier; the loss is an attribute (``inside``) or only referenced (``outside``)."""

    def __init__(self, crit, inside=True, result_dir=None):
        super().__init__()
        self.model = make_linear()
        if inside:
            self.crit = crit
        else:
            self.__dict__["outside"] = crit  # not a submodule: Lightning and DDP never see it
        self.result_dir = result_dir

    def criterion(self):
        return self.crit if "crit" in self._modules else self.__dict__["outside"]

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion()(self.model(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.criterion()(self.model(x), y)  # in eval mode: never observed

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=LR)

    def on_train_end(self):
        if self.result_dir is not None:
            state = {"soft": self.criterion().soft_labels.clone(),
                     "weight": self.model.weight.detach().clone()}
            torch.save(state, f"{self.result_dir}/rank{self.global_rank}.pt")


def manual_run(epochs, batch=BATCH):
    """The same training written by hand: the reference for every Lightning run below."""
    model, crit = make_linear(), OnlineLabelSmoothing(K)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    per_epoch = []
    for _ in range(epochs):
        for x, y in DataLoader(dataset(), batch_size=batch):
            loss = crit(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        crit.step()
        per_epoch.append(crit.soft_labels.clone())
    return per_epoch, model


def trainer(tmp_path, epochs, **kw):
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0, **kw)


def loaders():
    return DataLoader(dataset(), batch_size=BATCH), DataLoader(dataset(), batch_size=BATCH)


@pytest.mark.slow
def test_fit_matches_the_hand_written_loop_and_epoch_checkpoints_hold_that_epochs_labels(tmp_path):
    want, _ = manual_run(2)
    net = Net(OnlineLabelSmoothing(K))
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    trainer(tmp_path, 2, callbacks=[OLSCallback(), ckpt]).fit(net, *loaders())
    torch.testing.assert_close(net.crit.soft_labels, want[1])  # validation batches never counted
    saved = torch.load(tmp_path / "ckpt" / "epoch=0.ckpt", weights_only=False)["state_dict"]
    torch.testing.assert_close(saved["crit.store.soft_labels"], want[0])  # epoch 0's, not the initial
    assert int(saved["crit.store.num_updates"]) == 1 and float(saved["crit.store.sums"].abs().sum()) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("inside", [True, False])
def test_a_resumed_fit_continues_with_the_saved_soft_labels(tmp_path, inside):
    want, _ = manual_run(3)
    crit = OnlineLabelSmoothing(K)
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    callback = OLSCallback() if inside else OLSCallback(crit)
    trainer(tmp_path, 1, callbacks=[callback, ckpt]).fit(Net(crit, inside), *loaders())
    fresh = OnlineLabelSmoothing(K)  # a new process: a new loss, filled from the checkpoint only
    net = Net(fresh, inside)
    callback = OLSCallback() if inside else OLSCallback(fresh)
    saved = str(tmp_path / "ckpt" / "epoch=0.ckpt")
    trainer(tmp_path, 3, callbacks=[callback]).fit(net, *loaders(), ckpt_path=saved)
    torch.testing.assert_close(fresh.soft_labels, want[2])
    assert int(fresh.store.num_updates) == 3


@pytest.mark.slow
def test_true_precision_casts_keep_the_statistics_float32(tmp_path):
    net = Net(OnlineLabelSmoothing(K))
    trainer(tmp_path, 1, callbacks=[OLSCallback()], precision="bf16-true").fit(net, *loaders())
    assert net.model.weight.dtype == torch.bfloat16
    assert net.crit.soft_labels.dtype == torch.float32 and int(net.crit.store.num_updates) == 1
    assert net.crit.soft_labels[0, 0] > 1 / K  # learned from the bf16 logits


def test_a_module_without_a_periodic_loss_warns_and_a_plain_loss_is_refused(tmp_path):
    class Plain(Net):
        def __init__(self):
            super().__init__(nn.CrossEntropyLoss())

    with pytest.raises(ValueError, match="not a periodic loss"):
        OLSCallback(nn.CrossEntropyLoss())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, 1, callbacks=[OLSCallback()], limit_train_batches=1,
                limit_val_batches=0).fit(Plain(), loaders()[0])
    assert any("found no periodic loss" in str(w.message) for w in caught)


class HalfPerRank(Net):
    """Rank r trains on samples r, r + 2, ... in order (batch 8), so each step's two half-batches are
    exactly the one-process batch of 16 (Lightning's own sampler would shuffle)."""

    def train_dataloader(self):
        half = torch.utils.data.Subset(dataset(), range(self.global_rank, N, 2))
        return DataLoader(half, batch_size=BATCH // 2)


def _spawn_fit(result_dir, inside):
    crit = OnlineLabelSmoothing(K)
    net = HalfPerRank(crit, inside, result_dir=str(result_dir))
    callback = OLSCallback() if inside else OLSCallback(crit)
    L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, logger=False,
              enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
              use_distributed_sampler=False, callbacks=[callback], default_root_dir=str(result_dir)).fit(net)


@pytest.mark.slow
@pytest.mark.parametrize("inside", [True, False])
def test_ddp_spawn_two_ranks_match_one_process(tmp_path, inside):
    _spawn_fit(tmp_path, inside)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    torch.testing.assert_close(r0["soft"], r1["soft"], rtol=0, atol=0)
    want, model = manual_run(2)
    torch.testing.assert_close(r0["weight"], model.weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r0["soft"], want[1], rtol=1e-5, atol=1e-6)  # all ranks' data, not rank 0's


def test_a_self_distillation_loss_is_stepped_once_not_also_its_inner_store():
    from ols import create_loss

    module = nn.Module()
    module.crit = create_loss("byot+ols", 4)
    assert OLSCallback().losses(module) == [module.crit]  # module.crit.base is stepped by module.crit


def no_step_warnings(caught):
    return [str(w.message) for w in caught if "no step()" in str(w.message)]


@pytest.mark.slow
def test_a_module_without_the_callback_warns_in_its_first_epoch(tmp_path):
    net = Net(OnlineLabelSmoothing(K))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, 1, enable_checkpointing=False).fit(net, *loaders())  # validation: eval mode
    msgs = no_step_warnings(caught)
    assert len(msgs) == 1 and "switched to eval mode after 4 training forward(s)" in msgs[0], msgs
    assert "OLSCallback" in msgs[0] and int(net.crit.store.num_updates) == 0  # nothing stepped it: the bug
    net = Net(OnlineLabelSmoothing(K))  # with the callback and a mid-epoch validation: no false alarm
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, 1, callbacks=[OLSCallback()], val_check_interval=2,
                enable_checkpointing=False).fit(net, *loaders())
    assert no_step_warnings(caught) == [] and int(net.crit.store.num_updates) == 1


@pytest.mark.slow
def test_resuming_without_the_callbacks_state_is_refused_for_a_loss_outside_the_module(tmp_path):
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    trainer(tmp_path, 1, callbacks=[ckpt]).fit(Net(OnlineLabelSmoothing(K), inside=False), *loaders())
    fresh = OnlineLabelSmoothing(K)
    with pytest.raises(ValueError, match="holds no OLSCallback state.*from scratch.*OLSCallback\\(loss\\)"):
        trainer(tmp_path, 2, callbacks=[OLSCallback(fresh)]).fit(
            Net(fresh, inside=False), *loaders(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0.ckpt"))


@pytest.mark.slow
def test_the_callback_feeds_maxsup_the_runs_progress(tmp_path, monkeypatch):
    from ols.losses.maxsup import MaxSup

    seen = []
    monkeypatch.setattr(MaxSup, "set_progress", lambda self, f: seen.append(f))
    run = trainer(tmp_path, 4, callbacks=[OLSCallback()], enable_checkpointing=False)
    run.fit(Net(MaxSup(K)), *loaders())
    assert seen == [0.0, 0.25, 0.5, 0.75]  # epoch / max_epochs at each epoch start, as MaxSup's code
