"""Progress bars for long work (training, generation, embedding): rich on a terminal, silent otherwise.

    with bar("train", total=steps) as p:
        p.advance(loss="1.234", tok_s="512")
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tunelab.distributed import is_main_process

console = Console(stderr=True)


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self.progress, self.task = progress, task

    def advance(self, n: int = 1, **fields) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=n, info=_info(fields))


def _info(fields: dict) -> str:
    return "  ".join(f"{k} {v}" for k, v in fields.items())


@contextmanager
def bar(description: str, total: int):
    """A progress bar with a free-text info column; a no-op when stderr is not a terminal."""
    if not sys.stderr.isatty() or not is_main_process():  # one bar: rank 0's
        yield _Bar(None, None)
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), console=console, transient=False)
    with progress:
        yield _Bar(progress, progress.add_task(description, total=total, info=""))
