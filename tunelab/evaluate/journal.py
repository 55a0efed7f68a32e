"""Resumable evaluation: every finished answer is appended to a journal before the next is awaited.

An eval killed at any point (SIGKILL included) continues with only the questions it had not answered:
`done()` returns what each pass already has, keyed by everything that decides the answer (model and
adapter, prompts, stop rule, token budget), so a journal of other settings is never reused. Each
process appends to its own file (`eval/journal-<rank>.jsonl`), so a resumed eval may use another
number of processes. The stage deletes the journals once predictions.jsonl and summary.json are written.

Run as: tunelab eval runs/smoke        (kill it, run it again: it picks up where it stopped)
"""

from __future__ import annotations

import json
import os
from tunelab.rundir import RunDir


class Journal:
    def __init__(self, run: RunDir, rank: int):
        self.run, self.path = run, run.journal(rank)

    def done(self, key: str) -> dict[int, tuple[str, int]]:
        """Question index -> (completion, generated tokens) already journaled for pass `key` by any process."""
        out = {}
        for path in self.run.journals():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # the torn last line of a killed process
                    continue
                if row.get("key") == key:
                    out[row["index"]] = (row["completion"], row["tokens"])
        return out

    def append(self, key: str, index: int, completion: str, tokens: int) -> None:
        """Add one answer, flushed to disk before returning (a kill after this loses nothing)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"key": key, "index": index, "completion": completion, "tokens": tokens}) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def clear(self) -> None:
        for path in self.run.journals():
            path.unlink(missing_ok=True)
