"""The report's sampled figures (`eval.pass_at_k`): pass@1, pass@k and maj@k of the base model and the tuned adapter,
k answers sampled per question, tuned − base paired over questions; the key-metric rows, the console line and the
verdict.

Run as: tunelab eval runs/smoke --set eval.pass_at_k=8      (then tunelab report runs/smoke)
"""

from __future__ import annotations

from tunelab.evaluate.scoring import naming
from tunelab.evaluate.summary import sampled_name
from tunelab.report.observations import Observation, sign_of

NAMES = ("pass@1", "pass@k", "maj@k")


def _how(evaluation: dict) -> str:
    """How the answers were drawn and judged, in words: "8 sampled answers per question (temperature 0.6, top-p
    0.95), each right by flexible-extract"."""
    cfg = evaluation["sampled"]["settings"]
    return (f"{cfg['k']} sampled answers per question (temperature {cfg['temperature']:g}, top-p {cfg['top_p']:g}), "
            f"each right by {naming(evaluation).flexible}")


def _change(d: dict, name: str) -> tuple[float, float, float]:
    """(Δ points, CI low, CI high) of one paired difference: pass@1's in shares, the others' as accuracies."""
    if name == "pass@1":
        return 100 * d["delta"], 100 * d["ci95"][0], 100 * d["ci95"][1]
    return d["delta_pts"], d["ci95_pts"][0], d["ci95_pts"][1]


def _moved(s: dict, name: str, long: bool = False) -> str:
    """"pass@8 2.0 % → 3.1 % (+1.1, CI -0.9..+3.1)": one figure base → tuned with its paired change ("+1.1 pts,
    95 % CI …" when `long`, as the verdict's sentence says it)."""
    delta, lo, hi = _change(s["differences"][name], name)
    change = f"{delta:+.1f} pts, 95 % CI" if long else f"{delta:+.1f}, CI"
    return (f"{sampled_name(name, s['settings']['k'])} {100 * s['models']['base'][name]:.1f} % → "
            f"{100 * s['models']['tuned'][name]:.1f} % ({change} {lo:+.1f}..{hi:+.1f})")


def key_rows(evaluation: dict) -> list[tuple[str, str, str]]:
    """The Key metrics rows: each figure base → tuned with its paired change; none unless both were sampled."""
    s = evaluation.get("sampled") or {}
    if "differences" not in s:
        return []
    k, figures, rows = s["settings"]["k"], s["models"], []
    for name in NAMES:
        delta, lo, hi = _change(s["differences"][name], name)
        rows.append((f"{sampled_name(name, k)}, sampled", f"{100 * figures['base'][name]:.1f} % → "
                     f"{100 * figures['tuned'][name]:.1f} %", f"{delta:+.1f} pts, 95 % CI {lo:+.1f}..{hi:+.1f}, "
                     f"n = {s['differences']['pass@k']['n']}; {_how(evaluation)}"))
    return rows


def line(evaluation: dict) -> str | None:
    """The console's line: "sampled (8 per question, T 0.6): pass@1 2.0 % → 3.1 % (+1.1, CI …); …"."""
    s = evaluation.get("sampled") or {}
    if "differences" not in s:
        return None
    return f"sampled ({_how(evaluation)}): " + "; ".join(_moved(s, name) for name in NAMES)


def verdict(evaluation: dict) -> Observation | None:
    """Did the fine-tune widen or narrow what the model finds in k tries? Judged on pass@k's paired interval: one to
    watch when it fell beyond noise (the fine-tune reaches fewer questions in k tries); good when it rose
    beyond noise; a note otherwise (saying so when pass@1 rose beyond noise). Its numbers state all three figures."""
    s = evaluation.get("sampled") or {}
    if "differences" not in s:
        return None
    k, d = s["settings"]["k"], s["differences"]
    one, many = sign_of(_change(d["pass@1"], "pass@1")[1:]), sign_of(d["pass@k"]["ci95_pts"])
    said = "; ".join(_moved(s, name, long=True) for name in NAMES)
    kind, text = {1: ("good", f"The fine-tune reached more questions in {k} tries, beyond noise"),
                  -1: ("watch", f"The fine-tune reached fewer questions in {k} tries than the base model, beyond "
                                "noise"),
                  0: ("info", f"The fine-tune did not change what the model reaches in {k} tries beyond noise")}[many]
    if one == 1 and many == 0:
        text += ", though its single answers are right more often beyond noise"
    return Observation(kind, f"{text}: {said}, n = {d['pass@k']['n']} questions, {_how(evaluation)}.",
                       f"paired 95 % intervals over questions, tuned − base: pass@{k} and maj@{k} as accuracies "
                       "(bootstrap), pass@1 by bootstrap of each question's share of right answers; judged on "
                       f"pass@{k}; beyond noise = CI excludes 0")
