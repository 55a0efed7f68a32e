"""synthetic:arith: answers are arithmetically right, families are balanced, the rare family is rare."""

import re
from collections import Counter

from tunelab.data.synthetic import FAMILIES, RARE_FAMILY, generate

CALC = re.compile(r"<<([^=<>]+)=([^<>]+)>>")


def test_every_calculation_and_final_answer_recomputes():
    rows = generate(3000, seed=7)
    for row in rows:
        steps = CALC.findall(row["answer"])
        assert steps, row
        for expr, result in steps:
            assert abs(eval(expr, {"__builtins__": {}}) - float(result)) < 1e-9, (expr, result, row["question"])
        final = row["answer"].rsplit("#### ", 1)[1]
        assert float(final) == float(steps[-1][1]), row
        assert row["answer"].count("####") == 1


def test_families_rare_share_and_determinism():
    rows = generate(4000, seed=1)
    counts = Counter(r["family"] for r in rows)
    assert set(counts) == set(FAMILIES) | {RARE_FAMILY} and len(FAMILIES) >= 8
    assert 0.005 <= counts[RARE_FAMILY] / len(rows) <= 0.02
    assert min(counts[f] for f in FAMILIES) > 0.8 * len(rows) / 9
    assert generate(50, seed=1) == rows[:50]
    assert generate(50, seed=2) != rows[:50]
