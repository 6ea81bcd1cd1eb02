"""Where a run's numbers go besides ``metrics.jsonl``: a CSV file, TensorBoard, MLflow, W&B.

``--log csv tensorboard mlflow wandb`` (any of them; ``--tensorboard`` is the same as
``--log tensorboard``). Every logger gets, at the end of each epoch, that epoch's metrics
(nested keys flattened: ``ema.test_top1_err``), the loss of each of its training steps
(read once, at the end of the epoch: never in a step) and, for OLS, the soft-label
matrix. Each is optional, imported only when asked for, with an install hint:

- ``csv``: ``RUN_DIR/metrics.csv``, rewritten each epoch from ``metrics.jsonl`` (so a
  resumed run's file never holds the epochs it dropped);
- ``tensorboard``: ``RUN_DIR/tensorboard``: the epoch scalars, ``train_loss_step`` at every
  step, the soft labels as an image, the settings as text and, at the end, as hparams;
- ``mlflow``: a local file store, ``RUN_DIR/mlruns`` (``mlflow ui --backend-store-uri
  RUN_DIR/mlruns``), unless ``MLFLOW_TRACKING_URI`` says otherwise; the settings as params,
  the metrics by epoch, the soft labels as an artifact;
- ``wandb``: offline into ``RUN_DIR/wandb`` unless ``WANDB_MODE`` says otherwise
  (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it later).

MLflow and W&B runs keep their id in the run directory, so a resumed run continues the
same tracked run. Only rank 0 logs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .rundir import atomic_write_bytes, flatten, read_jsonl

#: what they write in a run directory is in rundir.RUN_FILES/RUN_FOLDERS (--overwrite removes it)
LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")


#: the module each logger imports, and the extra that installs it
_PACKAGES = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
             "wandb": ("wandb", "wandb")}


def _require(name: str):
    """The module logger ``name`` needs, or one line saying how to install it."""
    import importlib

    module, extra = _PACKAGES[name]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"--log {name} needs {extra}: pip install 'ols[{extra}]'") from None


def check_loggers(names: Sequence[str]) -> None:
    """Fail now, before a run writes anything, if a logger asked for cannot import its package."""
    for name in names:
        if name in _PACKAGES:
            _require(name)


def scalars(metrics: Mapping[str, Any]) -> Dict[str, float]:
    """The numeric entries of ``metrics``, nested keys flattened, ``epoch`` left out."""
    return {k: float(v) for k, v in flatten(dict(metrics)).items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _settings(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The run's settings as flat scalars (lists and mappings as their JSON text)."""
    out = {}
    for key, value in flatten(dict(config)).items():
        out[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return out


class CSVLogger:
    """``RUN_DIR/metrics.csv``: one row an epoch, one column a metric."""

    def __init__(self, out: Path, config: Mapping[str, Any], resumed: bool) -> None:
        self.out = out

    def epoch(self, epoch: int, metrics: Mapping[str, Any], step_losses: Sequence[float], first_step: int,
              soft_labels: Optional[np.ndarray]) -> None:
        rows = [{"epoch": m["epoch"], **scalars(m)} for m in read_jsonl(self.out / "metrics.jsonl")]
        columns: List[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.out / "metrics.csv", text.getvalue().encode())

    def finish(self, summary: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """``RUN_DIR/tensorboard``: scalars by epoch, the step loss by step, soft labels as an image."""

    def __init__(self, out: Path, config: Mapping[str, Any], resumed: bool) -> None:
        self.writer = _require("tensorboard").SummaryWriter(log_dir=str(out / "tensorboard"))
        self.config = _settings(config)
        if not resumed:
            self.writer.add_text("settings", "\n".join(f"    {k}: {v}" for k, v in self.config.items()))

    def epoch(self, epoch: int, metrics: Mapping[str, Any], step_losses: Sequence[float], first_step: int,
              soft_labels: Optional[np.ndarray]) -> None:
        for key, value in scalars(metrics).items():
            self.writer.add_scalar(key, value, epoch)
        for i, loss in enumerate(step_losses):
            self.writer.add_scalar("train_loss_step", loss, first_step + i)
        if soft_labels is not None:  # (K, K), row c = the soft label of class c; brightest = its maximum
            image = soft_labels[None] / max(float(soft_labels.max()), 1e-12)
            self.writer.add_image("soft_labels", image, epoch)
        self.writer.flush()

    def finish(self, summary: Mapping[str, Any]) -> None:
        final = {f"hparam/{k}": v for k, v in scalars(summary).items() if k.startswith("test_")}
        self.writer.add_hparams(self.config, final, run_name="hparams")

    def close(self) -> None:
        self.writer.close()


class MLflowLogger:
    """An MLflow run: settings as params, metrics by epoch, ``soft_labels.npy`` as an artifact."""

    def __init__(self, out: Path, config: Mapping[str, Any], resumed: bool) -> None:
        self.mlflow = _require("mlflow")
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # the file store needs no database package; MLflow 3 keeps it in maintenance mode and
            # asks for this opt-in (a tracking URI of your own is used as it is)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self.mlflow.set_tracking_uri((out / "mlruns").resolve().as_uri())
        self.out = out
        id_file = out / "mlflow_run_id"
        run_id = id_file.read_text().strip() if resumed and id_file.exists() else None
        self.mlflow.set_experiment("ols")
        self.run = self.mlflow.start_run(run_id=run_id, run_name=None if run_id else out.name)
        if run_id is None:
            id_file.write_text(self.run.info.run_id)
            self.mlflow.log_params(_settings(config))

    def epoch(self, epoch: int, metrics: Mapping[str, Any], step_losses: Sequence[float], first_step: int,
              soft_labels: Optional[np.ndarray]) -> None:
        self.mlflow.log_metrics(scalars(metrics), step=epoch)

    def finish(self, summary: Mapping[str, Any]) -> None:
        if (self.out / "soft_labels.npy").exists():
            self.mlflow.log_artifact(str(self.out / "soft_labels.npy"))
        self.status = "FINISHED"

    status = "KILLED"  # until finish(): a stopped run shows as such, and resumes into the same MLflow run

    def close(self) -> None:
        self.mlflow.end_run(status=self.status)


class WandbLogger:
    """A Weights & Biases run, offline unless ``WANDB_MODE`` is set."""

    def __init__(self, out: Path, config: Mapping[str, Any], resumed: bool) -> None:
        self.wandb = _require("wandb")
        id_file = out / "wandb_run_id"
        saved = resumed and id_file.exists()
        run_id = id_file.read_text().strip() if saved else secrets.token_hex(4)  # W&B ids: [a-z0-9]
        self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", "ols"), name=out.name, id=run_id,
                                   dir=str(out), config=dict(config), resume="allow",
                                   mode=os.environ.get("WANDB_MODE", "offline"))
        id_file.write_text(run_id)

    def epoch(self, epoch: int, metrics: Mapping[str, Any], step_losses: Sequence[float], first_step: int,
              soft_labels: Optional[np.ndarray]) -> None:
        self.run.log({**scalars(metrics), "epoch": epoch}, step=epoch)

    def finish(self, summary: Mapping[str, Any]) -> None:
        self.run.summary.update(scalars(summary))

    def close(self) -> None:
        self.run.finish()


_CLASSES = {"csv": CSVLogger, "tensorboard": TensorBoardLogger, "mlflow": MLflowLogger, "wandb": WandbLogger}


class RunLoggers:
    """Every logger a run asked for, built before its first epoch (a missing package fails there)."""

    def __init__(self, names: Sequence[str], out: Path, config: Mapping[str, Any], resumed: bool) -> None:
        self.loggers: List[Any] = []
        try:
            for name in dict.fromkeys(names):
                self.loggers.append(_CLASSES[name](out, config, resumed))
        except BaseException:
            self.close()
            raise

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def epoch(self, epoch: int, metrics: Mapping[str, Any], step_losses: Sequence[float], first_step: int,
              soft_labels: Optional[np.ndarray]) -> None:
        """``metrics`` of ``epoch``; ``step_losses`` of its steps, the first being step ``first_step``."""
        for logger in self.loggers:
            logger.epoch(epoch, metrics, step_losses, first_step, soft_labels)

    def finish(self, summary: Mapping[str, Any]) -> None:
        """The run's final numbers (``summary.json``)."""
        for logger in self.loggers:
            logger.finish(summary)

    def close(self) -> None:
        """Close every logger, whether the run finished or stopped."""
        for logger in self.loggers:
            logger.close()
        self.loggers = []
