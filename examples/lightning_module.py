"""OLS in a LightningModule: the loss is a module attribute, one callback steps it each epoch.

    pip install 'ols[lightning]'
    python examples/lightning_module.py             # digits, 20 epochs, about 30 s on a laptop CPU
    python examples/lightning_module.py --devices 2 --strategy ddp   # the same under DDP

``epoch=N.ckpt`` files written by ``ModelCheckpoint`` hold the soft labels learned in epoch N,
and ``Trainer.fit(ckpt_path=...)`` resumes them. The OLS lines are marked ``# OLS``.
"""

import argparse

import lightning as L
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ols import OnlineLabelSmoothing
from ols.integrations.lightning import OLSCallback


def digit_sets():
    """Training and test sets of the 8x8 digits, ``(1, 8, 8)`` floats in [0, 1], split 80/20."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    y = torch.tensor(y)
    train, test = train_test_split(range(len(y)), test_size=0.2, stratify=y, random_state=0)
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


class DigitClassifier(L.LightningModule):
    """A small CNN whose criterion is OLS, kept as an attribute so its state is in every checkpoint."""

    def __init__(self, epochs: int, lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 10))
        self.crit = OnlineLabelSmoothing(num_classes=10, alpha=0.5)  # OLS: saved with the module

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.crit(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        error = (self(x).argmax(1) != y).float().mean()
        self.log("val_error", error, prog_bar=True, sync_dist=True)

    def on_validation_epoch_end(self):
        # how much of its own class's target each class keeps (the soft labels' diagonal)
        self.log("soft_label_diagonal", self.crit.soft_labels.diagonal().mean(), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=5e-4)
        return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.hparams.epochs)]


def main():
    """Fit with OLSCallback and print the final validation error and the soft labels' state."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--devices", default="auto")
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--out", default="runs/lightning-example")
    args = parser.parse_args()

    L.seed_everything(0, verbose=False)
    train_set, test_set = digit_sets()
    model = DigitClassifier(args.epochs)
    trainer = L.Trainer(max_epochs=args.epochs, devices=args.devices, strategy=args.strategy,
                        default_root_dir=args.out, callbacks=[OLSCallback()],  # OLS: steps self.crit
                        enable_progress_bar=False, enable_model_summary=False, logger=False)
    trainer.fit(model, DataLoader(train_set, batch_size=64, shuffle=True),
                DataLoader(test_set, batch_size=256))
    metrics = trainer.callback_metrics
    if trainer.is_global_zero:
        print(f"final: val error {100 * metrics['val_error']:.2f}%; soft labels stepped "
              f"{model.crit.store.num_updates} times, mean mass on the true class "
              f"{metrics['soft_label_diagonal']:.3f}")


if __name__ == "__main__":
    main()
