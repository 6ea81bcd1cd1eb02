"""OLS in the Hugging Face Trainer: one hook is both the ``compute_loss_func`` and a callback.

    pip install 'ols[hf]'
    python examples/hf_trainer.py        # digits, 20 epochs, about 30 s on a laptop CPU

The Trainer pops ``labels`` from each batch before calling the model (the ``compute_loss_func``
gets them), so the model's ``forward`` takes the pixels only and returns ``{"logits": ...}``;
``label_names=["labels"]`` tells the Trainer to keep that column although ``forward`` has no
``labels`` argument.
The hook reports CE against the labels as ``eval_loss`` (``eval_loss="ce"``), so runs with
different losses can be compared on it; it saves the soft labels into every
``checkpoint-N/ols_loss.pt`` and reloads them with ``resume_from_checkpoint``.
"""

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from transformers import Trainer, TrainingArguments

from ols import OnlineLabelSmoothing
from ols.integrations.hf import OLSTrainerHook


def digit_rows():
    """The 8x8 digits as lists of ``{"pixels": (1, 8, 8), "labels": ()}`` rows, split 80/20."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    y = torch.tensor(y)
    train, test = train_test_split(range(len(y)), test_size=0.2, stratify=y, random_state=0)
    return [{"pixels": x[i], "labels": y[i]} for i in train], [{"pixels": x[i], "labels": y[i]} for i in test]


class DigitNet(nn.Module):
    """``pixels (B, 1, 8, 8) -> {"logits": (B, 10)}``: the Trainer reads ``outputs["logits"]``."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 10))

    def forward(self, pixels):
        return {"logits": self.net(pixels)}


def error_rate(prediction):
    """``compute_metrics``: the top-1 error of the evaluation set."""
    return {"error": float((np.argmax(prediction.predictions, 1) != prediction.label_ids).mean())}


def main():
    """Train with the hook as loss and callback; print the final error and the soft labels' state."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="runs/hf-example")
    args = parser.parse_args()

    torch.manual_seed(0)
    train_rows, test_rows = digit_rows()
    hook = OLSTrainerHook(OnlineLabelSmoothing(num_classes=10, alpha=0.5), eval_loss="ce")  # OLS
    arguments = TrainingArguments(  # optim="sgd" has no momentum, hence the higher rate
        output_dir=args.out, num_train_epochs=args.epochs, per_device_train_batch_size=64,
        per_device_eval_batch_size=256, learning_rate=0.1, optim="sgd", lr_scheduler_type="cosine",
        weight_decay=5e-4, eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
        logging_strategy="epoch", report_to="none", disable_tqdm=True, seed=0, label_names=["labels"],
        dataloader_pin_memory=torch.cuda.is_available())
    trainer = Trainer(model=DigitNet(), args=arguments, train_dataset=train_rows, eval_dataset=test_rows,
                      compute_loss_func=hook, callbacks=[hook],  # OLS: the loss, and its step each epoch
                      compute_metrics=error_rate)
    trainer.train()
    final = trainer.evaluate()
    diagonal = hook.loss.soft_labels.diagonal().mean().item()
    print(f"final: eval error {100 * final['eval_error']:.2f}%, eval CE {final['eval_loss']:.4f}; "
          f"soft labels stepped {hook.loss.store.num_updates} times, mean mass on the true class "
          f"{diagonal:.3f}")


if __name__ == "__main__":
    main()
