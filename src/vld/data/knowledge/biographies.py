"""Random biographies in the style of bioS (Physics of Language Models, Part 3.3).

N people get unique full names (first x middle x last, drawn without replacement) and
independent uniform attributes: gender (the pronoun), birth date (month x day 1..28 x year),
birth city, university, major, and employer (which fixes the employer's city). Every list entry
is one token, so the information per person is known exactly:

    N0 = |first| * |middle| * |last|                      possible names
    S0 = 2 * 12 * 28 * |years| * |cities| * |universities| * |majors| * |employers|

With the shipped lists (bio_lists.json) these equal Part 3.3's sizes: N0 = 400*400*1000 and
log2 S0 = 47.59 bits per person.

A person is rendered as <bos>, six sentences (birth date, birth city, university, major,
employer, employer city), <eos>; five templates per attribute. The first sentence names the
person in full, later ones use the pronoun. Two modes:
  fixed  one rendering per person (templates drawn once, canonical sentence order);
  fresh  a new rendering (templates and sentence order) at every exposure:
         `BiographyRenderer(dir).render(epoch, seed)`, deterministic in (seed, epoch).
The directory's token set always holds the fixed rendering (one sample per person);
`meta.json["params"]["mode"]` tells the trainer whether to re-render each epoch.

Masks (used by Part 3.3's measure): name tokens = the three name tokens of the first sentence
(later mentions are pronouns); value tokens = every attribute-value token plus the first pronoun,
which is where the gender bit appears.

    python -m vld.data.knowledge.biographies --people N --seed 0 --out DIR [--mode fixed|fresh]
"""

from __future__ import annotations

import argparse
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vld.atomic import check_replaceable
from vld.data.tokens import TokenSet, write_token_set
from vld.errors import fail, run_cli

GENERATOR = "vld.data.knowledge.biographies"
LISTS_FILE = Path(__file__).with_name("bio_lists.json")
LISTS_NAME, PEOPLE_NAME, MASKS_NAME = "bio_lists.json", "people.jsonl", "masks.npy"
MODES = ("fixed", "fresh")
ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer", "employer_city")
SPECIALS = ("<pad>", "<bos>", "<eos>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SUBJECT = "{s}"
SLOTS = ("{month}", "{day}", "{year}", "{city}", "{university}", "{major}", "{employer}", "{employer_city}")
# masks.npy stores both masks in one uint8 array: bit 0 = name token, bit 1 = value token
NAME_BIT, VALUE_BIT = 1, 2
# independent random streams derived from the user's seed
_PEOPLE_STREAM, _FIXED_STREAM, _FRESH_STREAM = 0, 1, 2


class BioRendering(NamedTuple):
    """One rendering of all people: a flat token array with per-person offsets and two masks."""

    tokens: np.ndarray  # int64, <bos> bio <eos> per person
    index: np.ndarray  # int64 offsets, person i = tokens[index[i]:index[i+1]]
    name_mask: np.ndarray  # bool, same length as tokens
    value_mask: np.ndarray  # bool, same length as tokens


@dataclass(frozen=True)
class BioLists:
    """The lists, the word-level vocabulary built from them, and the compiled templates."""

    raw: dict
    vocab: tuple[str, ...]
    ids: dict[str, np.ndarray]  # list name -> token id of each entry
    employer_city: np.ndarray  # employer index -> city index
    templates: dict[str, tuple[tuple, ...]]  # attribute -> templates as tuples of token ids / slot names

    @classmethod
    def load(cls, path: str | Path = LISTS_FILE) -> "BioLists":
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            fail(str(path), f"unreadable biography lists ({err.__class__.__name__})")
        try:
            return cls._build(raw)
        except (KeyError, TypeError, ValueError) as err:
            fail(str(path), f"malformed biography lists ({err})")

    @classmethod
    def _build(cls, raw: dict) -> "BioLists":
        cities = list(raw["cities"])
        city_of = {c: i for i, c in enumerate(cities)}
        employers = [e for e, _ in raw["employers"]]
        employer_city = np.array([city_of[c] for _, c in raw["employers"]], dtype=np.int64)
        y0, y1 = raw["years"]
        entries = {
            "first_names": list(raw["first_names"]),
            "middle_names": list(raw["middle_names"]),
            "last_names": list(raw["last_names"]),
            "cities": cities,
            "universities": list(raw["universities"]),
            "majors": list(raw["majors"]),
            "employers": employers,
            "months": list(raw["months"]),
            "days": [str(d) for d in raw["days"]],
            "years": [str(y) for y in range(int(y0), int(y1) + 1)],
            "pronouns": list(raw["pronouns"]),
        }
        words = set()
        for attr in ATTRIBUTES:
            for template in raw["templates"][attr]:
                words.update(w for w in template.split() if not (w.startswith("{") and w.endswith("}")))
        vocab = list(SPECIALS) + sorted(words)
        for name, items in entries.items():
            vocab.extend(items)
        if len(set(vocab)) != len(vocab):
            dup = sorted({w for w in vocab if vocab.count(w) > 1})[:3]
            raise ValueError(f"entries must be distinct tokens, repeated: {dup}")
        position = {w: i for i, w in enumerate(vocab)}
        ids = {name: np.array([position[w] for w in items], dtype=np.int64) for name, items in entries.items()}
        templates = {}
        for attr in ATTRIBUTES:
            compiled = []
            for template in raw["templates"][attr]:
                parts = template.split()
                if parts[0] != SUBJECT:
                    raise ValueError(f"template must start with {SUBJECT}: {template!r}")
                for w in parts:
                    if w.startswith("{") and w not in SLOTS + (SUBJECT,):
                        raise ValueError(f"unknown slot {w} in {template!r}")
                compiled.append(tuple(w if w.startswith("{") else position[w] for w in parts))
            if not compiled:
                raise ValueError(f"no templates for {attr}")
            templates[attr] = tuple(compiled)
        return cls(raw, tuple(vocab), ids, employer_city, templates)

    def size(self, name: str) -> int:
        return len(self.ids[name])

    @property
    def n_names(self) -> int:
        """N0: the number of distinct full names."""
        return self.size("first_names") * self.size("middle_names") * self.size("last_names")

    @property
    def attribute_sizes(self) -> dict[str, int]:
        return {
            "gender": self.size("pronouns"),
            "month": self.size("months"),
            "day": self.size("days"),
            "year": self.size("years"),
            "birth_city": self.size("cities"),
            "university": self.size("universities"),
            "major": self.size("majors"),
            "employer": self.size("employers"),  # the employer's city is fixed by the employer
        }

    @property
    def n_attribute_values(self) -> int:
        """S0: the number of distinct attribute combinations of one person."""
        return math.prod(self.attribute_sizes.values())

    def tokenizer(self) -> dict:
        return {
            "type": "word",
            "description": "one token per word, punctuation mark or list entry; decode = join with spaces",
            "tokens": list(self.vocab),
            "pad_id": PAD_ID,
            "bos_id": BOS_ID,
            "eos_id": EOS_ID,
            "vocab_size": len(self.vocab),
        }


def log2_binomial(n: int, k: int) -> float:
    """log2 C(n, k) to ~1e-15 relative: exact integers when small, else a compensated sum of
    log2((n - i) / (k - i)) (lgamma differences would lose ~1e-7 bits to cancellation)."""
    if k < 0 or k > n:
        raise ValueError("need 0 <= k <= n")
    k = min(k, n - k)
    if n <= 10_000:
        return math.log2(math.comb(n, k))
    total = []
    for lo in range(0, k, 1 << 20):
        i = np.arange(lo, min(k, lo + (1 << 20)), dtype=np.float64)
        total.append(math.fsum(np.log2((n - i) / (k - i)).tolist()))
    return math.fsum(total)


def log2_factorial(n: int) -> float:
    return math.fsum(np.log2(np.arange(2, n + 1, dtype=np.float64)).tolist()) if n > 1 else 0.0


def dataset_entropy(lists: BioLists, n_people: int) -> dict[str, float]:
    """Exact entropy in bits of N people drawn by `draw_people`.

    Training order carries no knowledge, so the headline `dataset_bits` is the entropy of the
    *set* of biographies: log2 C(N0, N) for the distinct names plus N*log2(S0) for attributes.
    The ordered list (as written) adds log2 N!; Part 3.3's formula uses N*log2 N0 for names.
    """
    n0, s0 = lists.n_names, lists.n_attribute_values
    name_bits = log2_binomial(n0, n_people)
    attribute_bits = n_people * math.log2(s0)
    return {
        "dataset_bits": name_bits + attribute_bits,
        "name_bits": name_bits,
        "attribute_bits": attribute_bits,
        "attribute_bits_per_person": math.log2(s0),
        "dataset_bits_ordered": name_bits + log2_factorial(n_people) + attribute_bits,
        "part33_max_bits": n_people * (math.log2(n0) + math.log2(s0)),
    }


def validate(n_people: int, seed: int, mode: str, lists: BioLists, prefix: str = "") -> None:
    """One-line UserError for impossible parameters (`prefix` locates the keys)."""
    for key, value in (("people", n_people), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            fail(prefix + key, f"must be an integer, got {value!r}")
    if n_people < 1:
        fail(prefix + "people", f"must be >= 1, got {n_people}")
    if n_people > lists.n_names:
        fail(prefix + "people", f"{n_people} people but only {lists.n_names} unique names (first x middle x last)")
    if seed < 0:
        fail(prefix + "seed", f"must be >= 0, got {seed}")
    if mode not in MODES:
        fail(prefix + "mode", f"must be one of {', '.join(MODES)}, got {mode!r}")


def draw_people(lists: BioLists, n_people: int, seed: int) -> dict[str, np.ndarray]:
    """Indices into the lists for each person; names unique, attributes IID uniform."""
    rng = np.random.default_rng([seed, _PEOPLE_STREAM])
    n_first, n_middle, n_last = (lists.size(k) for k in ("first_names", "middle_names", "last_names"))
    name = rng.choice(lists.n_names, size=n_people, replace=False)
    people = {
        "first": name // (n_middle * n_last),
        "middle": (name // n_last) % n_middle,
        "last": name % n_last,
    }
    for key, size in lists.attribute_sizes.items():
        people[key] = rng.integers(0, size, size=n_people, dtype=np.int64)
    return people


def people_records(lists: BioLists, people: dict[str, np.ndarray]) -> list[dict]:
    raw = lists.raw
    days, (y0, _) = raw["days"], raw["years"]
    records = []
    for i in range(len(people["first"])):
        idx = {k: int(v[i]) for k, v in people.items()}
        employer, employer_city = raw["employers"][idx["employer"]]
        records.append({
            "id": i,
            "name": " ".join((raw["first_names"][idx["first"]], raw["middle_names"][idx["middle"]], raw["last_names"][idx["last"]])),
            "pronoun": raw["pronouns"][idx["gender"]],
            "birth_date": f"{raw['months'][idx['month']]} {days[idx['day']]}, {int(y0) + idx['year']}",
            "birth_city": raw["cities"][idx["birth_city"]],
            "university": raw["universities"][idx["university"]],
            "major": raw["majors"][idx["major"]],
            "employer": employer,
            "employer_city": employer_city,
            "index": idx,
        })
    return records


def render(lists: BioLists, people: dict[str, np.ndarray], templates: np.ndarray, orders: np.ndarray) -> BioRendering:
    """Render every person with the given template choice [N, 6] and sentence order [N, 6]."""
    ids = lists.ids
    n = len(people["first"])
    slot_tokens = {
        "{month}": ids["months"][people["month"]],
        "{day}": ids["days"][people["day"]],
        "{year}": ids["years"][people["year"]],
        "{city}": ids["cities"][people["birth_city"]],
        "{university}": ids["universities"][people["university"]],
        "{major}": ids["majors"][people["major"]],
        "{employer}": ids["employers"][people["employer"]],
        "{employer_city}": ids["cities"][lists.employer_city[people["employer"]]],
    }
    slot_tokens = {k: v.tolist() for k, v in slot_tokens.items()}
    names = np.stack([ids["first_names"][people["first"]], ids["middle_names"][people["middle"]], ids["last_names"][people["last"]]], 1).tolist()
    pronouns = ids["pronouns"][people["gender"]].tolist()
    compiled = [lists.templates[a] for a in ATTRIBUTES]
    templates, orders = templates.tolist(), orders.tolist()
    tokens: list[int] = []
    bits: list[int] = []  # NAME_BIT / VALUE_BIT per token
    index = [0]
    for i in range(n):
        tokens.append(BOS_ID)
        bits.append(0)
        for position, attr in enumerate(orders[i]):
            for item in compiled[attr][templates[i][attr]]:
                if item == SUBJECT:
                    if position == 0:
                        tokens.extend(names[i])
                        bits.extend((NAME_BIT,) * 3)
                    else:
                        tokens.append(pronouns[i])
                        bits.append(VALUE_BIT if position == 1 else 0)  # the gender bit appears once
                elif isinstance(item, str):
                    tokens.append(slot_tokens[item][i])
                    bits.append(VALUE_BIT)
                else:
                    tokens.append(item)
                    bits.append(0)
        tokens.append(EOS_ID)
        bits.append(0)
        index.append(len(tokens))
    bits_array = np.array(bits, dtype=np.uint8)
    return BioRendering(
        np.array(tokens, dtype=np.int64),
        np.array(index, dtype=np.int64),
        (bits_array & NAME_BIT) > 0,
        (bits_array & VALUE_BIT) > 0,
    )


def fixed_rendering(lists: BioLists, people: dict[str, np.ndarray], seed: int) -> BioRendering:
    n = len(people["first"])
    rng = np.random.default_rng([seed, _FIXED_STREAM])
    templates = np.stack([rng.integers(0, len(lists.templates[a]), size=n) for a in ATTRIBUTES], 1)
    orders = np.broadcast_to(np.arange(len(ATTRIBUTES)), (n, len(ATTRIBUTES)))
    return render(lists, people, templates, orders)


def fresh_rendering(lists: BioLists, people: dict[str, np.ndarray], seed: int, epoch: int) -> BioRendering:
    n = len(people["first"])
    rng = np.random.default_rng([seed, _FRESH_STREAM, epoch])
    templates = np.stack([rng.integers(0, len(lists.templates[a]), size=n) for a in ATTRIBUTES], 1)
    orders = rng.permuted(np.broadcast_to(np.arange(len(ATTRIBUTES)), (n, len(ATTRIBUTES))), axis=1)
    return render(lists, people, templates, orders)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def make_biographies(n_people: int, seed: int, out: str | Path, mode: str = "fixed", lists_path: str | Path = LISTS_FILE) -> Path:
    """Draw `n_people` people, write the fixed rendering as a token set plus people.jsonl,
    masks.npy (bit 0 name, bit 1 value), bio_lists.json and tokenizer.json. Returns `out`."""
    lists = BioLists.load(lists_path)
    validate(n_people, seed, mode, lists)
    check_replaceable(out)
    people = draw_people(lists, n_people, seed)
    rendering = fixed_rendering(lists, people, seed)
    masks = rendering.name_mask.astype(np.uint8) * NAME_BIT + rendering.value_mask.astype(np.uint8) * VALUE_BIT
    records = people_records(lists, people)
    meta = {
        "generator": GENERATOR,
        "params": {"people": int(n_people), "seed": int(seed), "mode": mode},
        "n_names": lists.n_names,
        "n_attribute_values": lists.n_attribute_values,
        "list_sizes": {k: len(v) for k, v in lists.ids.items()},
        "attribute_sizes": lists.attribute_sizes,
        **dataset_entropy(lists, n_people),
    }
    extra = {
        PEOPLE_NAME: "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode(),
        MASKS_NAME: _npy_bytes(masks),
        LISTS_NAME: json.dumps(lists.raw, sort_keys=True).encode(),
    }
    return write_token_set(out, rendering.tokens, rendering.index, len(lists.vocab), meta, lists.tokenizer(), extra)


class BiographyRenderer:
    """Renders the people of a biography directory afresh for each exposure (the fresh mode)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.token_set = TokenSet.open(self.path)
        if self.token_set.meta.get("generator") != GENERATOR:
            fail(str(self.path / "meta.json"), f"not a biography set (generator {self.token_set.meta.get('generator')!r})")
        self.lists = BioLists.load(self.path / LISTS_NAME)
        people_file = self.path / PEOPLE_NAME
        if not people_file.is_file():
            fail(str(people_file), "missing people file")
        keys = ("first", "middle", "last", *self.lists.attribute_sizes)
        columns: dict[str, list[int]] = {k: [] for k in keys}
        with people_file.open() as handle:
            for number, line in enumerate(handle, 1):
                try:
                    index = json.loads(line)["index"]
                    for k in keys:
                        columns[k].append(int(index[k]))
                except (ValueError, KeyError, TypeError):
                    fail(f"{people_file}:{number}", "malformed person record")
        self.people = {k: np.array(v, dtype=np.int64) for k, v in columns.items()}
        if len(self.people["first"]) != len(self.token_set):
            fail(str(people_file), f"{len(self.people['first'])} people but {len(self.token_set)} biographies in tokens.npy")
        self.seed = int(self.token_set.meta["params"]["seed"])
        self.mode = self.token_set.meta["params"]["mode"]

    def __len__(self) -> int:
        return len(self.people["first"])

    @property
    def vocab_size(self) -> int:
        return len(self.lists.vocab)

    def render(self, epoch: int, seed: int | None = None) -> BioRendering:
        """A fresh rendering (templates + sentence order), deterministic in (seed, epoch);
        `seed` defaults to the dataset's seed."""
        seed = self.seed if seed is None else seed
        for key, value in (("epoch", epoch), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                fail(key, f"must be an integer >= 0, got {value!r}")
        return fresh_rendering(self.lists, self.people, seed, epoch)

    def fixed(self) -> BioRendering:
        """The stored fixed rendering (the token set) with its masks."""
        return read_fixed_rendering(self.token_set)


def read_fixed_rendering(token_set: TokenSet) -> BioRendering:
    masks_file = token_set.path / MASKS_NAME
    if not masks_file.is_file():
        fail(str(masks_file), "missing masks file (not a biography set?)")
    masks = np.load(masks_file)
    if masks.shape != token_set.tokens.shape:
        fail(str(masks_file), "does not match tokens.npy (truncated or from another run)")
    return BioRendering(np.asarray(token_set.tokens, dtype=np.int64), np.asarray(token_set.index), (masks & NAME_BIT) > 0, (masks & VALUE_BIT) > 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vld.data.knowledge.biographies", description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, required=True, help="number of people N (names are unique)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", default="fixed", help="fixed (one rendering) or fresh (re-rendered each exposure)")
    parser.add_argument("--out", required=True, help="output directory (a token set)")
    args = parser.parse_args(argv)
    path = make_biographies(args.people, args.seed, args.out, mode=args.mode)
    meta = json.loads((Path(path) / "meta.json").read_text())
    print(f"wrote {path}: {args.people} people, {meta['n_tokens']} tokens, {meta['dataset_bits']:.1f} bits ({args.mode} mode)")
    return 0


if __name__ == "__main__":
    run_cli(main)
