"""OLS with a timm model and timm's Mixup/CutMix: OLS takes the mixed ``(B, K)`` targets.

    pip install 'ols[timm]'
    python examples/timm_mixup.py                      # digits upsampled to 32x32, resnet10t, 15 epochs
    python examples/timm_mixup.py --model resnet18     # any timm model name

timm's ``train.py`` has no criterion hook, so this is the loop a timm recipe boils down to:
``create_model``, ``create_optimizer_v2``, ``Mixup``, and OLS where ``SoftTargetCrossEntropy``
would be, stepped after each epoch. Mixup's own ``label_smoothing`` is 0: OLS's soft labels
replace it (smoothing inside the mixed target as well would smooth twice). The OLS lines are
marked ``# OLS``.
"""

import argparse

import timm
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from timm.data import Mixup
from timm.optim import create_optimizer_v2

from ols import OnlineLabelSmoothing


def digits(device, size=32):
    """The 8x8 digits upsampled to ``(N, 1, size, size)``, scaled to [0, 1], split 80/20."""
    x, y = load_digits(return_X_y=True)
    x = F.interpolate(torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16, size=size,
                      mode="bilinear", align_corners=False)
    y = torch.tensor(y)
    train, test = train_test_split(range(len(y)), test_size=0.2, stratify=y, random_state=0)
    return x[train].to(device), y[train].to(device), x[test].to(device), y[test].to(device)


def main():
    """Train a timm model on mixed batches with OLS and print the test error after each epoch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_x, train_y, test_x, test_y = digits(device)
    model = timm.create_model(args.model, num_classes=10, in_chans=1).to(device)
    opt = create_optimizer_v2(model, "sgd", lr=0.05, weight_decay=5e-4, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=10)
    crit = OnlineLabelSmoothing(num_classes=10, alpha=0.5).to(device)  # OLS: not SoftTargetCrossEntropy

    for epoch in range(args.epochs):
        model.train()
        crit.train()
        for batch in torch.randperm(len(train_y), device=device).split(64):
            if len(batch) % 2:  # timm's Mixup pairs samples: it needs an even batch
                batch = batch[:-1]
            x, target = mixup(train_x[batch], train_y[batch])  # target: (B, 10) mixed one-hots
            loss = crit(model(x), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        crit.step()  # OLS: the new soft labels, from the epoch's correct predictions of the mixed batches

        model.eval()
        with torch.no_grad():
            test_err = (model(test_x).argmax(1) != test_y).float().mean().item()
        print(f"epoch {epoch + 1}: test error {100 * test_err:.2f}%")

    diagonal = crit.soft_labels.diagonal().mean().item()
    print(f"final: test error {100 * test_err:.2f}% with {args.model}; soft labels stepped "
          f"{crit.store.num_updates} times, mean mass on the true class {diagonal:.3f}")


if __name__ == "__main__":
    main()
