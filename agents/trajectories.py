"""The action generator's training data, built in the repository: ``octogate agent build-data``.

There is no public Husky training set in reach, so trajectories are made whose steps are known by
construction (seeded, so the same command writes the same files):

- ``code``: arithmetic word problems with random numbers: ``[code]`` (sometimes two), then ``[finish]``;
- ``math``: equations, derivatives, fractions, angle sums: ``[math]``, then ``[finish]``;
- ``search``: look-ups answered by one shipped document (``agents/facts.py`` -> ``agents/docs/``):
  ``[search]``, then ``[finish]``;
- ``search+code``: two look-ups and a computation (the paper's "how many square inches larger is
  Texas than Washington" on a map), or one look-up and a conversion;
- ``search+commonsense``: two look-ups and a judgement (who was born first, could they have met);
- ``commonsense``: everyday questions: ``[commonsense]``, then ``[finish]``;
- ``husky-sets``: the first step of questions from the train share of ``data/agent/`` (GSM8K:
  ``[code]``; StrategyQA: ``[commonsense]``; HotpotQA and Bamboogle: ``[search]``), and ``[finish]``
  after GSM8K's and StrategyQA's step with the gold answer as its output.

Every decision of a trajectory is one line ``{"task", "history", "tool", "subtask", "answer",
"source"}``; ``history`` lists the earlier steps ``{"tool", "subtask", "output"}``. Tasks are
split into train and held-out by a hash of the task text (``held_out``), so all decisions of one
task fall on the same side.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from octogate.agents import facts

Trajectory = dict[str, Any]  # {"task", "answer", "source", "steps": [(tool, subtask, output)]}
NAMES = ["Ava", "Ben", "Carla", "Dev", "Elena", "Femi", "Grace", "Hiro", "Ines", "Jonas", "Kira", "Liam", "Maya",
         "Noor", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yusuf", "Zoe"]
ITEMS = [("notebook", "notebooks"), ("apple", "apples"), ("pencil", "pencils"), ("ticket", "tickets"),
         ("sandwich", "sandwiches"), ("plant", "plants"), ("book", "books"), ("toy car", "toy cars")]


def held_out(task: str, percent: int = 15) -> bool:
    return int(hashlib.sha1(task.encode()).hexdigest(), 16) % 100 < percent


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0").rstrip(".")


def _doc(title: str) -> str:
    for d in facts.documents():
        if d["title"] == title:
            return f"{d['title']}: {d['text']}"
    raise KeyError(title)


# ------------------------------------------------------------------------------------------ code
def code_tasks(rng: random.Random, n: int) -> Iterator[Trajectory]:
    for _ in range(n):
        name, (_item, items) = rng.choice(NAMES), rng.choice(ITEMS)
        kind = rng.randrange(9)
        if kind == 0:
            p, k = rng.randint(2, 40), rng.randint(3, 25)
            task, sub, ans = (f"A shop sells {items} for ${p} each. {name} buys {k} {items}. How much does {name} pay?",
                              f"Calculate the cost of {k} {items} at ${p} each: {k} * {p}", k * p)
        elif kind == 1:
            a, b, c = rng.randint(20, 90), rng.randint(1, 19), rng.randint(1, 30)
            task, sub, ans = (f"{name} has {a} {items}, gives away {b} and then buys {c} more. How many {items} "
                              f"does {name} have now?", f"Calculate {a} - {b} + {c}", a - b + c)
        elif kind == 2:
            s, h = rng.randint(30, 120), rng.randint(2, 9)
            task, sub, ans = (f"A train travels at {s} km per hour for {h} hours. How far does it travel?",
                              f"Calculate the distance: {s} * {h}", s * h)
        elif kind == 3:
            k = rng.randint(2, 12)
            t = k * rng.randint(3, 30)
            task, sub, ans = (f"{k} friends share {t} {items} equally. How many {items} does each friend get?",
                              f"Calculate {t} / {k}", t // k)
        elif kind == 4:
            w, length = rng.randint(3, 60), rng.randint(3, 60)
            task, sub, ans = (f"A garden is {w} metres wide and {length} metres long. What is its area in square metres?",
                              f"Calculate the area: {w} * {length}", w * length)
        elif kind == 5:
            p, k = rng.choice([5, 10, 15, 20, 25, 30, 40, 50, 75]), rng.randint(2, 40) * 20
            task, sub, ans = (f"What is {p}% of {k}?", f"Calculate {p} / 100 * {k}", p * k / 100)
        elif kind == 6:
            s, w, x = rng.randint(5, 50), rng.randint(2, 20), rng.randint(1, 40)
            task, sub, ans = (f"{name} saves ${s} every week for {w} weeks, then spends ${x} on a gift. How much "
                              f"money does {name} have left?", f"Calculate {s} * {w} - {x}", s * w - x)
        elif kind == 7:
            p = rng.randint(60, 600)
            r = rng.randint(5, 40)
            task, sub, ans = (f"A book has {p} pages and {name} reads {r} pages a day. How many days does {name} need "
                              "to finish it?", f"Calculate the number of days: ceil({p} / {r})", math.ceil(p / r))
        else:  # two code steps
            p, k, q, m = rng.randint(2, 9), rng.randint(2, 12), rng.randint(10, 30), rng.randint(2, 6)
            first, second = p * k, q * m
            yield {"task": f"{name} buys {k} {items} at ${p} each and {m} boxes at ${q} each. How much does "
                           f"{name} spend in total?",
                   "answer": _num(first + second), "source": "code",
                   "steps": [("code", f"Calculate the cost of the {items}: {k} * {p}", _num(first)),
                             ("code", f"Calculate the cost of the boxes: {m} * {q}", _num(second)),
                             ("code", f"Calculate the total: {first} + {second}", _num(first + second))]}
            continue
        yield {"task": task, "answer": _num(ans), "source": "code", "steps": [("code", sub, _num(ans))]}


# ------------------------------------------------------------------------------------------ math
def math_tasks(rng: random.Random, n: int) -> Iterator[Trajectory]:
    for _ in range(n):
        kind = rng.randrange(5)
        if kind == 0:
            a, x, b = rng.randint(2, 9), rng.randint(-10, 12), rng.randint(1, 30)
            c = a * x + b
            task, sub, out, ans = (f"Solve for x: {a}x + {b} = {c}", f"Solve the equation {a}x + {b} = {c} for x",
                                   f"Subtract {b} from both sides: {a}x = {c - b}. Divide by {a}: x = {x}.", str(x))
        elif kind == 1:
            k = rng.randint(2, 9)
            task, sub, out, ans = (f"What is the derivative of x^{k}?", f"Differentiate x^{k} with respect to x",
                                   f"By the power rule, the derivative of x^{k} is {k}x^{k - 1}.", f"{k}x^{k - 1}")
        elif kind == 2:
            g, a, b = rng.randint(2, 9), rng.randint(1, 9), rng.randint(2, 11)
            r = math.gcd(a, b)
            a2, b2 = a // r, b // r
            task, sub, out, ans = (f"Simplify the fraction {a * g}/{b * g}.", f"Simplify {a * g}/{b * g} to lowest terms",
                                   f"Divide numerator and denominator by {math.gcd(a * g, b * g)}: {a2}/{b2}.",
                                   f"{a2}/{b2}")
        elif kind == 3:
            k = rng.randint(3, 12)
            task, sub, out, ans = (f"What is the sum of the interior angles of a polygon with {k} sides, in degrees?",
                                   f"Apply the formula (n - 2) * 180 for n = {k}",
                                   f"(n - 2) * 180 = ({k} - 2) * 180 = {(k - 2) * 180} degrees.", str((k - 2) * 180))
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            task, sub, out, ans = (f"A right triangle has legs of {a * 3} and {a * 4}. How long is the hypotenuse?",
                                   f"Use the Pythagorean theorem with legs {a * 3} and {a * 4}",
                                   f"c = sqrt({a * 3}^2 + {a * 4}^2) = {a * 5}.", str(a * 5))
            del b
        yield {"task": task, "answer": ans, "source": "math", "steps": [("math", sub, out)]}


# ------------------------------------------------------------------------------------------ search
def _lookups(rng: random.Random) -> tuple[str, str, str, str]:
    """(question, sub-task, document title, answer) for one fact."""
    kind = rng.randrange(10)
    if kind <= 2:
        s = rng.choice(list(facts.US_STATES))
        cap, area, year = facts.US_STATES[s]
        return rng.choice([
            (f"What is the capital of {s}?", f"Find the capital of {s}", s, cap),
            (f"What is the area of {s} in square miles?", f"Find the area of {s} in square miles", s, str(area)),
            (f"In what year did {s} become a state?", f"Find the year {s} was admitted as a state", s, str(year)),
        ])
    if kind <= 4:
        c = rng.choice(list(facts.COUNTRIES))
        cap, cont, cur = facts.COUNTRIES[c]
        return rng.choice([(f"What is the capital of {c}?", f"Find the capital of {c}", c, cap),
                           (f"What currency is used in {c}?", f"Find the currency of {c}", c, cur),
                           (f"On which continent is {c}?", f"Find the continent of {c}", c, cont)])
    if kind <= 6:
        p = rng.choice(list(facts.PEOPLE))
        born, died, _, known = facts.PEOPLE[p]
        return rng.choice([(f"In what year was {p} born?", f"Find the birth year of {p}", p, str(born)),
                           (f"When did {p} die?", f"Find the year {p} died", p, str(died)),
                           (f"What is {p} known for?", f"Find what {p} is known for", p, known)])
    if kind == 7:
        name = rng.choice(list(facts.LANDMARKS))
        city, h, year = facts.LANDMARKS[name]
        return rng.choice([(f"How tall is the {name}?", f"Find the height of the {name}", name, f"{h} metres"),
                           (f"When was the {name} completed?", f"Find the year the {name} was completed", name, str(year)),
                           (f"In which city is the {name}?", f"Find the city of the {name}", name, city)])
    if kind == 8:
        name = rng.choice(list(facts.MOUNTAINS))
        return (f"How high is {name}?", f"Find the height of {name}", name, f"{facts.MOUNTAINS[name][0]} metres")
    name = rng.choice(list(facts.ELEMENTS))
    sym, num = facts.ELEMENTS[name]
    plain = name.replace(" (element)", "")
    return rng.choice([(f"What is the chemical symbol of {plain}?", f"Find the chemical symbol of {plain}", name, sym),
                       (f"What is the atomic number of {plain}?", f"Find the atomic number of {plain}", name, str(num))])


def search_tasks(rng: random.Random, n: int) -> Iterator[Trajectory]:
    for _ in range(n):
        q, sub, title, ans = _lookups(rng)
        yield {"task": q, "answer": ans, "source": "search", "steps": [("search", sub, _doc(title))]}


def search_code_tasks(rng: random.Random, n: int) -> Iterator[Trajectory]:
    for _ in range(n):
        kind = rng.randrange(5)
        if kind <= 1:
            a, b = rng.sample(list(facts.US_STATES), 2)
            if facts.US_STATES[a][1] < facts.US_STATES[b][1]:
                a, b = b, a
            x, y = facts.US_STATES[a][1], facts.US_STATES[b][1]
            steps = [("search", f"Find the area of {a} in square miles", _doc(a)),
                     ("search", f"Find the area of {b} in square miles", _doc(b))]
            if kind == 0:
                task = f"How many square miles larger is {a} than {b}?"
                steps.append(("code", f"Calculate {x} - {y}", _num(x - y)))
                ans = x - y
            else:
                k = rng.choice([10, 50, 100, 200, 500])
                task = (f"If a map has 1 square inch for {k} square miles, how many square inches larger is {a} "
                        f"than {b} on the map?")
                ans = (x - y) / k
                steps.append(("code", f"Calculate ({x} - {y}) / {k}", _num(ans)))
        elif kind == 2:
            a, b = rng.sample(list(facts.PEOPLE), 2)
            x, y = facts.PEOPLE[a][0], facts.PEOPLE[b][0]
            task = f"How many years apart were {a} and {b} born?"
            ans = abs(x - y)
            steps = [("search", f"Find the birth year of {a}", _doc(a)), ("search", f"Find the birth year of {b}", _doc(b)),
                     ("code", f"Calculate abs({x} - {y})", _num(ans))]
        elif kind == 3:
            a, b = rng.sample(list(facts.LANDMARKS), 2)
            if facts.LANDMARKS[a][1] < facts.LANDMARKS[b][1]:
                a, b = b, a
            x, y = facts.LANDMARKS[a][1], facts.LANDMARKS[b][1]
            task = f"How many metres taller is the {a} than the {b}?"
            ans = x - y
            steps = [("search", f"Find the height of the {a}", _doc(a)), ("search", f"Find the height of the {b}", _doc(b)),
                     ("code", f"Calculate {x} - {y}", _num(ans))]
        else:
            s = rng.choice(list(facts.US_STATES))
            x = facts.US_STATES[s][1]
            task = f"What is the area of {s} in square kilometres?"
            ans = round(x * 2.58999)
            steps = [("search", f"Find the area of {s} in square miles", _doc(s)),
                     ("code", f"Calculate round({x} * 2.58999)", _num(ans))]
        yield {"task": task, "answer": _num(ans), "source": "search+code", "steps": steps}


def search_commonsense_tasks(rng: random.Random, n: int) -> Iterator[Trajectory]:
    for _ in range(n):
        a, b = rng.sample(list(facts.PEOPLE), 2)
        (ba, da, _, _), (bb, db, _, _) = facts.PEOPLE[a], facts.PEOPLE[b]
        steps = [("search", f"Find when {a} lived", _doc(a)), ("search", f"Find when {b} lived", _doc(b))]
        if rng.random() < 0.5:
            task = f"Was {a} born before {b}?"
            yes = ba < bb
            steps.append(("commonsense", f"Decide whether {ba} is earlier than {bb}",
                          f"{'Yes' if yes else 'No'}, {a} was born in {ba} and {b} in {bb}."))
        else:
            task = f"Could {a} and {b} have met?"
            yes = ba <= db and bb <= da
            steps.append(("commonsense", f"Decide whether the lifetimes {ba}-{da} and {bb}-{db} overlap",
                          f"{'Yes' if yes else 'No'}, their lifetimes {'overlap' if yes else 'do not overlap'}."))
        yield {"task": task, "answer": "yes" if yes else "no", "source": "search+commonsense", "steps": steps}


# ------------------------------------------------------------------------------------------ commonsense
COMMONSENSE = [
    ("Can a penguin fly?", "no"), ("Would an elephant fit in a car?", "no"), ("Is ice cream usually served cold?", "yes"),
    ("Should you wear a coat outside in a snowstorm?", "yes"), ("Do fish need water to live?", "yes"),
    ("Can you see the stars at noon on a sunny day?", "no"), ("Is it safe to touch a hot stove?", "no"),
    ("Would a pillow break if you dropped it?", "no"), ("Do people usually sleep at night?", "yes"),
    ("Is a tomato heavier than a car?", "no"), ("Can a cat climb a tree?", "yes"), ("Does a candle need air to burn?", "yes"),
    ("Would a glass of water freeze in a hot oven?", "no"), ("Do plants need light to grow?", "yes"),
    ("Is it a good idea to swim during a thunderstorm?", "no"), ("Can a bicycle travel faster than a jet plane?", "no"),
    ("Does bread go stale if left out for a week?", "yes"), ("Is a mouse bigger than a horse?", "no"),
    ("Would you use an umbrella in the rain?", "yes"), ("Can a dog read a newspaper?", "no"),
    ("Do children usually grow taller as they get older?", "yes"), ("Is the sea salty?", "yes"),
    ("Would a paper boat sink if it got soaked?", "yes"), ("Can you boil water in a paper cup over a campfire flame?", "no"),
    ("Does a library lend books?", "yes"), ("Would a snowman survive a summer afternoon in the desert?", "no"),
    ("Is it polite to interrupt someone who is speaking?", "no"), ("Do bees make honey?", "yes"),
    ("Can a person hold their breath for a whole day?", "no"), ("Is a feather lighter than a brick?", "yes"),
    ("Would a goldfish survive in a dry bowl?", "no"), ("Do cars need fuel or electricity to run?", "yes"),
    ("Can you eat soup with a fork easily?", "no"), ("Is it dark at midnight without lights?", "yes"),
    ("Would milk spoil faster outside the fridge?", "yes"), ("Do trees lose their leaves in autumn in cold climates?", "yes"),
    ("Is a whale a kind of fish?", "no"), ("Can a baby drive a car?", "no"), ("Do you need a key to open a locked door?", "yes"),
    ("Would you wear sunglasses to bed?", "no"), ("Is it easier to walk downhill than uphill?", "yes"),
    ("Can a smartphone work with a dead battery?", "no"), ("Do people brush their teeth to keep them clean?", "yes"),
    ("Would an ice cube melt in your hand?", "yes"), ("Is a kitten a young cat?", "yes"), ("Can a fish climb a ladder?", "no"),
    ("Does the sun rise in the east?", "yes"), ("Would a marathon runner be tired after the race?", "yes"),
    ("Is honey sweet?", "yes"), ("Can a rock swim?", "no"), ("Do you need water to make tea?", "yes"),
    ("Would a wool sweater keep you warm in winter?", "yes"), ("Is it wise to leave a baby alone in a bath?", "no"),
    ("Can a violin be played with a bow?", "yes"), ("Is lemon juice sour?", "yes"), ("Would a chair be useful for sitting?", "yes"),
    ("Do most birds lay eggs?", "yes"), ("Is a minute longer than an hour?", "no"), ("Can a camel go days without drinking?", "yes"),
    ("Would a chocolate bar melt in a hot car?", "yes"), ("Is a shoebox big enough to hold a grand piano?", "no"),
]
_ANIMALS = [("dog", True, False), ("horse", True, False), ("eagle", True, True), ("sparrow", True, True),
            ("snake", False, False), ("bat", False, True), ("cow", True, False), ("owl", True, True), ("ostrich", True, False)]


def commonsense_tasks(rng: random.Random, n: int) -> Iterator[Trajectory]:
    pool = list(COMMONSENSE)
    for name, legs, flies in _ANIMALS:
        pool.append((f"Can a {name} fly?", "yes" if flies else "no"))
        pool.append((f"Does a {name} have legs?", "yes" if legs else "no"))
    rng.shuffle(pool)
    for q, ans in pool[:n]:
        out = f"{'Yes' if ans == 'yes' else 'No'}."
        yield {"task": q, "answer": ans, "source": "commonsense", "steps": [("commonsense", q, out)]}


# ------------------------------------------------------------------------------------------ the Husky sets
def _last_sentence(question: str) -> str:
    parts = [p.strip() for p in question.replace("?", "?|").replace(". ", ".|").split("|") if p.strip()]
    return parts[-1] if parts else question


HUSKY_SETS = (("gsm8k", "code", 300), ("strategyqa", "commonsense", 147), ("hotpotqa", "search", 200),
              ("bamboogle", "search", 62))


def husky_set_tasks(folder: Path) -> Iterator[Trajectory]:
    """First steps (and the finish after one step where the answer is known) from data/agent/: the
    first ``limit`` questions of each file (train and held-out shares are split later by the hash)."""
    for name, tool, limit in HUSKY_SETS:
        path = folder / f"{name}.jsonl"
        for line in path.read_bytes().splitlines()[:limit]:
            row = orjson.loads(line)
            q, ans = row["question"], row["answer"]
            if isinstance(ans, bool):
                ans = "yes" if ans else "no"
            if tool == "code":
                steps = [("code", f"Calculate: {_last_sentence(q)}", str(ans))]
            elif tool == "commonsense":
                steps = [("commonsense", q, f"{str(ans).capitalize()}.")]
            else:
                steps = [("search", q, "")]  # what follows depends on the documents: first step only
            yield {"task": q, "answer": str(ans), "source": name, "steps": steps, "first_only": tool == "search"}


# ------------------------------------------------------------------------------------------ lines
def decisions(traj: Trajectory) -> Iterator[dict[str, Any]]:
    """One line per decision: each step given the ones before it, then [finish]."""
    history: list[dict[str, str]] = []
    for tool, sub, out in traj["steps"]:
        yield {"task": traj["task"], "history": list(history), "tool": tool, "subtask": sub,
               "answer": traj["answer"], "source": traj["source"]}
        history.append({"tool": tool, "subtask": sub, "output": out})
    if not traj.get("first_only"):
        yield {"task": traj["task"], "history": history, "tool": "finish", "subtask": "",
               "answer": traj["answer"], "source": traj["source"]}


def build(agent_data: Path, seed: int = 0) -> list[Trajectory]:
    rng = random.Random(seed)
    trajs: list[Trajectory] = []
    trajs += code_tasks(rng, 200)
    trajs += math_tasks(rng, 300)
    trajs += search_tasks(rng, 220)
    trajs += search_code_tasks(rng, 120)
    trajs += search_commonsense_tasks(rng, 80)
    trajs += commonsense_tasks(rng, 200)
    trajs += husky_set_tasks(agent_data)
    seen, unique = set(), []
    for t in trajs:  # a task drawn twice is kept once, so no task is on both sides of the split
        if t["task"] not in seen:
            seen.add(t["task"])
            unique.append(t)
    return unique


def write_data(agent_data: Path, out_dir: Path, docs_dir: Path, seed: int = 0) -> dict[str, int]:
    """Write train.jsonl, heldout.jsonl (decisions) and heldout_tasks.jsonl (whole tasks with answers),
    and the search folder's documents. Returns counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    docs_dir.mkdir(parents=True, exist_ok=True)
    (docs_dir / "facts.jsonl").write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in facts.documents()))
    trajs = build(agent_data, seed)
    train, held, tasks = [], [], []
    for t in trajs:
        lines = list(decisions(t))
        if held_out(t["task"]):
            held += lines
            tasks.append({"task": t["task"], "answer": t["answer"], "source": t["source"],
                          "tools": [s[0] for s in t["steps"]] + ([] if t.get("first_only") else ["finish"])})
        else:
            train += lines
    for name, rows in (("train.jsonl", train), ("heldout.jsonl", held), ("heldout_tasks.jsonl", tasks)):
        (out_dir / name).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return {"trajectories": len(trajs), "train": len(train), "heldout": len(held), "heldout_tasks": len(tasks),
            "documents": len(facts.documents())}
