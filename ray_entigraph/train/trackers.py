"""Experiment trackers (`train.report_to`): rank 0 sends every metrics line to TensorBoard, Weights & Biases or
MLflow through the libraries themselves, beside the appended `metrics/` segments (which stay the record).

- `tensorboard`: event files written with `torch.utils.tensorboard` (or `tensorboardX`, which Ray Train
  installs, when the `tensorboard` package is absent) into `<train folder>/tensorboard/`; on object storage
  they are written locally and uploaded at every checkpoint and at the end. `tensorboard --logdir` reads them.
- `wandb`: `wandb.init(project=train.tracker_project, name=train.name)`; `WANDB_MODE=offline` works without
  a network.
- `mlflow`: one MLflow run named after train.name under `MLFLOW_TRACKING_URI` (default: ./mlruns).

`check_available` runs on the driver before any worker starts: a tracker whose library is missing is a
one-line error naming the fix.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile

from ray_entigraph import storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.errors import ConfigError
from ray_entigraph.layout import train_url

_LIBRARIES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def check_available(config: EntiGraphConfig) -> None:
    for name in config.train.report_to:
        modules = _LIBRARIES[name]
        if not any(importlib.util.find_spec(m) for m in modules):
            raise ConfigError(f"train.report_to lists {name!r} but the {modules[0]!r} package is not installed. "
                              f"Fix: `pip install {modules[0]}` (on every training node), or remove {name!r} from "
                              "train.report_to.")


def _numbers(line: dict) -> dict[str, float]:
    return {k: float(v) for k, v in line.items() if k != "step" and isinstance(v, (int, float))}


class _TensorBoard:
    def __init__(self, config: EntiGraphConfig):
        self.target = train_url(config, "tensorboard")
        self.local = self.target if storage.is_local(self.target) else tempfile.mkdtemp(prefix="tensorboard-")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the tensorboard package is absent: tensorboardX writes the same event files
            from tensorboardX import SummaryWriter
        self.writer = SummaryWriter(log_dir=self.local.removeprefix("file://"))

    def log(self, line: dict) -> None:
        for key, value in _numbers(line).items():
            self.writer.add_scalar(f"train/{key}", value, global_step=int(line["step"]))

    def flush(self) -> None:
        self.writer.flush()
        if self.local != self.target:
            storage.put_dir(self.local, self.target)

    def close(self) -> None:
        self.writer.close()
        self.flush()


class _WandB:
    def __init__(self, config: EntiGraphConfig):
        import wandb  # lazy: only when train.report_to lists it

        self.run = wandb.init(project=config.train.tracker_project, name=config.train.name,
                              config=config.model_dump(mode="json"), dir=tempfile.mkdtemp(prefix="wandb-"))

    def log(self, line: dict) -> None:
        self.run.log(_numbers(line), step=int(line["step"]))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, config: EntiGraphConfig):
        import mlflow  # lazy: only when train.report_to lists it

        self.mlflow = mlflow
        mlflow.set_experiment(config.train.tracker_project)
        self.run = mlflow.start_run(run_name=config.train.name)

    def log(self, line: dict) -> None:
        self.mlflow.log_metrics(_numbers(line), step=int(line["step"]))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.mlflow.end_run()


_OPEN = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}


class Trackers:
    """The configured trackers on rank 0 (nothing elsewhere)."""

    def __init__(self, config: EntiGraphConfig, *, enabled: bool):
        os.environ.setdefault("WANDB_SILENT", "true")
        self.sinks = [_OPEN[name](config) for name in config.train.report_to] if enabled else []

    def log(self, line: dict) -> None:
        for sink in self.sinks:
            sink.log(line)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
