"""Optional experiment trackers (`train.report_to`): TensorBoard, MLflow, or the null tracker."""

from __future__ import annotations

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
            raise UserError("train.report_to: tensorboard needs the tensorboard package (pip install tensorboard)") from None
        self.writer = SummaryWriter(log_dir=str(run.tensorboard))

    def log(self, metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


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


class Trackers:
    """Fan out to every configured tracker; with none configured it is a null tracker."""

    def __init__(self, names: list[str], run: RunDir):
        kinds = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}
        self.trackers = [kinds[n](run) for n in names] or [NullTracker()]

    def log(self, metrics: dict, step: int) -> None:
        for t in self.trackers:
            t.log(metrics, step)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
