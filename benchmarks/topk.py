"""The top-k soft-label store at many classes, on the CPU (issue 13's four targets).

    python benchmarks/topk.py state              # bytes of the OLS state at K = 100,000, k = 32
    python benchmarks/topk.py loss [--repeats R] # forward + backward vs F.cross_entropy, side by side
    python benchmarks/topk.py step               # step() at K = 100,000 after a filled period
    python benchmarks/topk.py rss                # peak RSS of a short training run, CE vs top-k OLS
    python benchmarks/topk.py rows               # how far top-k rows are from dense rows (K = 2,000)
    python benchmarks/topk.py dense [--repeats R] # dense against top-k OLS where both fit (K <= 10,000)

Timings are medians over interleaved rounds, so drift of a shared machine hits every
contender alike: compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F

from ols import OnlineLabelSmoothing
from ols.losses import TopKSoftLabels


def state(k_all: int = 100_000, topk: int = 32) -> None:
    crit = OnlineLabelSmoothing(k_all, topk=topk)
    rows = [(name, tuple(t.shape), str(t.dtype).replace("torch.", ""), t.numel() * t.element_size())
            for name, t in crit.state_dict().items()]
    print("| tensor | shape | dtype | MB |\n|---|---|---|---|")
    for name, shape, dtype, size in rows:
        print(f"| `{name}` | {shape} | {dtype} | {size / 1e6:.2f} |")
    total = sum(r[3] for r in rows)
    print(f"| **total** | | | **{total / 1e6:.1f}** (dense OLS: {2 * k_all * k_all * 4 / 1e9:.0f} GB) |")


def loss(repeats: int, correct: float, shapes=((256, 21_841), (128, 100_000))) -> None:
    print("| (B, K) | k | F.cross_entropy ms | top-k OLS train ms | ratio | top-k OLS eval ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for b, k_all in shapes:
        med = _time_shape(b, k_all, repeats, correct)
        print(f"| ({b}, {k_all:,}) | 32 | {med['ce']:.1f} | {med['train']:.1f} | "
              f"{med['train'] / med['ce']:.2f} | {med['eval']:.1f} | {med['eval'] / med['ce']:.2f} |")


def _time_shape(b: int, k_all: int, repeats: int, correct: float, others: Optional[dict] = None) -> dict:
    """Median ms of ``F.cross_entropy``, top-k OLS in training and eval mode, and any ``others`` losses."""
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(b, k_all, generator=g)
    y = torch.randint(0, k_all, (b,), generator=g)
    hit = torch.rand(b, generator=g) < correct
    z0[hit, y[hit]] += 10.0  # these rows are correct, so training forwards feed the tables
    train = OnlineLabelSmoothing(k_all, topk=32)
    evalm = OnlineLabelSmoothing(k_all, topk=32).eval()

    def step(fn):
        z = z0.clone().requires_grad_()
        fn(z, y).backward()

    contenders = {"ce": lambda: step(F.cross_entropy), "train": lambda: step(train),
                  "eval": lambda: step(evalm)}
    contenders.update({name: (lambda fn=fn: step(fn)) for name, fn in (others or {}).items()})
    inner = max(1, 2_000_000 // (b * k_all))  # a loop of calls at the small shapes, for the timer
    times = {name: [] for name in contenders}
    for fn in contenders.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - t0) / inner)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def dense(repeats: int, correct: float, shapes=((128, 1000), (256, 2000), (256, 10_000))) -> None:
    """Training forward + backward of dense and top-k OLS against ``F.cross_entropy`` where both fit."""
    print("| (B, K) | F.cross_entropy ms | dense OLS ms | top-k OLS ms | dense / CE | top-k / CE |")
    print("|---|---|---|---|---|---|")
    for b, k_all in shapes:
        med = _time_shape(b, k_all, repeats, correct, {"dense": OnlineLabelSmoothing(k_all)})
        print(f"| ({b}, {k_all:,}) | {med['ce']:.2f} | {med['dense']:.2f} | {med['train']:.2f} | "
              f"{med['dense'] / med['ce']:.2f} | {med['train'] / med['ce']:.2f} |")


def step_time(k_all: int = 100_000, topk: int = 32, batches: int = 40, batch: int = 256) -> None:
    crit = OnlineLabelSmoothing(k_all, topk=topk)
    g = torch.Generator().manual_seed(0)
    for _ in range(batches):  # every row correct: the tables of ~10,000 classes fill
        y = torch.randint(0, k_all, (batch,), generator=g)
        z = torch.randn(batch, k_all, generator=g)
        z[torch.arange(batch), y] += 12.0
        crit(z, y)
    t0 = time.perf_counter()
    crit.step()
    print(f"step() at K = {k_all:,}, k = {topk}, after {batches * batch:,} observed rows: "
          f"{time.perf_counter() - t0:.3f} s")


def rss(classes: int = 100_000) -> None:
    base = [sys.executable, "-m", "ols", "train", "--dataset", "manyclass",
            "--data-arg", f"classes={classes}", "--data-arg", "train_per_class=1",
            "--data-arg", "test_samples=500", "--model", "linear", "--lr", "0.5", "--batch-size", "128",
            "--epochs", "1", "--no-progress", "--overwrite"]
    print("| run | peak RSS (MB) |\n|---|---|")
    peaks = {}
    runs = (("CE", ["--loss", "ce"]), ("OLS topk=32", ["--loss", "ols", "--loss-arg", "topk=32"]))
    for name, extra in runs:
        cmd = base + ["--out", f"runs/bench-rss-{name.split()[0].lower()}"] + extra
        code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
                "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True)
        peaks[name] = int(out.stdout.strip().splitlines()[-1]) / 1024  # ru_maxrss is in KiB on Linux
        print(f"| {name} | {peaks[name]:.0f} |")
    print(f"\nratio OLS / CE: {peaks['OLS topk=32'] / peaks['CE']:.2f}")


def rows(k_all: int = 2000, batches: int = 500, batch: int = 32) -> None:
    """Mean L1 distance of the top-k rows to the dense rows after one period of the same stream.

    Logits are minus the distances to 2,000 random centres, so a sample's softmax is flat
    (its own class gets about 1.4%) with mass on neighbouring classes: the hard case for k < K.
    """
    torch.manual_seed(0)
    centres = torch.randn(k_all, 16)
    dense = OnlineLabelSmoothing(k_all)
    exact = dict(slots=k_all, feed=k_all)
    settings = {"k=8": (8, {}), "k=32": (32, {}), "k=32, exact table": (32, exact), "k=512": (512, {}),
                "k=512, exact table": (512, exact)}
    sparse = {name: OnlineLabelSmoothing(k_all, store=TopKSoftLabels(k_all, k, **kw))
              for name, (k, kw) in settings.items()}
    for _ in range(batches):
        y = torch.randint(0, k_all, (batch,))
        z = -torch.cdist(centres[y] + 0.7 * torch.randn(batch, 16), centres)
        dense(z, y)
        for crit in sparse.values():
            crit(z, y)
    dense.step()
    print(f"dense rows: own class {float(dense.soft_labels.diagonal().mean()):.4f} on average\n")
    print("| store | mean L1 to the dense row | mean error of the own entry |\n|---|---|---|")
    for name, crit in sparse.items():
        crit.step()
        got = crit.store.dense()
        l1 = float((got - dense.soft_labels).abs().sum(1).mean())
        own = float((got.diagonal() - dense.soft_labels.diagonal()).abs().mean())
        print(f"| {name} | {l1:.3f} | {own:.5f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["state", "loss", "step", "rss", "rows", "dense"])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of every section but rss, at a few hundred classes (the tests "
                             "run it)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--correct", type=float, default=0.5, help="fraction of rows made correct")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    if args.quick:
        state(500, 8)
        loss(1, args.correct, ((32, 500),))
        step_time(500, 8, 2, 32)
        rows(200, 10, 16)
        dense(1, args.correct, ((32, 300),))
        return
    if args.what is None:
        parser.error("name a section (state, loss, step, rss, rows, dense), or --quick")
    if args.what == "state":
        state()
    elif args.what == "loss":
        loss(args.repeats, args.correct)
    elif args.what == "step":
        step_time()
    elif args.what == "rows":
        rows()
    elif args.what == "dense":
        dense(args.repeats, args.correct)
    else:
        rss()


if __name__ == "__main__":
    main()
