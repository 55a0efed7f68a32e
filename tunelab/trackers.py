"""Optional experiment trackers (`train.report_to`): TensorBoard, MLflow, Weights & Biases, or the null tracker.

Training logs step and epoch metrics; with W&B the resolved recipe is the run's config, and the eval and
report stages add their figures and files to the same W&B run (its id is kept in the run directory).

Run as: tunelab train quickstart --set "train.report_to=[wandb]"     (WANDB_MODE=offline: no account needed)
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime

from tunelab.errors import UserError
from tunelab.rundir import RunDir


class NullTracker:
    def log(self, metrics: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker:
    def __init__(self, run: RunDir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("train.report_to: tensorboard needs the tensorboard package "
                            "(pip install tensorboard)") from None
        self.writer = SummaryWriter(log_dir=str(run.tensorboard))

    def log(self, metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


def not_in_the_same_second(run: RunDir, run_id: str) -> None:
    """Wait until the clock is past the second of this W&B run's latest start (at most 3 s).

    W&B names each start's local folder `[offline-]run-<YYYYmmdd_HHMMSS>-<id>`: a second start of the same run in
    the same second (a quick eval, then the report) writes into the first one's folder and loses its records (seen:
    the eval's artifact kept, the report's gone). Comparing with the newest folder's own stamp, not with the
    clock's second at this call, also covers a start whose stamp is ahead of this call."""
    latest = max((p.name.rsplit("-", 2)[-2] for p in run.wandb.glob(f"*run-*-{run_id}")), default="")
    for _ in range(3):
        if datetime.now().strftime("%Y%m%d_%H%M%S") > latest:
            return
        time.sleep(1.01 - time.time() % 1)


class MlflowTracker:
    def __init__(self, run: RunDir):
        try:
            import mlflow
        except ImportError:
            raise UserError("train.report_to: mlflow needs the mlflow package (pip install mlflow)") from None
        self.mlflow = mlflow
        mlflow.start_run(run_name=run.path.name)

    def log(self, metrics: dict, step: int) -> None:
        self.mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class WandbTracker:
    """One W&B run per run directory: a resumed training (and the later eval and report) continue it."""

    def __init__(self, run: RunDir, config: dict | None = None):
        try:
            import wandb
        except ImportError:
            raise UserError("train.report_to: wandb needs the wandb package (pip install wandb)") from None
        run.wandb.mkdir(parents=True, exist_ok=True)
        id_file = run.wandb / "tunelab-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id + "\n")
        not_in_the_same_second(run, run_id)
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tunelab"), name=run.path.name, id=run_id,
                              resume="allow", dir=str(run.path), config=config, reinit="finish_previous")

    def log(self, metrics: dict, step: int) -> None:
        self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def publish(self, figures: dict, files: list, kind: str) -> None:
        """Figures into the run's summary; `files` as one artifact of type `kind`."""
        for key, value in figures.items():
            self.run.summary[key] = value
        present = [f for f in files if f.is_file()]
        if present:
            artifact = self.wandb.Artifact(f"{self.run.name}-{kind}", type=kind)
            for f in present:
                artifact.add_file(str(f))
            self.run.log_artifact(artifact)

    def close(self) -> None:
        self.run.finish()


def publish(run: RunDir, names: list[str], kind: str, figures: dict, files: list) -> None:
    """After eval or report: add their figures and files to the run's W&B run when `train.report_to` has wandb."""
    if "wandb" in names:
        tracker = WandbTracker(run)
        tracker.publish(figures, files, kind)
        tracker.close()


class Trackers:
    """Fan out to every configured tracker; with none configured it is a null tracker."""

    def __init__(self, names: list[str], run: RunDir, config: dict | None = None):
        kinds = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}
        self.trackers = [WandbTracker(run, config) if n == "wandb" else kinds[n](run) for n in names] \
            or [NullTracker()]

    def log(self, metrics: dict, step: int) -> None:
        for t in self.trackers:
            t.log(metrics, step)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
