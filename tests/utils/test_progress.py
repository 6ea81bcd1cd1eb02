"""The progress bar: shown on a terminal only, with the running loss beside it, read without waiting."""

import io
import sys

import torch

from ols.engine import EpochState, predict, train_one_epoch
from ols.utils.progress import LaggedValue, progress


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def no_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the plain bar, whose text is easy to read


def test_the_bar_shows_on_a_terminal_only_with_its_postfix(monkeypatch):
    no_tqdm(monkeypatch)
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert list(progress(range(3), 3, "epoch 1/2", postfix=lambda: "loss 0.5000")) == [0, 1, 2]
    assert "epoch 1/2" in term.getvalue() and "3/3" in term.getvalue() and "loss 0.5000" in term.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: no bar, no postfix calls
    calls = []
    assert list(progress(range(3), 3, "x", postfix=lambda: calls.append(1) or "")) == [0, 1, 2]
    assert calls == [] and sys.stderr.getvalue() == ""


def test_the_lagged_value_reads_a_cpu_value_every_few_calls():
    value = torch.tensor(1.0)
    shown = LaggedValue(lambda: value, every=3)
    texts = []
    for i in range(7):
        value.fill_(float(i))
        texts.append(shown.text())
    # read at calls 1, 4 and 7 (values 0, 3 and 6); in between it shows the last read
    assert texts == ["loss 0.0000"] * 3 + ["loss 3.0000"] * 3 + ["loss 6.0000"]


def test_training_shows_the_epochs_mean_loss_and_evaluation_its_own_bar(monkeypatch):
    no_tqdm(monkeypatch)
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)

    def task(m, x, y, idx):
        logits = m(x)
        return {"loss": torch.nn.functional.cross_entropy(logits, y), "logits": logits}

    task.train = lambda: None
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    state = EpochState.new(20, torch.device("cpu"), steps=2)
    batches = [(x[:10], torch.arange(10)), (x[10:], torch.arange(10, 20))]
    assert train_one_epoch(model, task, torch.optim.SGD(model.parameters(), lr=0.0), batches, y, state, 2,
                           show_progress=True, desc="epoch 1/1")
    mean = float(state.loss_sum / state.seen)
    assert f"loss {mean:.4f}" not in term.getvalue()  # read at the first batch only (every 10)
    first = float(state.step_loss[0])
    assert "epoch 1/1 [" in term.getvalue() and f"loss {first:.4f}" in term.getvalue()
    assert torch.allclose(state.step_loss.mean(), torch.tensor(mean))  # equal batches: the mean of steps
    predict(model, [(x[:10], None), (x[10:], None)], show_progress=True, desc="test 1/1")
    assert "test 1/1 [" in term.getvalue() and "2/2" in term.getvalue()
