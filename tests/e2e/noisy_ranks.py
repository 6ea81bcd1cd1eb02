"""Run under ``torchrun --nproc_per_node=2``: every noisy-label method on two gloo ranks, one process group.

``python -m torch.distributed.run --standalone --nproc_per_node=2 noisy_ranks.py OUT``. The group is
started here, so each ``ols train`` joins it rather than starting its own (``DistContext.owns_group``).
``test_noisy_label_runs.py`` reads the runs and trains the one-process twins with :func:`one_process_args`.
"""

import sys
from pathlib import Path

#: 10 classes of 40 feature vectors, 16 of them the clean set: 384 train, 12 global batches of 32
META = {"classes": 10, "per_class": 40, "clean": 16, "samples": 400}
COMMON = ["--dataset", "manyclass", "--data-arg", f"classes={META['classes']}", "--data-arg",
          f"train_per_class={META['per_class']}", "--model", "mlp", "--noise-rate", "0.4", "--epochs", "2",
          "--no-progress"]
PHASES = {"bmm": ["--loss-arg", "warmup_epochs=1"],
          "pencil": ["--loss-arg", "backbone_epochs=1", "--loss-arg", "joint_epochs=1", "--epochs", "3"],
          "self_learning": ["--loss-arg", "initial_epochs=1", "--loss-arg", "samples_per_class=10"],
          "dividemix": ["--loss-arg", "warmup_epochs=1", "--loss-arg", "base=ols"]}
#: every method the script runs
LOSSES = ("l2rw", "mwnet", "bmm", "pencil", "self_learning", "coteaching_plus", "elr", "dividemix")


def ranks_args(loss: str) -> list:
    """Two ranks: each a batch of 16 and a clean batch of 4 (the global batch 32 and 8)."""
    clean = loss in ("l2rw", "mwnet")
    meta = ["--meta-size", str(META["clean"]), "--loss-arg", "meta_batch_size=4"] if clean else []
    return ["train", *COMMON, "--loss", loss, "--batch-size", "16", *meta, *PHASES.get(loss, [])]


def one_process_args(loss: str) -> list:
    """One process with the two ranks' global batch: a batch of 32 and a clean batch of 8."""
    return ["train", *COMMON, "--loss", loss, "--batch-size", "32", "--meta-size", str(META["clean"]),
            "--loss-arg", "meta_batch_size=8"]


if __name__ == "__main__":
    import torch.distributed as dist

    from ols.cli import main

    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    try:
        for loss in LOSSES:
            code = main([*ranks_args(loss), "--out", str(out / loss)])
            if code:
                raise SystemExit(f"{loss} exited {code}")
    finally:
        dist.barrier()
        dist.destroy_process_group()
