"""`tunelab sweep`: one `tunelab run` per combination of recipe values, then their comparison.

Each combination runs in its own folder under the sweep's folder (named by its values), so a re-run of the same
command skips every finished stage of every run; a run that fails (say, a learning rate that diverges) is recorded
and the others go on. `sweep.json` holds the plan and each run's state; `compare.md` / `compare.html` put the
finished runs side by side, with paired tests against the first (the same machinery as `tunelab compare`).

Run as: tunelab sweep quickstart --vary train.lr=3e-4,1e-3 --vary lora.r=8,16 [--seeds 3]
"""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path

from tunelab.config import load_recipe
from tunelab.errors import UserError
from tunelab.rundir import RunDir, default_run_dir, locked

log = logging.getLogger(__name__)


def parse_vary(items: list[str]) -> list[tuple[str, list[str]]]:
    """`--vary key=v1,v2` → (key, [v1, v2]); commas inside [...], {...} or quotes do not split a value.

    Raises:
        UserError: not key=values, an empty value, a key given twice.
    """
    out, seen = [], set()
    for item in items:
        key, sep, text = item.partition("=")
        values = _split_top_level(text)
        if not sep or not key or not values or any(not v for v in values):
            raise UserError(f"--vary {item}: expected dotted.key=value1,value2,...")
        if key in seen:
            raise UserError(f"--vary {key}: given twice; list all its values in one --vary")
        seen.add(key)
        out.append((key, values))
    return out


def _split_top_level(text: str) -> list[str]:
    parts, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += ch
    return parts + [current.strip()] if text.strip() else []


def plan(vary: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """(folder name, overrides) of every combination, first key slowest; a folder is named by its values, with
    each key's last part (`lr=0.001_r=8`) unless two keys share it."""
    lasts = [key.rsplit(".", 1)[-1] for key, _ in vary]
    short = len(set(lasts)) == len(lasts)
    combos = []
    for values in itertools.product(*[values for _, values in vary]):
        overrides = [f"{key}={value}" for (key, _), value in zip(vary, values)]
        name = "_".join(f"{last if short else key}={_slug(value)}"
                        for (key, _), last, value in zip(vary, lasts, values))
        combos.append((name, overrides))
    return combos


def _slug(value: str) -> str:
    """A value as part of a folder name: `[q_proj, v_proj]` → `q_proj+v_proj`; other odd characters → `-`."""
    value = re.sub(r"\s*,\s*", "+", value.strip().strip("[]{}'\""))
    return re.sub(r"[^A-Za-z0-9.=_+-]", "-", value) or "-"


def sweep(recipe: str, overrides: list[str], vary_items: list[str], run_dir: str | None,
          seeds: int = 1) -> tuple[Path, dict]:
    """Run every combination not yet finished, then compare the finished ones; returns (folder, sweep.json).
    `seeds` > 1 repeats every combination with train.seed = the recipe's, +1, ... (varied last).

    Raises:
        UserError: a malformed --vary or --seeds, any combination's recipe problems (before anything runs), or the
            folder holding another sweep.
    """
    vary_items = vary_items + _seed_values(recipe, overrides, vary_items, seeds)
    combos = plan(parse_vary(vary_items))
    problems = []
    for name, combo in combos:
        try:
            cfg = load_recipe(recipe, overrides + combo)
        except UserError as err:
            problems.append(f"{name}: {err}")
    if problems:
        raise UserError(f"sweep: {len(problems)} of {len(combos)} combinations have problems\n"
                        + "\n".join(f"  {p}" for p in problems))
    folder = Path(run_dir or default_run_dir(cfg.name, "sweep"))
    record = {"recipe": recipe, "overrides": overrides, "vary": vary_items,
              "runs": [{"name": name, "overrides": combo, "state": "to do"} for name, combo in combos]}
    from tunelab.pipeline import run_all
    home, plan_file = RunDir(folder), folder / "sweep.json"
    with locked(home, "sweep"):  # a second sweep on this folder is refused, naming this one's pid
        _check_same_sweep(home, plan_file, record)
        for i, entry in enumerate(record["runs"], 1):
            log.info("sweep: run %d of %d: %s", i, len(combos), entry["name"])
            try:
                run_all(recipe, overrides + entry["overrides"], str(folder / entry["name"]), None)
                entry["state"] = "done"
            except UserError as err:  # one failing combination (a diverging learning rate) does not stop the rest
                log.error("sweep: %s failed: %s", entry["name"], err)
                entry["state"] = f"failed: {err}"
            home.write_json(plan_file, record)
    finished = [RunDir(path) for path in finished_runs(folder)]
    if finished:
        from tunelab.report import compare, write_report
        compare(finished, folder)
        if seeds > 1:  # each run's report again, its Seeds section over every repeat (the first saw none yet)
            for run in finished:
                write_report(run)
    return folder, record


def _seed_values(recipe: str, overrides: list[str], vary_items: list[str], seeds: int) -> list[str]:
    """`--seeds N` as one more --vary item: train.seed over N consecutive values from the recipe's own."""
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: must be at least 1")
    if seeds == 1:
        if not vary_items:
            raise UserError("sweep: nothing to vary: give --vary KEY=V1,V2 or --seeds N")
        return []
    if any(item.partition("=")[0] == "train.seed" for item in vary_items):
        raise UserError("--seeds: train.seed is already given by --vary; use one of them")
    first = load_recipe(recipe, overrides).train.seed
    return [f"train.seed={','.join(str(first + k) for k in range(seeds))}"]


def finished_runs(folder: Path) -> list[Path]:
    """The run folders of a sweep that finished, in the sweep's order (from its sweep.json)."""
    import json
    record = json.loads((folder / "sweep.json").read_text())
    return [folder / e["name"] for e in record["runs"] if e["state"] == "done"]


def _check_same_sweep(home: RunDir, plan_file: Path, record: dict) -> None:
    """Refuse a folder that holds another sweep; write this sweep's plan."""
    before = home.read_optional(plan_file)
    if before and (before["recipe"], before["overrides"], before["vary"]) != (record["recipe"], record["overrides"],
                                                                              record["vary"]):
        raise UserError(f"{home.path}: holds another sweep (see its sweep.json); use a new --run-dir, or the "
                        "same recipe, --set and --vary to resume it")
    home.write_json(plan_file, record)
