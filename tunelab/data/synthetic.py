"""`synthetic:arith`: seeded GSM8K-style word problems written by tunelab, with known families.

Eight common families plus one rare family (~1 % of rows, several unusual topics) that analysis
should flag as outliers. Answers follow GSM8K's form: steps with `<<a*b=c>>` calculator notes and a
final `#### N`. Every row carries its `family` label (ground truth for clustering tests).

Run as: tunelab train quickstart   (data.source: synthetic:arith)
"""

from __future__ import annotations

import random

NAMES = ["Ava", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kira", "Liam",
         "Maya", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sam", "Tara"]
ITEMS = [("apple", "apples"), ("notebook", "notebooks"), ("pencil", "pencils"), ("muffin", "muffins"),
         ("sticker", "stickers"), ("orange", "oranges"), ("marker", "markers"), ("cookie", "cookies")]
RARE_SHARE = 0.01


def _shopping(r: random.Random) -> tuple[str, str]:
    name = r.choice(NAMES)
    (_, a_pl), (_, b_pl) = r.sample(ITEMS, 2)
    a, p, b, q = r.randint(2, 9), r.randint(2, 9), r.randint(2, 9), r.randint(2, 9)
    x, y = a * p, b * q
    question = (f"{name} buys {a} {a_pl} for ${p} each and {b} {b_pl} for ${q} each. "
                f"How much money does {name} spend in total?")
    answer = (f"The {a_pl} cost {a} * {p} = <<{a}*{p}={x}>>{x} dollars.\n"
              f"The {b_pl} cost {b} * {q} = <<{b}*{q}={y}>>{y} dollars.\n"
              f"In total {name} spends {x} + {y} = <<{x}+{y}={x + y}>>{x + y} dollars.\n#### {x + y}")
    return question, answer


def _rate_time(r: random.Random) -> tuple[str, str]:
    vehicle = r.choice(["train", "bus", "truck", "car", "cyclist"])
    s, h = r.choice([10, 20, 30, 40, 50, 60]), r.randint(2, 6)
    d = s * h
    question = f"A {vehicle} travels at {s} miles per hour for {h} hours. How many miles does the {vehicle} travel?"
    answer = f"Distance is speed times time, so the {vehicle} travels {s} * {h} = <<{s}*{h}={d}>>{d} miles.\n#### {d}"
    return question, answer


def _discount(r: random.Random) -> tuple[str, str]:
    item = r.choice(["jacket", "lamp", "backpack", "chair", "watch", "bicycle"])
    p, pct = 20 * r.randint(1, 10), r.choice([10, 20, 25, 50])
    off = p * pct // 100
    question = (f"A {item} costs ${p}. The store offers a {pct}% discount. "
                f"What is the price of the {item} after the discount?")
    answer = (f"The discount is {p} * {pct} / 100 = <<{p}*{pct}/100={off}>>{off} dollars.\n"
              f"The new price is {p} - {off} = <<{p}-{off}={p - off}>>{p - off} dollars.\n#### {p - off}")
    return question, answer


def _sharing(r: random.Random) -> tuple[str, str]:
    name = r.choice(NAMES)
    thing = r.choice(["candies", "marbles", "cards", "stickers", "grapes"])
    k, each = r.randint(2, 8), r.randint(2, 12)
    n = k * each
    question = (f"{name} has {n} {thing} and shares them equally among {k} friends. "
                f"How many {thing} does each friend get?")
    answer = f"Each friend gets {n} / {k} = <<{n}/{k}={each}>>{each} {thing}.\n#### {each}"
    return question, answer


def _ages(r: random.Random) -> tuple[str, str]:
    name, other = r.sample(NAMES, 2)
    a, b, c = r.randint(5, 15), r.randint(2, 9), r.randint(2, 10)
    now = a + b
    question = (f"{name} is {a} years old. {other} is {b} years older than {name}. "
                f"How old will {other} be in {c} years?")
    answer = (f"{other} is {a} + {b} = <<{a}+{b}={now}>>{now} years old now.\n"
              f"In {c} years {other} will be {now} + {c} = <<{now}+{c}={now + c}>>{now + c} years old.\n#### {now + c}")
    return question, answer


def _area(r: random.Random) -> tuple[str, str]:
    place = r.choice(["garden", "room", "field", "playground", "patio"])
    length, width = r.randint(3, 12), r.randint(2, 9)
    area = length * width
    question = (f"A rectangular {place} is {length} meters long and {width} meters wide. "
                "What is its area in square meters?")
    answer = (f"The area is length times width: {length} * {width} = <<{length}*{width}={area}>>{area} square meters."
              f"\n#### {area}")
    return question, answer


def _conversion(r: random.Random) -> tuple[str, str]:
    name = r.choice(NAMES)
    hours = r.randint(2, 9)
    minutes = hours * 60
    question = f"{name} practices the piano for {hours} hours on Saturday. How many minutes does {name} practice?"
    answer = (f"One hour has 60 minutes, so {name} practices {hours} * 60 = <<{hours}*60={minutes}>>{minutes} minutes."
              f"\n#### {minutes}")
    return question, answer


def _comparison(r: random.Random) -> tuple[str, str]:
    a_name, b_name = r.sample(NAMES, 2)
    x, d1, y, d2 = r.randint(5, 20), r.randint(2, 7), r.randint(5, 20), r.randint(2, 7)
    a_total, b_total = x * d1, y * d2
    if a_total == b_total:
        d2 += 1
        b_total = y * d2
    more, less = (a_name, b_name) if a_total > b_total else (b_name, a_name)
    diff = abs(a_total - b_total)
    question = (f"{a_name} reads {x} pages a day for {d1} days. {b_name} reads {y} pages a day for {d2} days. "
                f"How many more pages did the one who read more read?")
    answer = (f"{a_name} reads {x} * {d1} = <<{x}*{d1}={a_total}>>{a_total} pages.\n"
              f"{b_name} reads {y} * {d2} = <<{y}*{d2}={b_total}>>{b_total} pages.\n"
              f"{more} read {max(a_total, b_total)} - {min(a_total, b_total)} = "
              f"<<{max(a_total, b_total)}-{min(a_total, b_total)}={diff}>>{diff} more pages than {less}.\n#### {diff}")
    return question, answer


def _rare(r: random.Random) -> tuple[str, str]:
    """Unusual topics, each worded its own way, so no two rare rows look alike to an embedder."""
    kind = r.randrange(4)
    if kind == 0:
        h, n, t = r.choice([1, 2, 3]), r.randint(2, 9), r.randint(2, 4)
        doublings, cells = t, n * 2 ** t
        question = (f"A bacteria colony in a petri dish doubles every {h} hours. It starts with {n} cells. "
                    f"How many cells are in the colony after {h * t} hours?")
        answer = (f"In {h * t} hours the colony doubles {h * t} / {h} = <<{h * t}/{h}={doublings}>>{doublings} times.\n"
                  f"It has {n} * 2^{doublings} = <<{n}*2**{doublings}={cells}>>{cells} cells.\n#### {cells}")
    elif kind == 1:
        hour = r.choice([2, 3, 4, 5])
        angle = 30 * hour
        question = (f"At exactly {hour} o'clock, what is the smaller angle in degrees between the hour hand and the "
                    "minute hand of a clock?")
        answer = (f"Each hour mark is 360 / 12 = <<360/12=30>>30 degrees apart.\n"
                  f"At {hour} o'clock the hands are {hour} * 30 = <<{hour}*30={angle}>>{angle} degrees apart."
                  f"\n#### {angle}")
    elif kind == 2:
        bits = r.randint(9, 31)
        binary = format(bits, "b")
        question = f"Convert the binary numeral {binary} into an ordinary base-ten integer."
        terms = [f"{d}*{2 ** i}" for i, d in enumerate(reversed(binary)) if d == "1"]
        answer = (f"Adding the place values of the ones gives {' + '.join(terms)} = <<{'+'.join(terms)}={bits}>>{bits}."
                  f"\n#### {bits}")
    else:
        planet = r.choice(["Mars", "Jupiter", "Saturn"])
        weight, factor = r.choice([40, 60, 80, 100]), {"Mars": 0.5, "Jupiter": 2.5, "Saturn": 1.5}
        w = int(weight * factor[planet])
        question = (f"An astronaut's suit weighs {weight} kilograms on Earth. Gravity on {planet} is "
                    f"{factor[planet]} times Earth's. What does the spacesuit weigh on {planet}?")
        answer = (f"On {planet} it weighs {weight} * {factor[planet]} = <<{weight}*{factor[planet]}={w}>>{w} kilograms."
                  f"\n#### {w}")
    return question, answer


FAMILIES = {
    "shopping": _shopping, "rate_time": _rate_time, "discount": _discount, "sharing": _sharing,
    "ages": _ages, "area": _area, "unit_conversion": _conversion, "comparison": _comparison,
}
RARE_FAMILY = "rare"


def generate(n: int, seed: int) -> list[dict]:
    """`n` rows of {question, answer, family}; the same (n, seed) always gives the same rows."""
    r = random.Random(seed)
    common = list(FAMILIES)
    rows = []
    for _ in range(n):
        family = RARE_FAMILY if r.random() < RARE_SHARE else r.choice(common)
        question, answer = (_rare if family == RARE_FAMILY else FAMILIES[family])(r)
        rows.append({"question": question, "answer": answer, "family": family})
    return rows
