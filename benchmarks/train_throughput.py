"""Training throughput of the ols engine against a per-sample DataLoader reference loop.

On CIFAR-shaped synthetic data (3x32x32 uint8), for ResNet-20 and ResNet-56, it times
whole training steps (data, augmentation, forward, loss, backward, SGD) three ways:

- ``engine+ce``: ``ols.engine.train_one_epoch`` over a ``TensorSource`` (images on the
  device, crop/flip batched there) with plain cross-entropy;
- ``engine+ols``: the same with ``OnlineLabelSmoothing`` (the overhead target is < 2 %);
- ``reference``: the usual loop of the torchvision reference scripts: a ``Dataset``
  whose ``__getitem__`` crops, flips and normalises one image, and a ``DataLoader``
  with ``--workers`` worker processes.

    python benchmarks/train_throughput.py [--device cpu|cuda] [--steps 10] [--rounds 3] [--batch-size 128]
                                          [--loops engine+ce engine+ols reference] [--epoch-time]

The loops run in interleaved rounds (alternately forwards and backwards) and each figure
is the median over rounds, so drift of a shared machine hits all alike. With
``--epoch-time`` it also times one full CIFAR-100-sized epoch (50,000 images) of
ResNet-56 with OLS (meant for a GPU).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ols import OnlineLabelSmoothing
from ols.data import load_dataset
from ols.data.augment import BatchAugment
from ols.data.batches import TensorSource
from ols.engine import EpochState, Precision, autocast, train_one_epoch
from ols.losses.protocol import end_of_epoch
from ols.models import Classifier, create_model
from ols.tasks import ClassificationTask


class PerSampleCifar(Dataset):
    """One image at a time: pad-4 random crop, flip, to float, normalise (torchvision-style)."""

    def __init__(self, x, y, mean, std):
        self.x, self.y = x, y
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        img = F.pad(self.x[i].float() / 255.0, (4, 4, 4, 4))
        dy, dx = torch.randint(0, 9, (2,)).tolist()
        img = img[:, dy : dy + 32, dx : dx + 32]
        if torch.rand(()) < 0.5:
            img = img.flip(2)
        return (img - self.mean) / self.std, self.y[i]


def make(model_name, data, device, channels_last):
    torch.manual_seed(0)
    model = Classifier(create_model(model_name, data.num_classes), data.mean, data.std).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_engine(model, opt, crit, source, labels, steps, bs, device, amp, channels_last):
    n = labels.shape[0]
    order = torch.randperm(n)[: steps * bs].tolist()
    gen = torch.Generator(device=device).manual_seed(0)
    state = EpochState.new(n, device)
    sync(device)
    t = time.perf_counter()
    task = ClassificationTask(crit)
    train_one_epoch(model, task, opt, source.train(order, bs, 0, gen), labels, state, steps,
                    precision=Precision(amp, channels_last))
    sync(device)
    return (time.perf_counter() - t) / steps


def time_reference(model, opt, loader, steps, device, amp, channels_last):
    """Steady state: the loader's workers are started and the first batch fetched before timing,
    and shut down after, so no prefetching leaks into the other loops' timings."""
    model.train()
    it = iter(loader)
    first = next(it)
    sync(device)
    t = time.perf_counter()
    for i in range(steps):
        x, y = first if i == 0 else next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            loss = F.cross_entropy(model.net(x), y)  # the reference normalised in the Dataset
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    elapsed = time.perf_counter() - t
    del it
    return elapsed / steps


def epoch_time(data, device, bs, amp, channels_last):
    """Seconds for one full pass over 50,000 images, ResNet-56 with OLS (CIFAR-100 sized)."""
    model, opt = make("resnet56", data, device, channels_last)
    crit = OnlineLabelSmoothing(data.num_classes).to(device)
    source = TensorSource(data, device, BatchAugment(("crop", "flip")))
    labels = data.train_y.to(device)
    n = labels.shape[0]
    steps = -(-n // bs)
    time_engine(model, opt, crit, source, labels, 20, bs, device, amp, channels_last)  # warm-up
    order = torch.randperm(n).tolist()
    sync(device)
    t = time.perf_counter()
    batches = source.train(order, bs, 0, torch.Generator(device=device))
    train_one_epoch(model, ClassificationTask(crit), opt, batches, labels, EpochState.new(n, device), steps,
                    use_amp=amp, channels_last=channels_last)
    end_of_epoch(crit)  # the epoch-end step(), Eq. (6)
    sync(device)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    ap.add_argument("--steps", type=int, default=10, help="training steps per timing")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loop")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--loops", nargs="+", default=["engine+ce", "engine+ols", "reference"],
                    help="which loops to time (engine+ce is always timed: it is the baseline)")
    ap.add_argument("--epoch-time", action="store_true", help="also time one 50,000-image ResNet-56 epoch")
    ap.add_argument("--quick", action="store_true", help="a smoke run: resnet20, batch 8, 1 step, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.models, args.batch_size, args.steps, args.rounds, args.workers = ["resnet20"], 8, 1, 1, 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = channels_last = device.type == "cuda"
    bs = args.batch_size
    per_class = max(1, (args.steps * bs * 2) // 100) if not args.epoch_time else 500
    data = load_dataset("synthetic-cifar", num_classes=100, train_per_class=per_class, test_per_class=1)
    labels = data.train_y.to(device)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, device {device}, "
          f"threads {torch.get_num_threads()}, batch {bs}, {args.steps} steps x {args.rounds} rounds, "
          f"amp(bf16)/channels_last {amp}")
    print("| model | loop | images/s | step (ms) | vs engine+ce |")
    print("|---|---|---|---|---|")
    for name in args.models:
        keys = ["engine+ce"] + [k for k in args.loops if k != "engine+ce"]
        runs = {k: make(name, data, device, channels_last) for k in keys}
        crit = {"engine+ce": torch.nn.CrossEntropyLoss().to(device),
                "engine+ols": OnlineLabelSmoothing(data.num_classes).to(device)}
        source = TensorSource(data, device, BatchAugment(("crop", "flip")))
        ref_set = PerSampleCifar(data.train_x, data.train_y, data.mean, data.std)
        loader = DataLoader(ref_set, batch_size=bs, shuffle=True, drop_last=True, num_workers=args.workers,
                            pin_memory=device.type == "cuda")
        times = {k: [] for k in runs}
        for r in range(args.rounds + 1):  # round 0 warms up; odd rounds run the loops in reverse order
            for key in (keys if r % 2 == 0 else keys[::-1]):
                model, opt = runs[key]
                if key == "reference":
                    t = time_reference(model, opt, loader, args.steps, device, amp, channels_last)
                else:
                    t = time_engine(model, opt, crit[key], source, labels, args.steps, bs, device, amp,
                                    channels_last)
                if r:
                    times[key].append(t)
        base = statistics.median(times["engine+ce"])
        for key in runs:
            t = statistics.median(times[key])
            print(f"| {name} | {key} | {bs / t:,.0f} | {1000 * t:.1f} | {t / base:.3f} |")
    if args.epoch_time:
        seconds = epoch_time(data, device, bs, amp, channels_last)
        print(f"\nResNet-56 + OLS, one 50,000-image epoch: {seconds:.1f} s")


if __name__ == "__main__":
    main()
