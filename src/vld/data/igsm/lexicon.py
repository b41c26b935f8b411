"""The lexicon: hierarchies of four category levels, each level with sub-categories of item names.

File format (JSON), also what a user writes to judge iGSM text made with another lexicon:

    {"format": "vld-igsm-lexicon", "version": 1,
     "hierarchies": [{"name": "market",
                      "levels": [{"categories": [{"name": "Bakery", "items": ["Golden Crust", ...]}, ...]},
                                 ...]}]}

Levels run from the top of a hierarchy (level 0) down. Item names never contain "."
(the solution parser splits on ". "); they may contain "'s" and " and ", so text is parsed
against the lexicon, never by splitting on "'s".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from vld.data.tokens import read_json
from vld.errors import UserError, fail

DEFAULT_PATH = Path(__file__).with_name("lexicon.json")
FORMAT = "vld-igsm-lexicon"


@dataclass(eq=False)  # identity hash: the judge caches parsed problems per lexicon
class Lexicon:
    """hierarchies[h] = (name, levels); levels[l] = list of (category name, item names)."""

    hierarchies: list[tuple[str, list[list[tuple[str, list[str]]]]]]
    source: str = "builtin"
    # judge lookups, built once
    names: frozenset = field(init=False, repr=False)
    categories: frozenset = field(init=False, repr=False)
    categories_of: dict = field(init=False, repr=False)
    levels_of: dict = field(init=False, repr=False)  # category -> {(hierarchy, level)}
    longest: int = field(init=False, repr=False)  # characters of the longest name or category

    def __post_init__(self):
        cats_of: dict[str, set[str]] = {}
        cats = set()
        levels_of: dict[str, set] = {}
        for h, (_, levels) in enumerate(self.hierarchies):
            for lv, level in enumerate(levels):
                for cat, items in level:
                    cats.add(cat)
                    levels_of.setdefault(cat, set()).add((h, lv))
                    for item in items:
                        cats_of.setdefault(item, set()).add(cat)
        self.names = frozenset(cats_of)
        self.categories = frozenset(cats)
        self.categories_of = {k: frozenset(v) for k, v in cats_of.items()}
        self.levels_of = {k: frozenset(v) for k, v in levels_of.items()}
        self.longest = max(map(len, self.names | self.categories), default=0)

    # ---- loading and saving -------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None) -> "Lexicon":
        """Load a lexicon file (or the lexicon.json inside a data directory); None = builtin."""
        if path is None:
            return _builtin()
        path, data = read_json(path, "lexicon", name_in_dir="lexicon.json")
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data, where: str = "lexicon") -> "Lexicon":
        if not isinstance(data, dict) or not isinstance(data.get("hierarchies"), list) or not data["hierarchies"]:
            fail(where, "not a lexicon (expected a 'hierarchies' list)")
        hierarchies = []
        for h, hier in enumerate(data["hierarchies"]):
            loc = f"{where}: hierarchies[{h}]"
            if not isinstance(hier, dict) or not isinstance(hier.get("levels"), list) or not hier["levels"]:
                fail(loc, "needs a non-empty 'levels' list")
            levels = []
            for lv, level in enumerate(hier["levels"]):
                cats = level.get("categories") if isinstance(level, dict) else None
                if not isinstance(cats, list) or not cats:
                    fail(f"{loc}.levels[{lv}]", "needs a non-empty 'categories' list")
                entries = []
                for cat in cats:
                    name, items = (cat.get("name"), cat.get("items")) if isinstance(cat, dict) else (None, None)
                    if not isinstance(name, str) or not isinstance(items, list) or len(items) < 2:
                        fail(f"{loc}.levels[{lv}]", "each category needs a 'name' and at least 2 'items'")
                    for item in items:
                        if not isinstance(item, str) or not item.strip() or "." in item or item != item.strip():
                            fail(f"{loc}.levels[{lv}].{name}", f"bad item name {item!r} (no '.', no outer spaces)")

                    entries.append((name, list(items)))
                levels.append(entries)
            hierarchies.append((str(hier.get("name", f"h{h}")), levels))
        return cls(hierarchies, where)

    def check_unique(self) -> None:
        """Generation needs names unique within a hierarchy (else two items of a problem could
        read alike); the judge accepts any lexicon."""
        for name, levels in self.hierarchies:
            seen: set[str] = set()
            for level in levels:
                for cat, items in level:
                    for item in items:
                        if item in seen:
                            raise UserError(f"{self.source}: hierarchy {name}, category {cat}: item {item!r} repeated within the hierarchy")
                        seen.add(item)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": 1,
            "hierarchies": [
                {"name": name, "levels": [{"categories": [{"name": c, "items": list(items)} for c, items in level]} for level in levels]}
                for name, levels in self.hierarchies
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    def reduced(self, names_per_category: int | None = None, n_hierarchies: int | None = None) -> "Lexicon":
        """A smaller lexicon: the first `n_hierarchies`, the first names of each category."""
        hier = self.hierarchies[:n_hierarchies] if n_hierarchies else self.hierarchies
        if names_per_category:
            hier = [(n, [[(c, items[:names_per_category]) for c, items in level] for level in levels]) for n, levels in hier]
        return Lexicon([(n, [[(c, list(i)) for c, i in level] for level in levels]) for n, levels in hier], self.source)

    # ---- facts used by generator and judge ----------------------------------------------
    @property
    def depth(self) -> int:
        return max(len(levels) for _, levels in self.hierarchies)

    @property
    def min_items(self) -> int:
        return min(len(items) for _, levels in self.hierarchies for level in levels for _, items in level)

    def words(self) -> set[str]:
        """Every name and category name (for the tokenizer's closed vocabulary)."""
        return set(self.names) | set(self.categories)

    def split_pair(self, text: str) -> tuple[str, str] | None:
        """Read "A's B" (A an item, B an item or a category) against the lexicon."""
        return _split_pair(self, text)


def _split_pair(lex: Lexicon, text: str):
    """Only the "'s " within the longest name's reach can end A, so the scan is bounded."""
    if len(text) > 2 * lex.longest + 3:
        return None
    start = 0
    names, cats = lex.names, lex.categories
    while True:
        i = text.find("'s ", start)
        if i < 0 or i > lex.longest:
            return None
        a, b = text[:i], text[i + 3 :]
        if a in names and (b in names or b in cats):
            return a, b
        start = i + 1


@lru_cache(maxsize=1)
def _builtin() -> Lexicon:
    return Lexicon.load(DEFAULT_PATH)
