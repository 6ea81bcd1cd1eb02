"""Forward + backward time of every loss relative to F.cross_entropy, on the CPU.

Also times OLS against two references written here: a per-sample-loop OLS in the style of
the official research code (a Python loop over the batch to accumulate correct predictions,
and the soft term computed as a separate cross-entropy), and the short vectorised OLS the
design issue measured its targets with (``F.cross_entropy`` against the mixed target, one
``index_add_`` into a discard row); and, with ``--compile``, OLS under ``torch.compile``
against ``F.cross_entropy`` under ``torch.compile``.

    python benchmarks/loss_overhead.py [--threads N] [--repeats R] [--correct FRACTION] [--compile]
                                       [--shapes 128x10 256x1000 ...] [--device cuda]

On a GPU (``--device cuda``) each timing waits for the device, and every OLS training step
runs once under ``torch.cuda.set_sync_debug_mode("error")`` first, which raises at any sync.

Every timing is the median over interleaved rounds, so slow drift of a shared machine
hits all the losses alike; compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from ols import LOSSES, create_loss
from ols.losses import loss_parameters
from ols.losses.protocol import needs_index, takes_exits, views_of

SHAPES = [(128, 10), (128, 100), (256, 1000), (256, 10000)]


class LoopOLS:
    """OLS as the official CIFAR script does it: per-sample accumulation in Python."""

    def __init__(self, k: int, alpha: float = 0.5):
        self.k, self.alpha = k, alpha
        self.soft = torch.full((k, k), 1.0 / k)
        self.acc = torch.zeros(k, k)
        self.cnt = torch.zeros(k)

    def __call__(self, logits, target):
        with torch.no_grad():
            p = torch.softmax(logits, 1)
            for i in range(target.shape[0]):
                if torch.argsort(p[i], descending=True)[0] == target[i]:
                    self.acc[target[i]] += p[i]
                    self.cnt[target[i]] += 1
        logp = torch.log_softmax(logits, 1)
        soft = -(self.soft[target] * logp).sum(1).mean()
        return self.alpha * F.cross_entropy(logits, target) + (1 - self.alpha) * soft


class SimpleOLS(torch.nn.Module):
    """The design issue's reference: soft-target ``F.cross_entropy`` plus one sync-free ``index_add_``."""

    def __init__(self, k: int, alpha: float = 0.5):
        super().__init__()
        self.k, self.alpha = k, alpha
        self.register_buffer("soft", torch.full((k, k), 1.0 / k))
        self.register_buffer("sums", torch.zeros(k + 1, k))

    def forward(self, logits, target):
        q = self.alpha * F.one_hot(target, self.k).to(logits.dtype) + (1 - self.alpha) * self.soft[target]
        loss = F.cross_entropy(logits, q)
        with torch.no_grad():
            p = logits.softmax(1)
            self.sums.index_add_(0, torch.where(p.argmax(1) == target, target, self.k), p)
        return loss


def make_step(loss_fn, z0, y, index=None):
    def step():
        z = z0.clone().requires_grad_()
        loss = loss_fn(z, y, index=index) if index is not None else loss_fn(z, y)
        loss.backward()

    return step


def registry_step(name: str, z0, y, device):
    """A training step of registry loss ``name``, fed the way it takes a batch.

    Per-sample losses get the samples' indices; losses over exits three exits (the logits and two
    scaled copies); two-view losses a second view; CS-KD its partners (the batch reversed).
    """
    b, k = z0.shape
    params = loss_parameters(name)
    kw = {key: value for key, value in (("num_samples", b), ("epochs", 2), ("num_exits", 3)) if key in params}
    crit = create_loss(name, k, **kw).train().to(device)

    def step():
        z = z0.clone().requires_grad_()
        if takes_exits(crit):
            loss = crit([z, z * 0.5, z * 2.0], y)
        elif views_of(crit) > 1:
            loss = crit(z, z * 0.5, y)
        elif getattr(crit, "pairs_by_class", False):
            loss = crit(z, z.detach().flip(0), y)
        elif needs_index(crit):
            loss = crit(z, y, index=torch.arange(b, device=z.device))
        else:
            loss = crit(z, y)
        loss.backward()

    return step


def _wait(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(steps: dict, repeats: int, inner: int, device: torch.device) -> dict:
    for fn in steps.values():  # warm up
        for _ in range(10):
            fn()
    samples = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            _wait(device)
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            _wait(device)
            samples[name].append((time.perf_counter() - t) / inner)
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--inner", type=int, default=20)
    parser.add_argument(
        "--correct", type=float, default=0.5,
        help="fraction of rows whose target is set to their argmax, so OLS accumulates them (random "
        "targets are almost never correct; 0 leaves the accumulation out)",
    )
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile'd OLS against torch.compile'd F.cross_entropy")
    parser.add_argument("--losses", nargs="*", default=None, help="registry losses to time (default: all)")
    parser.add_argument("--shapes", nargs="*", default=None, metavar="BxK",
                        help="shapes to time, e.g. 128x10 256x10000 (default: " +
                        " ".join(f"{b}x{k}" for b, k in SHAPES) + ")")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run at (16, 10), 2 repeats (the tests run it)")
    args = parser.parse_args()
    if args.quick:
        args.shapes, args.repeats, args.inner = ["16x10"], 2, 2
    device = torch.device(args.device)
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    except ValueError:
        parser.error(f"--shapes takes BxK pairs such as 256x1000, got {args.shapes}")
    if not 0.0 <= args.correct <= 1.0:
        parser.error(f"--correct is a fraction of the rows, in [0, 1]; got {args.correct}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, {args.correct:.0%} of rows correct")
    print("\n| (B, K) | loss | fwd+bwd (us) | ratio to F.cross_entropy |")
    print("|---|---|---|---|")
    loop_rows, simple_rows = [], []
    compiled_rows = []
    for b, k in shapes:
        g = torch.Generator().manual_seed(0)
        z0 = torch.randn(b, k, generator=g) * 2
        y = torch.randint(0, k, (b,), generator=g)
        n_correct = round(args.correct * b)
        y[:n_correct] = z0[:n_correct].argmax(1)
        z0, y = z0.to(device), y.to(device)
        steps = {"F.cross_entropy": make_step(F.cross_entropy, z0, y)}
        for name in args.losses if args.losses is not None else LOSSES:
            steps[name] = registry_step(name, z0, y, device)
        if "ols" not in steps:
            steps["ols"] = make_step(create_loss("ols", k).train().to(device), z0, y)
        if device.type == "cuda":  # a sync in a training step raises here
            torch.cuda.set_sync_debug_mode("error")
            steps["ols"]()
            torch.cuda.set_sync_debug_mode("default")
        else:  # the references sync on a GPU; they are the CPU comparison
            steps["ols (per-sample loop)"] = make_step(LoopOLS(k), z0, y)
            steps["ols (simple reference)"] = make_step(SimpleOLS(k), z0, y)
        if args.compile:
            torch._dynamo.reset()
            steps["compiled F.cross_entropy"] = make_step(torch.compile(F.cross_entropy), z0, y)
            steps["compiled ols"] = make_step(torch.compile(create_loss("ols", k).train().to(device)), z0, y)
        inner = max(2, args.inner // 4) if k >= 1000 else args.inner
        times = time_steps(steps, args.repeats, inner, device)
        base = times["F.cross_entropy"]
        for name, t in times.items():
            if not name.startswith(("ols (", "compiled")):
                print(f"| ({b}, {k}) | {name} | {1e6 * t:.0f} | {t / base:.2f} |")
        if "ols (per-sample loop)" in times:
            loop_rows.append((b, k, times["ols"], times["ols (per-sample loop)"]))
            simple_rows.append((b, k, times["ols (simple reference)"] / base, times["ols"] / base))
        if args.compile:
            compiled_rows.append((b, k, times["compiled F.cross_entropy"], times["compiled ols"], base))
    print("\n| (B, K) | OLS (us) | per-sample loop (us) | speed-up |")
    print("|---|---|---|---|")
    for b, k, fast, slow in loop_rows:
        print(f"| ({b}, {k}) | {1e6 * fast:.0f} | {1e6 * slow:.0f} | {slow / fast:.1f}x |")
    print("\n| (B, K) | simple reference / F.cross_entropy | OLS / F.cross_entropy | OLS / simple |")
    print("|---|---|---|---|")
    for b, k, simple, ols in simple_rows:
        print(f"| ({b}, {k}) | {simple:.2f} | {ols:.2f} | {ols / simple:.2f} |")
    if compiled_rows:
        print("\n| (B, K) | compiled F.cross_entropy (us) | compiled OLS (us) | ratio | eager CE (us) |")
        print("|---|---|---|---|---|")
        for b, k, ce, ols, eager in compiled_rows:
            print(f"| ({b}, {k}) | {1e6 * ce:.0f} | {1e6 * ols:.0f} | {ols / ce:.2f} | {1e6 * eager:.0f} |")


if __name__ == "__main__":
    main()
