"""The run directory: the one contract between stages. This module owns its layout and atomic writes.

    config.yaml            resolved recipe            environment.json   versions, device
    metrics/steps.jsonl    one line per logged step   metrics/epochs.jsonl  one line per epoch (0 = before training)
    metrics/examples.jsonl per-example loss per epoch adapter/           PEFT adapter
    summary.json           headline figures           cost.json          device-hours x price
    estimate.json          cost estimated before training
    eval/ analysis/ report.md report.html             written by later stages

Stages read and write only through `RunDir`, so report and compare work on a copied folder
without importing torch.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.errors import UserError


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # layout -------------------------------------------------------------------------------------
    config = property(lambda self: self.path / "config.yaml")
    environment = property(lambda self: self.path / "environment.json")
    metrics = property(lambda self: self.path / "metrics")
    steps = property(lambda self: self.path / "metrics" / "steps.jsonl")
    epochs = property(lambda self: self.path / "metrics" / "epochs.jsonl")
    examples = property(lambda self: self.path / "metrics" / "examples.jsonl")
    adapter = property(lambda self: self.path / "adapter")
    summary = property(lambda self: self.path / "summary.json")
    cost = property(lambda self: self.path / "cost.json")
    estimate = property(lambda self: self.path / "estimate.json")
    eval_dir = property(lambda self: self.path / "eval")
    analysis_dir = property(lambda self: self.path / "analysis")
    report_md = property(lambda self: self.path / "report.md")
    report_html = property(lambda self: self.path / "report.html")

    def create(self) -> "RunDir":
        try:
            self.metrics.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"--run-dir {self.path}: cannot create it ({err.strerror})") from None
        if not os.access(self.path, os.W_OK):
            raise UserError(f"--run-dir {self.path}: not writable")
        return self

    @contextmanager
    def lock(self, command: str):
        """Hold `<run>/.lock` (pid + command) for the duration; a live holder is refused, a dead one's lock is taken over.

        Raises:
            UserError: another live tunelab process holds the run directory.
        """
        self.create()
        path = self.path / ".lock"
        me = json.dumps({"pid": os.getpid(), "command": command, "host": socket.gethostname()})
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(path)
                if holder and _alive(holder.get("pid")) and holder.get("host") == socket.gethostname():
                    raise UserError(f"{self.path}: in use by tunelab process {holder['pid']} "
                                    f"({holder.get('command', '?')}); wait for it or stop it") from None
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            break
        try:
            yield self
        finally:
            if _read_lock(path) == json.loads(me):
                path.unlink(missing_ok=True)

    def require(self, path: Path, what: str) -> Path:
        if not path.exists():
            raise UserError(f"{self.path}: no {what} ({path.relative_to(self.path)} is missing)")
        return path

    # reading ------------------------------------------------------------------------------------
    def read_json(self, path: Path) -> Any:
        return json.loads(path.read_text())

    def read_jsonl(self, path: Path) -> list[dict]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # writing (atomic: a reader never sees half a file) -------------------------------------------
    def write_text(self, path: Path, text: str) -> None:
        write_atomic(path, text.encode())

    def write_json(self, path: Path, obj: Any) -> None:
        write_atomic(path, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())

    def write_jsonl(self, path: Path, rows: list[dict]) -> None:
        write_atomic(path, "".join(json.dumps(r, default=_jsonable) + "\n" for r in rows).encode())

    def update_json(self, path: Path, **fields) -> dict:
        data = self.read_json(path) if path.exists() else {}
        data.update(fields)
        self.write_json(path, data)
        return data


_UMASK = os.umask(0)
os.umask(_UMASK)


def is_main_process() -> bool:
    """Rank 0 under torchrun (or a single process): the one that writes the run dir and holds its lock."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def locked(run: RunDir, command: str):
    """Hold the run directory's lock; if this command created the folder and wrote no file, remove it again."""
    if not is_main_process():  # other ranks of a multi-process run: rank 0 holds the lock
        yield run
        return
    existed = run.path.exists()
    try:
        with run.lock(command):
            yield run
    except BaseException:
        if not existed and run.path.exists() and not any(p.is_file() for p in run.path.rglob("*")):
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync, rename over `path`.

    Raises:
        UserError: disk full or unwritable directory; `path` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644 & ~_UMASK)  # mkstemp makes 0600; artifacts are ordinary files
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({err.strerror}); the previous version is kept") from None


@contextmanager
def atomic_folder(path: Path):
    """Yield an empty temp folder beside `path`; on success it replaces `path` in one rename.

    Raises:
        UserError: disk full or unwritable directory while filling it; `path` is left as it was.
    """
    tmp = path.parent / f".{path.name}.tmp"
    old = path.parent / f".{path.name}.old"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield tmp
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        if isinstance(err, RuntimeError) and "write" not in str(err):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            old.rename(path)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        raise UserError(f"{path}: cannot write ({reason}); the previous version is kept") from None
    shutil.rmtree(old, ignore_errors=True)


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
