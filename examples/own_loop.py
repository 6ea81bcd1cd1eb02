"""OLS in a plain PyTorch training loop: scikit-learn's digits, a small CNN, 20 epochs.

    python examples/own_loop.py              # about 20 s on a laptop CPU; CUDA when present
    python examples/own_loop.py --loss ce    # the same loop with F.cross_entropy, to compare

The two lines OLS adds to a loop are marked ``# OLS``. Everything else is an ordinary loop.
"""

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from ols import OnlineLabelSmoothing


def digits(device):
    """The 1,797 8x8 digits as ``(N, 1, 8, 8)`` floats in [0, 1], split 80/20 (stratified)."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    y = torch.tensor(y)
    train, test = train_test_split(range(len(y)), test_size=0.2, stratify=y, random_state=0)
    return x[train].to(device), y[train].to(device), x[test].to(device), y[test].to(device)


def small_cnn(num_classes=10):
    """``(B, 1, 8, 8) -> (B, num_classes)``: two 3x3 convolutions with batch norm, a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, num_classes))


def main():
    """Train with OLS (or CE) and print the test error after each epoch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--loss", choices=["ols", "ce"], default="ols")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_x, train_y, test_x, test_y = digits(device)
    model = small_cnn().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    crit = OnlineLabelSmoothing(num_classes=10, alpha=0.5).to(device)  # OLS: where F.cross_entropy was

    for epoch in range(args.epochs):
        model.train()
        crit.train()
        for batch in torch.randperm(len(train_y), device=device).split(64):
            logits = model(train_x[batch])
            target = train_y[batch]
            loss = crit(logits, target) if args.loss == "ols" else F.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if args.loss == "ols":
            crit.step()  # OLS: once per epoch, Eq. (6): soft labels from the epoch's correct predictions

        model.eval()
        with torch.no_grad():
            test_err = (model(test_x).argmax(1) != test_y).float().mean().item()
        print(f"epoch {epoch + 1}: test error {100 * test_err:.2f}%")

    print(f"final: test error {100 * test_err:.2f}% with {args.loss}")
    if args.loss == "ols":  # row c of crit.soft_labels: the target OLS now trains class c towards
        diagonal = crit.soft_labels.diagonal().mean().item()
        print(f"soft labels stepped {crit.store.num_updates} times, mean mass on the true class "
              f"{diagonal:.3f}")


if __name__ == "__main__":
    main()
