"""The GPU table in one command: loss cost, top-k, engine steps (eager, compiled, CUDA graph), ResNet-50,
the JPEG-folder pipeline, host syncs per step, the graph's soft labels against eager mode, and DDP's
all-reduce captured in the graph (one rank).

    python benchmarks/gpu.py [--device cuda] [--quick] [--sections ...] [--out results.jsonl] [--budget S]

Each section appends its rows to ``--out`` (JSON lines) as soon as it finishes, so a run cut
short keeps what it measured; the Markdown table is printed at the end. Sections run in
order of importance and stop being started once ``--budget`` seconds have passed.

``--device cpu --quick`` is the smoke test (a few minutes on 2 cores, tiny sizes, the graph
step run un-captured): it checks that every section runs, and measures nothing worth keeping.
Every timing waits for the device; the figure is the median of interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from ols import OnlineLabelSmoothing
from ols.config import TrainConfig
from ols.data.augment import BatchAugment
from ols.data.batches import to_unit
from ols.data.mixing import Mixer
from ols.engine import EpochState, Precision, train_one_epoch
from ols.graph_step import GraphedStep
from ols.losses.protocol import end_of_epoch
from ols.models import Classifier, create_model
from ols.optim import build_optimizer, build_scheduler
from ols.tasks import ClassificationTask, MixingTask
from ols.utils.device import device_name

ROWS: List[dict] = []


def wait(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def record(out: Optional[Path], **row) -> None:
    ROWS.append(row)
    print(json.dumps(row), flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


def median_time(fns: Dict[str, Callable[[], None]], device, rounds: int, inner: int) -> Dict[str, float]:
    """Median seconds per call of each ``fn``, in interleaved rounds of ``inner`` calls."""
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            wait(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fns[name]()
            wait(device)
            times[name].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


# --- the engine's training step ---------------------------------------------------------------


def make_task(loss: str, k: int) -> torch.nn.Module:
    """The engine's task for ``loss``; ``NAME+mix``: Mixup and CutMix, one draw per sample (MixingTask)."""
    if loss.endswith("+mix"):
        mixer = Mixer(mixup_alpha=0.2, cutmix_alpha=1.0, mode="elem")
        return MixingTask(OnlineLabelSmoothing(k, mixed_update="all"), mixer, seed=0)
    return ClassificationTask(make_criterion(loss, k))


def make_criterion(loss: str, k: int) -> torch.nn.Module:
    if loss == "ce":
        return torch.nn.CrossEntropyLoss()
    if loss == "ols-topk":
        return OnlineLabelSmoothing(k, topk=32)
    return OnlineLabelSmoothing(k)


class EngineRun:
    """A model, a loss and SGD trained by ``ols.engine.train_one_epoch`` on images held on the device.

    ``mode``: ``eager``, ``graph`` (``--cuda-graph``), ``compile`` or ``compile-ro``
    (``torch.compile(mode="reduce-overhead")``). Batches are drawn as ``TensorSource`` draws them:
    index, to float, crop + flip batched on the device.
    """

    def __init__(self, model: str, k: int, batch: int, loss: str, mode: str, device: torch.device,
                 side: int = 32, n: int = 0, seed: int = 0, amp: bool = True):
        torch.manual_seed(seed)
        self.device, self.batch, self.mode = device, batch, mode
        cuda = device.type == "cuda"
        net = create_model(model, k, in_channels=3)
        self.model = Classifier(net, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).to(device)
        if cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.task = make_task(loss, k).to(device)
        cfg = TrainConfig(lr=0.05, momentum=0.9, nesterov=True, epochs=1)
        graph = mode == "graph"
        self.optimizer = build_optimizer(self.model, cfg, graph=graph)
        n = n or 4 * batch
        self.scheduler = build_scheduler(self.optimizer, cfg, n // batch)
        gen = torch.Generator(device="cpu").manual_seed(seed + 1)
        self.x = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=gen).to(device)
        self.y = torch.randint(0, k, (n,), generator=gen).to(device)
        self.augment = BatchAugment(("crop", "flip") if side <= 64 else ("flip",), 4, 8, (0.5, 0.5, 0.5))
        self.gen = torch.Generator(device=device).manual_seed(seed + 2)
        self.amp = amp and cuda
        self.train_model = self.model
        if mode.startswith("compile"):
            compile_mode = "reduce-overhead" if mode == "compile-ro" else None
            self.train_model = torch.compile(self.model, mode=compile_mode)
        self.graph = (GraphedStep(self.model, self.task, self.optimizer, batch, self.amp, capture=cuda)
                      if graph else None)
        self.order = torch.randperm(n, generator=gen).to(device)

    def batches(self, count: int):
        n = self.x.shape[0]
        for i in range(count):
            j = (i * self.batch) % (n - self.batch + 1)
            idx = self.order[j:j + self.batch]
            yield self.augment(to_unit(self.x.index_select(0, idx)), self.gen), idx

    def train(self, steps: int) -> EpochState:
        state = EpochState.new(self.x.shape[0], self.device)
        train_one_epoch(self.train_model, self.task, self.optimizer, self.batches(steps), self.y, state,
                        steps, self.scheduler, Precision(self.amp, self.device.type == "cuda"),
                        graph=self.graph)
        return state


def steps_section(args, device, out) -> None:
    """img/s of ResNet-20/56 steps: batch 128 and 512, CE and OLS, eager / graph / compile."""
    models = ["resnet20"] if args.quick else ["resnet20", "resnet56"]  # quick: a smoke test
    batches = [16] if args.quick else [128, 512]
    for model in models:
        for batch in batches:
            for mode in ("eager", "graph"):
                time_steps(args, device, out, "steps", model, batch, mode, ("ce", "ols"))


def time_steps(args, device, out, section: str, model: str, batch: int, mode: str, losses) -> None:
    steps, warm = (2, 3) if args.quick else (40, 8)
    runs = {loss: EngineRun(model, 100, batch, loss, mode, device) for loss in losses}
    t0 = time.perf_counter()
    for r in runs.values():
        r.train(warm)  # warm-up, capture or compilation
    setup = time.perf_counter() - t0
    per = median_time({k: (lambda r=r: r.train(steps)) for k, r in runs.items()}, device, rounds=3, inner=1)
    row = {f"{loss}_img_s": round(batch * steps / t) for loss, t in per.items()}
    if "ce" in per:
        row["ols_over_ce"] = round(per["ols"] / per["ce"], 4)
    record(out, section=section, model=model, batch=batch, mode=mode, **row, warmup_s=round(setup, 1))


def compile_section(args, device, out) -> None:
    """ResNet-56 + OLS at batch 128 under torch.compile, default and reduce-overhead (~1 min each)."""
    batch = 16 if args.quick else 128
    for mode in ("compile", "compile-ro"):
        if mode == "compile-ro" and device.type != "cuda":
            continue  # CUDA graphs of inductor: nothing to measure on the CPU
        time_steps(args, device, out, "compile", "resnet20" if args.quick else "resnet56", batch, mode,
                   ("ols",))


def syncs_section(args, device, out) -> None:
    """Host syncs in a steady-state training step: ``torch.cuda.set_sync_debug_mode("error")``."""
    if device.type != "cuda":
        record(out, section="syncs", note="needs CUDA (the FakeTensorMode tests prove it on the CPU)")
        return
    batch = 16 if args.quick else 128
    for loss in ("ce", "ols", "ols-topk", "ols+mix"):
        for mode in ("eager", "graph"):
            r = EngineRun("resnet20", 100, batch, loss, mode, device)
            r.train(5)
            wait(device)
            torch.cuda.set_sync_debug_mode("error")
            try:
                r.train(3)
                result = "0"
            except RuntimeError as err:
                result = "sync: " + str(err).splitlines()[0][:120]
            finally:
                torch.cuda.set_sync_debug_mode("default")
            record(out, section="syncs", loss=loss, mode=mode, syncs_per_step=result)


def equality_section(args, device, out) -> None:
    """Soft labels and weights after one epoch: CUDA graph against the same step eager, same seed."""
    batch, steps = (16, 6) if args.quick else (128, 100)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    results = {}
    for name in ("eager-plain", "eager-static", "graph"):
        mode = "eager" if name == "eager-plain" else "graph"
        r = EngineRun("resnet20", 100, batch, "ols", mode, device, n=batch * steps + batch // 2)
        if name == "eager-static" and r.graph is not None:
            r.graph.capture = False  # the graph's step and optimiser, run eagerly
        r.train(steps + 1)  # the last batch wraps; every step is a full one
        end_of_epoch(r.task.criterion)
        results[name] = (r.task.criterion.soft_labels.clone(), torch.cat([p.detach().flatten().float()
                                                                         for p in r.model.parameters()]))
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, False
    for other in ("eager-static", "eager-plain"):
        s_diff = (results["graph"][0] - results[other][0]).abs().max().item()
        w_diff = (results["graph"][1] - results[other][1]).abs().max().item()
        record(out, section="equality", graph_vs=other, steps=steps + 1, batch=batch,
               soft_labels_max_abs=s_diff, weights_max_abs=w_diff)


def ddp_section(args, device, out) -> None:
    """DDP's all-reduce inside the graph, on one GPU: a one-rank NCCL group (NCCL still runs the
    all-reduce), ``--cuda-graph``'s DDP set-up (``wrap_ddp``, 11 warm-up batches), two epochs of
    full batches and a ragged one each (replay, eager, replay), weights and soft labels against
    eager DDP. Several GPUs are needed to see a real exchange; this checks the capture itself. On
    the CPU (gloo, the step un-captured) it only checks that the section runs."""
    import socket

    import torch.distributed as dist

    from ols.distributed import init_group, wrap_ddp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = device.type == "cuda"
    init_group(device, cuda_graph=True, rank=0, world_size=1)
    batch, full = (16, 3) if args.quick else (128, 20)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        results = {}
        for mode in ("eager", "graph"):
            r = EngineRun("resnet20", 100, batch, "ols", mode, device, n=batch * full + batch // 2)
            r.train_model = wrap_ddp(r.model, device, cuda_graph=mode == "graph")
            if mode == "graph":
                r.graph = GraphedStep(r.train_model, r.task, r.optimizer, batch, r.amp, capture=cuda)
            t0 = time.perf_counter()
            for _ in range(2):
                n = r.x.shape[0]
                cuts = [r.order[i:i + batch] for i in range(0, n, batch)]
                batches = [(r.augment(to_unit(r.x.index_select(0, idx)), r.gen), idx) for idx in cuts]
                state = EpochState.new(n, device)
                train_one_epoch(r.train_model, r.task, r.optimizer, batches, r.y, state, len(batches),
                                r.scheduler, Precision(r.amp, cuda), graph=r.graph)
                with warnings.catch_warnings():  # random labels: in so few steps no row may be right yet,
                    warnings.filterwarnings("ignore", "SoftLabels.step\\(\\) closed a period")  # as meant
                    end_of_epoch(r.task.criterion)
            wait(device)
            results[mode] = (r.task.criterion.soft_labels.clone(),
                             torch.cat([p.detach().flatten().float() for p in r.model.parameters()]),
                             time.perf_counter() - t0, r.graph is not None and r.graph.captured)
        record(out, section="ddp", world_size=1, backend=dist.get_backend(), batch=batch,
               steps=2 * (full + 1), captured=results["graph"][3],
               soft_labels_max_abs=(results["graph"][0] - results["eager"][0]).abs().max().item(),
               weights_max_abs=(results["graph"][1] - results["eager"][1]).abs().max().item(),
               eager_s=round(results["eager"][2], 2), graph_s=round(results["graph"][2], 2))
    finally:
        torch.backends.cudnn.deterministic = False
        dist.destroy_process_group()


def fwd_bwd(fn: Callable, z0: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One forward and backward of ``fn(z, y)`` on a fresh leaf copy of ``z0``."""
    def call() -> None:
        fn(z0.clone().requires_grad_(), y).backward()

    return call


def loss_section(args, device, out) -> None:
    """OLS and CE forward + backward, eager and compiled, at the shapes of loss_overhead.py."""
    shapes = [(128, 10), (256, 1000)] if args.quick else [(128, 10), (128, 100), (256, 1000), (256, 10000),
                                                           (1024, 1000), (4096, 1000)]
    compiled_shapes = [(128, 10)] if args.quick else [(128, 10), (256, 1000), (256, 10000)]
    rounds, inner = (3, 5) if args.quick else (5, 50)
    for b, k in shapes:
        for compiled in (False, True):
            if compiled and (b, k) not in compiled_shapes:
                continue
            z0 = torch.randn(b, k, device=device)
            y = torch.randint(0, k, (b,), device=device)
            y[: b // 2] = z0[: b // 2].argmax(1)  # half the rows correct: the store sees them
            ols = OnlineLabelSmoothing(k).to(device).train()

            def ce_loss(z, t):
                return F.cross_entropy(z, t)

            fns = {"ce": ce_loss, "ols": ols}
            if compiled:
                fns = {name: torch.compile(fn) for name, fn in fns.items()}

            calls = {name: fwd_bwd(fn, z0, y) for name, fn in fns.items()}
            for call in calls.values():
                for _ in range(3):
                    call()
            per = median_time(calls, device, rounds, inner)
            record(out, section="loss", batch=b, classes=k, compiled=compiled,
                   ce_us=round(per["ce"] * 1e6, 1), ols_us=round(per["ols"] * 1e6, 1),
                   ols_over_ce=round(per["ols"] / per["ce"], 3))


def topk_section(args, device, out) -> None:
    """Top-k OLS (k = 32) against CE, forward + backward, and the store's step()."""
    shapes = [(32, 2000)] if args.quick else [(256, 21841), (128, 100_000)]
    rounds, inner = (3, 3) if args.quick else (5, 20)
    for b, k in shapes:
        z0 = torch.randn(b, k, device=device)
        y = torch.randint(0, k, (b,), device=device)
        y[: b // 2] = z0[: b // 2].argmax(1)
        crit = OnlineLabelSmoothing(k, topk=32).to(device).train()

        fns = {"ce": fwd_bwd(F.cross_entropy, z0, y), "ols": fwd_bwd(crit, z0, y)}
        for fn in fns.values():
            fn()
        per = median_time(fns, device, rounds, inner)
        t_step = median_time({"step": crit.step}, device, rounds, 3)["step"]
        record(out, section="topk", batch=b, classes=k, ce_us=round(per["ce"] * 1e6, 1),
               ols_us=round(per["ols"] * 1e6, 1), ols_over_ce=round(per["ols"] / per["ce"], 3),
               step_ms=round(t_step * 1e3, 2))


def resnet50_section(args, device, out) -> None:
    """ResNet-50 (ImageNet stem) at 224 px on device-resident images, batch 256: eager and graph."""
    batch, side, steps, warm = (2, 32, 1, 1) if args.quick else (256, 224, 15, 5)
    for mode in ("eager", "graph"):
        runs = {loss: EngineRun("resnet50_imagenet", 1000, batch, loss, mode, device, side=side, n=2 * batch)
                for loss in ("ce", "ols")}
        for r in runs.values():
            r.train(warm)
        per = median_time({k: (lambda r=r: r.train(steps)) for k, r in runs.items()}, device, 3, 1)
        record(out, section="resnet50", batch=batch, side=side, mode=mode,
               ce_img_s=round(batch * steps / per["ce"]), ols_img_s=round(batch * steps / per["ols"]),
               ols_over_ce=round(per["ols"] / per["ce"], 4))
        del runs


def make_jpeg_folder(root: Path, count: int, classes: int = 10, seed: int = 0) -> None:
    """``root/{train,val}/<class>/<i>.jpg``: smooth colour fields plus noise, 300-500 x 375 px, quality 90."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", count), ("val", max(classes, count // 10))):
        for i in range(n):
            h, w = 375, int(rng.integers(300, 500))
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.stack([np.sin(xx / rng.uniform(10, 60) + c) * np.cos(yy / rng.uniform(10, 60)) for c in
                             range(3)], -1)
            img = ((base + 1) * 100 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
            folder = root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i}.jpg", quality=90)


def folder_section(args, device, out) -> None:
    """A generated JPEG folder: the pipeline alone, then ResNet-50 + OLS training from it.

    Pillow decoding in the workers (the default), and ``--decode gpu`` (nvJPEG) on CUDA.
    """
    from ols.data import load_dataset
    from ols.data.batches import make_source

    count = 16 if args.quick else 1024
    batch = 8 if args.quick else 256
    side = 32 if args.quick else 224
    workers = 2 if args.quick else min(15, os.cpu_count() or 1)
    decoders = ["pillow"] + (["gpu"] if device.type == "cuda" else [])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        make_jpeg_folder(Path(tmp), count)
        made = time.perf_counter() - t0
        data = load_dataset("folder", tmp, image_size=side, resize=side * 8 // 7)
        for decode in decoders:
            source = make_source("folder", data, device, "crop,flip", num_workers=workers, decode=decode)
            order = list(range(count))
            gen = torch.Generator(device=device).manual_seed(0)
            for epoch in (1, 2):  # the first epoch includes starting the workers
                wait(device)
                t0 = time.perf_counter()
                for _x, _idx in source.train(order, batch, 0, gen, epoch):
                    pass
                wait(device)
                record(out, section="folder", what="pipeline", decode=decode, workers=workers, images=count,
                       epoch=epoch, img_s=round(count / (time.perf_counter() - t0)), made_s=round(made, 1))
            for mode in ("eager",) + (("graph",) if decode == "gpu" else ()):
                run = EngineRun("resnet50_imagenet", 10, batch, "ols", mode, device, side=side, n=batch)
                labels = data.train_y.to(device)
                for epoch in (1, 2):
                    wait(device)
                    t0 = time.perf_counter()
                    state = EpochState.new(count, device)
                    batches = source.train(order, batch, 0, gen, epoch)
                    train_one_epoch(run.model, run.task, run.optimizer, batches, labels, state,
                                    -(-count // batch), run.scheduler,
                                    Precision(run.amp, device.type == "cuda"), graph=run.graph)
                    wait(device)
                    record(out, section="folder", what="training resnet50 + ols", decode=decode, mode=mode,
                           epoch=epoch, img_s=round(count / (time.perf_counter() - t0)))


SECTIONS = {"syncs": syncs_section, "steps": steps_section, "equality": equality_section,
            "topk": topk_section, "loss": loss_section, "resnet50": resnet50_section,
            "folder": folder_section, "compile": compile_section, "ddp": ddp_section}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--out", type=Path, default=None, help="append each row to this JSON-lines file")
    p.add_argument("--budget", type=float, default=float("inf"), help="start no section after S seconds")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    record(args.out, section="machine", device=str(device), name=device_name(device), torch=torch.__version__,
           python=platform.python_version(), cpus=os.cpu_count())
    for name in args.sections:
        if time.perf_counter() - started > args.budget:
            record(args.out, section=name, note=f"not started: the {args.budget:.0f} s budget was spent")
            continue
        t0 = time.perf_counter()
        try:
            SECTIONS[name](args, device, args.out)
        except Exception as err:  # a section that fails must not lose the others' figures
            record(args.out, section=name, error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
        print(f"# {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    print(f"# total {time.perf_counter() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
