"""Recipes from other trainers' configs (`tunelab convert`): an Axolotl or LLaMA-Factory YAML as the tunelab recipe
that trains the same thing, so such a run can be re-run here or imported (`tunelab import`) and measured.

Every key of the config is accounted for: carried over, carried with a stated difference, not needed here (logging,
output folders, the Hub), or without a tunelab equivalent. What would change the trained tokens in a way tunelab
cannot write (full fine-tuning, a dataset format it does not read the same way, rows' own system texts) is
refused, naming the key. benchmarks/axolotl_parity.py and llamafactory_parity.py tokenize converted rows against
the trainers' own code.

Run as: tunelab convert axolotl.yml -o recipe.yaml
        tunelab convert llama3_lora_sft.yaml -o recipe.yaml
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tunelab.errors import UserError

TRAINERS = {"axolotl": "Axolotl", "llamafactory": "LLaMA-Factory"}


def convert(path: str) -> tuple[dict, list[str]]:
    """The tunelab recipe (a raw dict, validated) equivalent to the trainer config at `path`, and the notes: one
    line per key not carried over exactly (`key: value: why`).

    Raises:
        UserError: not a readable YAML mapping of a known trainer, a key refused (see the trainer's module), or a
            recipe that does not validate — naming the key.
    """
    config = _read(path)
    trainer = which(path, config)
    if trainer == "axolotl":
        from tunelab.convert import axolotl as module
    else:
        from tunelab.convert import llamafactory as module
    raw, notes = module.convert(path, config)
    raw = {"name": raw.pop("name"), "description": f"converted from {path} ({TRAINERS[trainer]}) by tunelab convert",
           **raw}
    from tunelab.config import validate
    validate(raw, f"{path} (converted)")
    return raw, notes


def which(path: str, config: dict) -> str:
    """The trainer a config is for: Axolotl (base_model, datasets) or LLaMA-Factory (model_name_or_path).

    Raises:
        UserError: neither.
    """
    if "base_model" in config or "datasets" in config:
        return "axolotl"
    if "model_name_or_path" in config:
        return "llamafactory"
    raise UserError(f"{path}: neither an Axolotl config (base_model, datasets) nor a LLaMA-Factory one "
                    "(model_name_or_path, dataset)")


def _read(path: str) -> dict:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: a trainer config is a mapping of keys, got {type(config).__name__}")
    return config


def leftovers(left: dict, not_needed: dict[str, str]) -> list[str]:
    """Notes for the keys no converter step read: not needed here (with why), or not carried over; empty and false
    values need no word."""
    notes = []
    for key, value in left.items():
        if key in not_needed:
            if value not in (None, "", [], False):
                notes.append(f"{key}: {value!r}: not needed here ({not_needed[key]})")
        elif value not in (None, "", [], {}, False):
            notes.append(f"{key}: {value!r}: not carried over (no tunelab equivalent)")
    return notes


def name(path: str, output_dir: str | None) -> str:
    """The recipe's name: the config's output folder's name, else the config file's."""
    out = str(output_dir or "").rstrip("/")
    return (Path(out).name if out else Path(path).stem).replace("/", "-") or "converted"


def to_text(raw: dict, notes: list[str]) -> str:
    """The recipe as YAML (a text with line breaks double-quoted, each break a \\n), the notes as comments above
    it."""
    header = [f"# tunelab recipe {raw['description']}",
              "# keys not carried over exactly:" if notes else "# every key carried over"]
    header += [f"#   {n}" for n in notes]
    return "\n".join(header) + "\n" + yaml.dump(raw, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style='"' if "\n" in text else None))
