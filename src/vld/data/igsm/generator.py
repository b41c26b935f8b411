"""The iGSM generator: structure graph, dependency graph built for a drawn op, text and solution.

A problem is built for the op it must have, never by rejecting at random on op:

1. structure: one hierarchy, d consecutive levels, a layer of w items per level, e edges
   between consecutive layers (every lower item has a parent); each edge (A, B) is an
   instance parameter "each A's B". Abstract parameters "each A's Category" are implied.
   d and the widths are drawn from an op-dependent softmax, as the reference does.
2. necessary graph: parameters are defined one after another, each from earlier ones, with an
   op budget, of which a drawn part n goes to abstract parameters first (planned, smallest
   layer gap first, their support edges defined early). Every option (constant, copy, sum, difference, "more than", "times as much as",
   abstract references) is checked against invariants that keep the budget reachable and every
   defined parameter an ancestor of the query, so the last parameter closes the budget exactly.
3. distractors: every remaining edge gets a sentence depending on earlier parameters.
4. text: problem sentences (permuted), question, the detailed solution and its shape hash.

Op of a parameter = max(1, predecessors - 1), the random-number node counting as a predecessor;
in the solution it equals max(1, binary operations written in the step). The number of
symbols a solution uses also equals its op (one per step plus one per temporary).

The template split hashes the solution's shape; a problem whose bin is not in the split is
rebuilt (same op), which keeps the op law intact.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache

from vld.data.igsm.lexicon import Lexicon
from vld.errors import fail

MOD = 23
N_BINS = 23
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_SYMBOLS = len(LETTERS)
ABS = 1 << 16  # abstract parameter refs: ABS + (item << 3) + layer; instance refs are edge ids

# Definition options: (kind, parameter predecessors r, op cost, weight). Kinds:
#  c constant | s sum (r=1: copy) | d difference | m/t K more than / K times as much as a
#  single parameter or a sum | M/T the same around a difference.
OPTIONS = (
    ("c", 0, 1, 3.0),
    ("s", 1, 1, 1.6),
    ("m", 1, 1, 1.5),
    ("t", 1, 1, 1.5),
    ("s", 2, 1, 1.5),
    ("d", 2, 1, 0.9),
    ("m", 2, 2, 0.25),
    ("t", 2, 2, 0.25),
    ("M", 2, 2, 0.1),
    ("T", 2, 2, 0.1),
    ("s", 3, 2, 0.3),
    ("m", 3, 3, 0.08),
    ("t", 3, 3, 0.08),
    ("s", 4, 3, 0.08),
)
OPTION_TOTAL = sum(o[3] for o in OPTIONS)
# Abstract parameters (calibrated to the reference's shares, docs/igsm.md): the chance that the
# question asks for one (when one fits the abstract op budget), that a definition reads one while
# the budget is not spent / once it is, and that a distractor reads one.
P_ABSTRACT_QUERY = 0.35  # + P_ABSTRACT_QUERY_GROWTH * (op - 1) / (max_edge - 1), at most 1
P_ABSTRACT_QUERY_GROWTH = 0.25
P_ABSTRACT_WANTED = 0.6
P_ABSTRACT_EXTRA = 0.1
P_ABSTRACT_DISTRACTOR = 0.5
MAX_BIN_MISSES = 2000  # consecutive template-bin misses before a split is declared impossible


@dataclass(frozen=True)
class IgsmConfig:
    """Every knob of the generator. `med` and `hard` are presets of it."""

    max_op: int = 15
    max_edge: int = 20
    levels: tuple[int, ...] = (2, 3, 4)  # allowed numbers of layers d
    min_width: int = 2  # w0: fewest items in a layer
    max_width: int = 4  # w1: most items in a layer
    format: str = "pq"  # pq: problem then question; qp: question first
    perm_level: int = 5  # 5: full shuffle; 0..4: a random topological order, sentences moved by <= level; 6: as built
    reask: bool = False
    train_bins: int = 16  # template bins 0..train_bins-1 are train, the rest test
    lexicon_path: str | None = None  # None: the builtin lexicon
    lexicon_size: int | None = None  # names kept per sub-category (None: all)
    hierarchies: int | None = None  # hierarchies kept (None: all)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, values, where: str = "igsm") -> "IgsmConfig":
        """A validated config from a mapping: `preset: med|hard` (optional; default: the
        dataclass defaults) plus any field. Unknown keys and bad values fail with one line
        naming `<where>.<key>`; lists become tuples."""
        if values is None:
            values = {}
        if not isinstance(values, dict):
            fail(where, f"must be a mapping of generator settings, not {type(values).__name__}")
        values = dict(values)
        preset = values.pop("preset", None)
        if preset is not None and preset not in PRESETS:
            fail(f"{where}.preset", f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                fail(f"{where}.{key}", f"unknown key (known: preset, {', '.join(known)})")
        for key, value in values.items():
            if isinstance(value, list):
                values[key] = tuple(value)
        base = PRESETS[preset] if preset is not None else cls()
        return replace(base, **values).validate(where)

    def lexicon(self) -> Lexicon:
        """The lexicon this config names, read once per process (cached by path and reduction)."""
        return _lexicon(self.lexicon_path, self.lexicon_size, self.hierarchies)

    def max_edges_possible(self) -> int:
        return min(self.max_edge, (max(self.levels) - 1) * self.max_width**2)

    def max_feasible_op(self) -> int:
        """Largest op the construction reaches: it needs ceil(op/2)+1 edges and op symbols."""
        return max(0, min(MAX_SYMBOLS, 2 * (self.max_edges_possible() - 1)))

    def validate(self, where: str = "igsm") -> "IgsmConfig":
        def need(ok, key, what):
            if not ok:
                fail(f"{where}.{key}", what)

        for key in ("max_op", "max_edge", "min_width", "max_width", "perm_level", "train_bins"):
            need(isinstance(getattr(self, key), int) and not isinstance(getattr(self, key), bool), key, "must be an integer")
        need(self.levels and all(isinstance(x, int) and 2 <= x <= 4 for x in self.levels), "levels", "values must be in 2..4")
        need(2 <= self.min_width <= self.max_width <= 4, "min_width", "need 2 <= min_width <= max_width <= 4")
        need(self.format in ("pq", "qp"), "format", f"must be pq or qp, not {self.format!r}")
        need(0 <= self.perm_level <= 6, "perm_level", "must be in 0..6")
        need(1 <= self.train_bins < N_BINS, "train_bins", f"must be in 1..{N_BINS - 1}")
        need(self.lexicon_size is None or (isinstance(self.lexicon_size, int) and self.lexicon_size >= self.max_width), "lexicon_size", f"must be >= max_width ({self.max_width})")
        need(self.hierarchies is None or (isinstance(self.hierarchies, int) and self.hierarchies >= 1), "hierarchies", "must be >= 1")
        need(self.max_edge >= (min(self.levels) - 1) * self.min_width + 2, "max_edge", f"too small for {min(self.levels)} layers of width {self.min_width}")
        need(1 <= self.max_op <= self.max_feasible_op(), "max_op", f"must be in 1..{self.max_feasible_op()} (what max_edge={self.max_edge} allows)")
        lex = self.lexicon()
        lex.check_unique()
        need(max(len(levels) for _, levels in lex.hierarchies) >= max(self.levels), "levels", f"lexicon has fewer than {max(self.levels)} levels")
        need(lex.min_items >= self.max_width, "max_width", f"lexicon categories have only {lex.min_items} names")
        return self

    def check_op(self, op, where: str = "op") -> None:
        if not isinstance(op, int) or isinstance(op, bool) or not 1 <= op <= self.max_feasible_op():
            fail(where, f"{op} is not in 1..{self.max_feasible_op()} (the most that max_edge={self.max_edge} allows)")


@lru_cache(maxsize=16)
def _lexicon(path, size, hierarchies) -> Lexicon:
    lex = Lexicon.load(path)
    if size or hierarchies:
        lex = lex.reduced(size, hierarchies)
    return lex


PRESETS = {
    "med": IgsmConfig(max_op=15, max_edge=20),
    "hard": IgsmConfig(max_op=21, max_edge=28),
}
TEST_OPS = {"med": (15, 20, 21, 22, 23), "hard": (21, 28, 29, 30, 31, 32)}


def light_op(rng: random.Random, max_op: int) -> int:
    """op = min(U{1..max_op}, U{1..max_op}): P(op = k) = (2 (max_op - k) + 1) / max_op^2."""
    r = rng.random
    return min(int(r() * max_op), int(r() * max_op)) + 1


def light_law(max_op: int) -> list[float]:
    return [(2 * (max_op - k) + 1) / max_op**2 for k in range(1, max_op + 1)]


class Problem:
    """One generated problem and its graphs (kept for tests and reask)."""

    __slots__ = (
        "d", "names", "cats", "item_layer", "edges", "children", "pair", "defs", "vals", "order",
        "query", "abs_info", "all_abs", "op", "solution", "shape", "text", "question", "sentences",
        "answer", "template_bin", "hierarchy", "top", "widths", "base_query", "start_order", "stated_order",
    )

    def __init__(self):
        self.abs_info = {}
        self.all_abs = None
        self.defs = {}
        self.vals = {}


class Generator:
    """Builds problems for a config; `make(rng, op, split)` returns a Problem."""

    def __init__(self, cfg: IgsmConfig, lexicon: Lexicon | None = None):
        self.cfg = cfg
        self.lexicon = lexicon or cfg.lexicon()
        self.tables = [levels for _, levels in self.lexicon.hierarchies]
        self._shape_laws: dict = {}
        self._feasible_cache: dict = {}
        self.restarts = 0  # structural dead ends (rare), for the benchmark and tests
        self.bin_rejects = 0

    # ---- 1. structure ----------------------------------------------------------------------
    def _shape_law(self, op: int):
        """Cumulative weights of the depth d and of a width draw for a problem of `op`: the
        softmax over {2, 3, 4} of -(r - c)^2, c = 0.2, 0.5, 0.8, r = (op - 1) / (max_edge - 1),
        restricted to the allowed depths and widths (so deep, wide problems grow with op)."""
        law = self._shape_laws.get(op)
        if law is None:
            cfg = self.cfg
            r = (op - 1) / (cfg.max_edge - 1)
            weight = {x: math.exp(-((r - c) ** 2)) for x, c in zip((2, 3, 4), (0.2, 0.5, 0.8))}
            law = self._shape_laws[op] = (
                _cumulative([(d, weight[d]) for d in sorted(set(cfg.levels))]),
                _cumulative([(w, weight[w]) for w in range(cfg.min_width, cfg.max_width + 1)]),
            )
        return law

    def _structure(self, rng: random.Random, e_need: int, op: int) -> Problem:
        cfg = self.cfg
        rand = rng.random
        depth_law, width_law = self._shape_law(op)
        while True:
            d = _draw(depth_law, rand)
            h = int(rand() * len(self.tables))
            levels = self.tables[h]
            if len(levels) < d:
                continue
            a, b = _draw(width_law, rand), _draw(width_law, rand)
            w0, w1 = (a, b) if a <= b else (b, a)
            widths = [w0 + int(rand() * (w1 - w0 + 1)) for _ in range(d)]
            lo = max(sum(widths[1:]), e_need)
            hi = min(cfg.max_edge, sum(widths[i] * widths[i + 1] for i in range(d - 1)))
            if lo <= hi:
                break
        # e = the smaller of two draws of U{(d-1) w0 .. max_edge}, clipped to what the layers allow
        base = min((d - 1) * w0, cfg.max_edge)
        span = cfg.max_edge - base + 1
        e = base + min(int(rand() * span), int(rand() * span))
        e = lo if e < lo else (hi if e > hi else e)
        top = int(rand() * (len(levels) - d + 1))
        P = Problem()
        P.d = d
        P.hierarchy = h
        P.top = top
        P.widths = widths
        item_layer, layers = [], []
        for i in range(d):
            layers.append(list(range(len(item_layer), len(item_layer) + widths[i])))
            item_layer.extend([i] * widths[i])
        mandatory, rest = [], []
        for i in range(d - 1):
            parents = layers[i]
            for c in layers[i + 1]:
                p = parents[int(rand() * len(parents))]
                for q in parents:
                    (mandatory if q == p else rest).append((q, c))
        edges = mandatory + _sample(rest, rng.random, e - len(mandatory))
        edges.sort()
        children = [[] for _ in item_layer]
        for k, (p, c) in enumerate(edges):
            children[p].append((c, k))
        P.item_layer, P.edges, P.children = item_layer, edges, children
        return P

    def _name(self, P: Problem, rng: random.Random) -> None:
        """Draw the layers' sub-categories and item names (only for problems that are kept)."""
        rand = rng.random
        levels = self.tables[P.hierarchy]
        names, cats = [], []
        for i, w in enumerate(P.widths):
            options = levels[P.top + i]
            cat, pool = options[int(rand() * len(options))]
            cats.append(cat)
            names.extend(_sample(pool, rand, w))
        P.names, P.cats = names, cats
        P.pair = [f"{names[p]}'s {names[c]}" for p, c in P.edges]

    # ---- abstract parameters -----------------------------------------------------------
    @staticmethod
    def abstract(P: Problem, ref: int):
        """(support edge mask, own op cost, sub-abstract refs) of an abstract parameter."""
        info = P.abs_info.get(ref)
        if info is None:
            a, j = (ref - ABS) >> 3, ref & 7
            ch = P.children[a]
            nxt = j == P.item_layer[a] + 1
            mask, subs = 0, []
            for c, k in ch:
                mask |= 1 << k
                if not nxt:
                    s = ABS + (c << 3) + j
                    subs.append(s)
                    mask |= Generator.abstract(P, s)[0]
            n = len(ch)
            cost = max(1, n - 1) if nxt else max(1, 2 * n - 1)
            info = P.abs_info[ref] = (mask, cost, subs)
        return info

    @staticmethod
    def closure(P: Problem, ref: int, used, out: list) -> None:
        """Append to `out` the abstract refs `ref` needs (subs first) not in `used` or `out`."""
        if ref in used or ref in out:
            return
        for s in Generator.abstract(P, ref)[2]:
            Generator.closure(P, s, used, out)
        out.append(ref)

    @staticmethod
    def abs_value(P: Problem, ref: int) -> int:
        v = P.vals.get(ref)
        if v is None:
            a, j = (ref - ABS) >> 3, ref & 7
            vals = P.vals
            total = 0
            if j == P.item_layer[a] + 1:
                for c, k in P.children[a]:
                    total += vals[k]
            else:
                for c, k in P.children[a]:
                    total += vals[k] * Generator.abs_value(P, ABS + (c << 3) + j)
            v = vals[ref] = total % MOD
        return v

    @staticmethod
    def all_abstracts(P: Problem) -> list[int]:
        if P.all_abs is None:
            P.all_abs = [ABS + (a << 3) + j for a, i in enumerate(P.item_layer) for j in range(i + 1, P.d)]
        return P.all_abs

    # ---- 2. the necessary graph, built for op T -------------------------------------------
    def _necessary(self, P: Problem, rng: random.Random, T: int) -> bool:
        rand = rng.random
        E = len(P.edges)
        defs = P.defs
        abstracts = self.all_abstracts(P)
        # the op the necessary set spends on abstract parameters: the reference's max of two draws
        n_abs = max(int(rand() * T), int(rand() * T)) + 1
        used: set[int] = set()  # abstracts in the necessary graph (their cost is counted)
        reserved: list[int] = []  # the abstract query's closure
        q = None
        spent = 0
        if abstracts and rand() < P_ABSTRACT_QUERY + P_ABSTRACT_QUERY_GROWTH * min(1.0, (T - 1) / (self.cfg.max_edge - 1)):
            cands = list(abstracts)
            _shuffle(cands, rand)
            for cand in cands:
                closure: list[int] = []
                Generator.closure(P, cand, used, closure)
                xq = sum(self.abstract(P, r)[1] for r in closure)
                mask = self.abstract(P, cand)[0]
                R = [k for k in range(E) if mask >> k & 1]
                if xq <= n_abs and xq + len(R) <= T and T - xq <= 3 * E and (R or T == xq):
                    q, reserved, spent = cand, closure, xq
                    break
        if q is None:
            R = [int(rand() * E)]
            B = T
            last_only = True
            q = R[0]
        else:
            B = T - spent
            last_only = False
        pending = set(R)
        free = [k for k in range(E) if k not in pending]
        _shuffle(free, rand)
        used.update(reserved)
        plan = self._plan(P, rand, free, used, n_abs - spent, B, (1 << q) if last_only else 0) if spent < n_abs else []
        Rl = list(R)
        _shuffle(Rl, rand)
        nd: list[int] = []  # defined refs already consumed (or sinks): free to reuse as predecessors
        dang: list[int] = []  # defined non-sink refs nothing consumes yet
        order: list[int] = []
        defined = 0
        while B > 0 or pending:
            u, F, D = len(pending), len(free), len(dang)
            n = D + len(nd)
            if last_only:
                choices = (None,)  # decided per option: the node closing the budget is the query
            elif u == 0:
                choices = (False,)
            elif F == 0:
                choices = (True,)
            else:
                first = rand() * (u + F) < u
                choices = (first, not first)
            picked = None
            cache = self._feasible_cache
            for flag in choices:
                state = (flag, B, D, n if n < 4 else 4, u, F)
                feas = cache.get(state)
                if feas is None:
                    feas = cache[state] = _feasible(*state)
                if feas[0]:
                    x = rand() * feas[1]
                    for picked in feas[0]:
                        x -= picked[1][3]
                        if x < 0:
                            break
                    break
            if picked is None:
                return False
            is_r, (kind, r, c, _) = picked
            b2 = B - c
            u2 = u - 1 if is_r else u
            use = None
            if r and b2 > 0 and rand() < (P_ABSTRACT_WANTED if spent < n_abs else P_ABSTRACT_EXTRA):
                use = self._abstract_use(P, rand, plan, used, defined, dang, nd, r, b2, u2, is_r, n_abs - spent)
            if use is not None:
                ref, closure, extra, k = use
                absorbed = self.abstract(P, ref)[0]
                nd.extend(x for x in dang if absorbed >> x & 1)
                dang[:] = [x for x in dang if not absorbed >> x & 1]
                used.update(closure)
                spent += extra
                b2 -= extra
                refs = [ref] + (_sample(nd, rand, r - 1 - k) if r - 1 > k else [])
            else:
                # consume dangling refs: enough to stay feasible, usually as many as possible
                k_min = max(0, D + (0 if is_r else 1) - b2 - u2, r - (n - D))
                k_max = r if r < D else D
                if b2 == 0:
                    k_min = D
                k = k_max if rand() < 0.6 else k_min + int(rand() * (k_max - k_min + 1))
                refs = _sample(nd, rand, r - k) if r > k else []
            for _ in range(k):  # swap-remove k random dangling refs
                j = int(rand() * len(dang))
                x = dang[j]
                dang[j] = dang[-1]
                dang.pop()
                refs.append(x)
                nd.append(x)
            if len(refs) > 1:
                _shuffle(refs, rand)
            edge = Rl.pop() if is_r else free.pop()
            if is_r:
                pending.discard(edge)
            const = 0
            if kind in "cmM":
                const = int(rand() * MOD)  # constants and "K more than": K in 0..22
            elif kind in "tT":
                const = 1 + int(rand() * (MOD - 1))
            defs[edge] = (kind, const, refs, c)
            order.append(edge)
            defined |= 1 << edge
            (nd if is_r else dang).append(edge)
            B = b2
        P.order = order
        P.query = q if not last_only else order[-1]
        return True

    def _plan(self, P: Problem, rand, free: list, taken: set, room: int, budget: int, avoid: int) -> list:
        """Abstract parameters to read, smallest layer gap first, while their op fits in `room`;
        their support edges go to the end of `free` (defined first). Returns them in that order."""
        by_gap: dict[int, list[int]] = {}
        layer = P.item_layer
        for a in self.all_abstracts(P):
            if a not in taken:
                by_gap.setdefault((a & 7) - layer[(a - ABS) >> 3], []).append(a)
        plan: list[int] = []
        seen = set(taken)
        planned = 0
        for gap in sorted(by_gap):
            cands = by_gap[gap]
            _shuffle(cands, rand)
            for a in cands:
                if room <= 0 or budget <= 1:
                    break
                mask = self.abstract(P, a)[0]
                if mask & avoid or a in seen:
                    continue
                closure: list[int] = []
                Generator.closure(P, a, seen, closure)
                extra = sum(self.abstract(P, x)[1] for x in closure)
                edges = (mask & ~planned).bit_count()
                if extra > room or edges + extra + 1 > budget:
                    continue
                plan.append(a)
                seen.update(closure)
                planned |= mask
                room -= extra
                budget -= edges + extra
        if planned:
            first = [k for k in free if planned >> k & 1]
            free[:] = [k for k in free if not planned >> k & 1] + first[::-1]
        return plan

    def _abstract_use(self, P, rand, plan, used, defined, dang, nd, r, b2, u2, is_r, room):
        """An available abstract parameter for one slot of a definition with r predecessors, and
        how many dangling refs the other slots take, keeping the construction completable:
        (ref, its new closure, the op it adds, k), or None."""
        cands = [a for a in plan if a not in used and not (self.abstract(P, a)[0] & ~defined)]
        if not cands:
            cands = [a for a in self.all_abstracts(P) if not (self.abstract(P, a)[0] & ~defined)]
            if not cands:
                return None
            _shuffle(cands, rand)
        for a in cands:
            closure: list[int] = []
            Generator.closure(P, a, used, closure)
            extra = sum(self.abstract(P, x)[1] for x in closure)
            if extra > b2 or (closure and a not in plan and extra > room > 0):
                continue
            mask = self.abstract(P, a)[0]
            absorbed = sum(1 for x in dang if mask >> x & 1)
            D2, free_nd = len(dang) - absorbed, len(nd) + absorbed
            b3 = b2 - extra
            ks = []
            for k in range(min(r - 1, D2) + 1):
                d3 = D2 - k + (0 if is_r else 1)
                if r - 1 - k > free_nd or b3 < u2 or d3 > b3 + u2 or ((b3 == 0 or u2 == 0) and (b3 or d3 or u2)):
                    continue
                ks.append(k)
            if ks:
                k = ks[-1] if rand() < 0.6 else ks[int(rand() * len(ks))]
                return a, closure, extra, k
        return None

    def _values(self, P: Problem) -> None:
        """Values of the necessary graph, in order (deferred until the template bin is known)."""
        vals, defs, abs_value = P.vals, P.defs, self.abs_value
        for ref in P.order:
            kind, const, refs, _ = defs[ref]
            vals[ref] = _evaluate(kind, const, [vals[p] if p < ABS else abs_value(P, p) for p in refs])
        if P.query >= ABS:
            abs_value(P, P.query)

    # ---- 3. distractors ------------------------------------------------------------------
    def _distractors(self, P: Problem, rng: random.Random) -> None:
        rand = rng.random
        order, defs, vals = P.order, P.defs, P.vals
        rest = [k for k in range(len(P.edges)) if k not in defs]
        _shuffle(rest, rng.random)
        for edge in rest:
            pos = int(rand() * (len(order) + 1))
            n = pos
            x = rand() * OPTION_TOTAL
            for kind, r, c, w in OPTIONS:
                x -= w
                if x < 0:
                    break
            if r > n:
                kind, r, c = ("c", 0, 1) if n == 0 else ("s", min(n, 2), 1)
            refs = _sample(order[:pos], rng.random, r) if r else []
            if r and rand() < P_ABSTRACT_DISTRACTOR:
                mask = 0
                for k in order[:pos]:
                    mask |= 1 << k
                cands = [a for a in self.all_abstracts(P) if not (self.abstract(P, a)[0] & ~mask) and a not in refs]
                if cands:
                    refs[-1] = cands[int(rand() * len(cands))]
                    self.abs_value(P, refs[-1])
            const = int(rand() * MOD) if kind in "cmM" else (1 + int(rand() * (MOD - 1)) if kind in "tT" else 0)
            defs[edge] = (kind, const, refs, _cost(kind, r))
            vals[edge] = _evaluate(kind, const, [vals[p] for p in refs])
            order.insert(pos, edge)

    # ---- the necessary set of a query and its op -------------------------------------------
    def necessary(self, P: Problem, query: int) -> set[int]:
        need: set[int] = set()
        stack = [query]
        defs = P.defs
        while stack:
            ref = stack.pop()
            if ref in need:
                continue
            need.add(ref)
            if ref >= ABS:
                mask, _, subs = self.abstract(P, ref)
                stack.extend(subs)
                k = 0
                while mask:
                    if mask & 1:
                        stack.append(k)
                    mask >>= 1
                    k += 1
            else:
                stack.extend(defs[ref][2])
        return need

    def op_of(self, P: Problem, need: set[int]) -> int:
        return sum(self.abstract(P, r)[1] if r >= ABS else P.defs[r][3] for r in need)

    # ---- 4. text -------------------------------------------------------------------------
    def _solution(self, P: Problem, rng: random.Random, query: int, need: set[int], op: int, shape: str | None = None) -> None:
        """Render the detailed solution and the answer; `shape` is the solution's shape (`_shape`,
        computed once by `make` for the template split)."""
        letters = _sample(LETTERS, rng.random, op)
        vals, defs, names, cats, pair = P.vals, P.defs, P.names, P.cats, P.pair
        sym: dict[int, int] = {}
        steps: list[str] = []
        counter = [0]

        def new():
            i = counter[0]
            counter[0] = i + 1
            return i

        def chain(terms, op_char, target, out_t):
            """Binarise a sum/difference left to right; the last result goes to `target` (or a temp)."""
            s0, v0 = terms[0]
            last = len(terms) - 1
            for i in range(1, len(terms)):
                s1, v1 = terms[i]
                res = (v0 + v1) % MOD if op_char == "+" else ((v0 - v1) % MOD if op_char == "-" else (v0 * v1) % MOD)
                t = target if (i == last and target is not None) else new()
                out_t.append(f"{letters[t]} = {letters[s0]} {op_char} {letters[s1]} = {v0} {op_char} {v1} = {res}")
                s0, v0 = t, res
            return s0, v0

        def emit_abs(ref):
            if ref in sym:
                return
            mask, _, subs = self.abstract(P, ref)
            for s in subs:
                emit_abs(s)
            a, j = (ref - ABS) >> 3, ref & 7
            x = sym[ref] = new()
            ch = P.children[a]
            at = []
            if not ch:
                at.append(f"{letters[x]} = 0")
            elif not subs:
                terms = [(sym[k], vals[k]) for _, k in ch]
                if len(terms) == 1:
                    at.append(f"{letters[x]} = {letters[terms[0][0]]} = {terms[0][1]}")
                else:
                    chain(terms, "+", x, at)
            else:
                prods = []
                for c, k in ch:
                    s = ABS + (c << 3) + j
                    pair_terms = [(sym[k], vals[k]), (sym[s], vals[s])]
                    prods.append(chain(pair_terms, "*", x if len(ch) == 1 else None, at))
                if len(ch) > 1:
                    chain(prods, "+", x, at)
            at[-1] = "so " + at[-1]
            steps.append(f"Define {names[a]}'s {cats[j]} as {letters[x]}; " + "; ".join(at))

        for ref in P.order:
            if ref not in need:
                continue
            kind, const, refs, _ = defs[ref]
            for p in refs:
                if p >= ABS:
                    emit_abs(p)
            x = sym[ref] = new()
            at = []
            L = letters
            if kind == "c":
                at.append(f"{L[x]} = {const}")
            else:
                terms = [(sym[p], vals[p]) for p in refs]
                if kind == "s" and len(terms) == 1:
                    at.append(f"{L[x]} = {L[terms[0][0]]} = {terms[0][1]}")
                elif kind == "s" or kind == "d":
                    chain(terms, "+" if kind == "s" else "-", x, at)
                else:
                    if len(terms) == 1:
                        s, v = terms[0]
                    else:
                        s, v = chain(terms, "-" if kind in "MT" else "+", None, at)
                    o = "+" if kind in "mM" else "*"
                    res = (const + v) % MOD if o == "+" else (const * v) % MOD
                    at.append(f"{L[x]} = {const} {o} {L[s]} = {const} {o} {v} = {res}")
            at[-1] = "so " + at[-1]
            steps.append(f"Define {pair[ref]} as {L[x]}; " + "; ".join(at))
        if query >= ABS:
            emit_abs(query)
        P.solution = ". ".join(steps) + "."
        P.shape = shape if shape is not None else self._shape(P, query, need)
        P.template_bin = template_bin(P.shape)
        P.answer = vals[query]
        P.op = op
        if query >= ABS:
            a, j = (query - ABS) >> 3, query & 7
            P.question = f"How many {cats[j]} does {names[a]} have?"
        else:
            p, c = P.edges[query]
            P.question = f"How many {names[c]} does {names[p]} have?"
        P.query = query

    def _shape(self, P: Problem, query: int, need: set[int]) -> str:
        """The solution's shape exactly as `_solution` writes it, without values, names or letters."""
        defs = P.defs
        sym: dict[int, int] = {}
        shape: list[str] = []
        counter = [0]

        def chain(terms, op_char, target, out):
            s0 = terms[0]
            last = len(terms) - 1
            for i in range(1, len(terms)):
                if i == last and target is not None:
                    t = target
                else:
                    t = counter[0]
                    counter[0] = t + 1
                out.append(f"{t}={s0}{op_char}{terms[i]}")
                s0 = t
            return s0

        def emit_abs(ref):
            if ref in sym:
                return
            subs = self.abstract(P, ref)[2]
            for s in subs:
                emit_abs(s)
            x = sym[ref] = counter[0]
            counter[0] = x + 1
            ch = P.children[(ref - ABS) >> 3]
            ash = []
            if not ch:
                ash.append(f"{x}=k")
            elif not subs:
                if len(ch) == 1:
                    ash.append(f"{x}={sym[ch[0][1]]}")
                else:
                    chain([sym[k] for _, k in ch], "+", x, ash)
            else:
                j = ref & 7
                prods = [chain([sym[k], sym[ABS + (c << 3) + j]], "*", x if len(ch) == 1 else None, ash) for c, k in ch]
                if len(ch) > 1:
                    chain(prods, "+", x, ash)
            shape.append("D;" + ";".join(ash))

        for ref in P.order:
            if ref not in need:
                continue
            kind, const, refs, _ = defs[ref]
            for p in refs:
                if p >= ABS:
                    emit_abs(p)
            x = sym[ref] = counter[0]
            counter[0] = x + 1
            if kind == "c":
                shape.append(f"D;{x}=k")
                continue
            terms = [sym[p] for p in refs]
            ash = []
            if kind == "s" and len(terms) == 1:
                ash.append(f"{x}={terms[0]}")
            elif kind == "s" or kind == "d":
                chain(terms, "+" if kind == "s" else "-", x, ash)
            else:
                t = terms[0] if len(terms) == 1 else chain(terms, "-" if kind in "MT" else "+", None, ash)
                ash.append(f"{x}=k{'+' if kind in 'mM' else '*'}{t}")
            shape.append("D;" + ";".join(ash))
        if query >= ABS:
            emit_abs(query)
        return "|".join(shape)

    def _problem_text(self, P: Problem, rng: random.Random) -> None:
        names, cats, defs, pair = P.names, P.cats, P.defs, P.pair

        def ref_text(p):
            if p >= ABS:
                return f"each {names[(p - ABS) >> 3]}'s {cats[p & 7]}"
            return f"each {pair[p]}"

        level = self.cfg.perm_level
        if level == 6:  # the order the problem was built in, no shuffle
            start = stated = P.order
        elif level == 5:
            start = P.order
            stated = list(start)
            _shuffle(stated, rng.random)
        else:  # a random topological order, each sentence moved to key i + U{0..level}, ties at random
            start = self._random_topological(P, rng.random)
            stated = start
            if level:
                rand = rng.random
                keyed = sorted((i + int(rand() * (level + 1)), rand(), ref) for i, ref in enumerate(start))
                stated = [ref for _, _, ref in keyed]
        P.start_order, P.stated_order = start, stated
        sentences = []
        for ref in stated:
            kind, const, refs, _ = defs[ref]
            if kind == "c":
                rhs = str(const)
            else:
                parts = [ref_text(p) for p in refs]
                if len(parts) == 1:
                    inner = parts[0]
                elif kind in "dMT":
                    inner = f"the difference of {parts[0]} and {parts[1]}"
                elif len(parts) == 2:
                    inner = f"the sum of {parts[0]} and {parts[1]}"
                else:
                    inner = "the sum of " + ", ".join(parts[:-1]) + " and " + parts[-1]
                if kind in "mM":
                    rhs = f"{const} more than {inner}"
                elif kind in "tT":
                    rhs = f"{const} times as much as {inner}"
                else:
                    rhs = inner
            sentences.append(f"The number of each {pair[ref]} equals {rhs}")
        P.sentences = sentences
        body = ". ".join(sentences) + "."
        P.text = f"{body} {P.question}" if self.cfg.format == "pq" else f"{P.question} {body}"

    def _random_topological(self, P: Problem, rand) -> list[int]:
        """A uniformly drawn ready sentence at each step: a random topological order of the
        parameters (an abstract reference waits for every edge it sums over)."""
        defs, abstract = P.defs, self.abstract
        need = {}
        for ref in P.order:
            m = 0
            for p in defs[ref][2]:
                m |= abstract(P, p)[0] if p >= ABS else 1 << p
            need[ref] = m
        done, out = 0, []
        left = list(P.order)
        while left:
            ready = [i for i, ref in enumerate(left) if not need[ref] & ~done]
            i = ready[int(rand() * len(ready))]
            ref = left.pop(i)
            out.append(ref)
            done |= 1 << ref
        return out

    # ---- one problem -------------------------------------------------------------------
    def make(self, rng: random.Random, op: int, split: str | None = "train") -> Problem:
        """A problem of exactly `op` (the base problem's op when reasking), in `split`'s bins."""
        cfg = self.cfg
        e_need = (op + 1) // 2 + 1
        lo_bin, hi_bin = (0, cfg.train_bins) if split == "train" else ((cfg.train_bins, N_BINS) if split == "test" else (0, N_BINS))
        misses = 0
        while True:
            if misses > MAX_BIN_MISSES:
                fail("split", f"no solution template of op {op} falls in the {split} bins {lo_bin}..{hi_bin - 1} after {misses} tries")
            P = self._structure(rng, e_need, op)
            if not self._necessary(P, rng, op):
                self.restarts += 1
                continue
            if cfg.reask:
                self._values(P)
                self._distractors(P, rng)
                query = self._reask_query(P, rng)
                if query is None:
                    self.restarts += 1
                    continue
            else:
                query = P.query
            P.base_query = P.query  # the question the problem was built for (differs when reasking)
            need = self.necessary(P, query)
            shape = self._shape(P, query, need)
            if lo_bin <= template_bin(shape) < hi_bin:
                break
            self.bin_rejects += 1
            misses += 1
        if not cfg.reask:
            self._values(P)
            self._distractors(P, rng)
        if query >= ABS:
            self.abs_value(P, query)
        self._name(P, rng)
        self._solution(P, rng, query, need, self.op_of(P, need), shape)
        self._problem_text(P, rng)
        return P

    def _reask_query(self, P: Problem, rng: random.Random):
        """A new question among all parameters, abstract ones included. Most parameters of a
        problem need far fewer operations than its query (a third are constants), so the draw
        is among those needing at least half the base problem's op, keeping a reask set's op
        near its base set's; failing any, the one needing the most."""
        base_op = self.op_of(P, self.necessary(P, P.query))
        cands = [k for k in range(len(P.edges)) if k != P.query] + [a for a in self.all_abstracts(P) if a != P.query]
        _shuffle(cands, rng.random)
        best, best_op = None, 0
        for k in cands:
            op = self.op_of(P, self.necessary(P, k))
            if op > MAX_SYMBOLS:
                continue
            if 2 * op >= base_op:
                return k
            if op > best_op:
                best, best_op = k, op
        return best


# The one-step template ("Define N's N as a; so a = 0") is the only solution shape of op 1;
# the hash is shifted to put it in bin 0, so that a training split always has op-1 problems.
_BIN_SHIFT = zlib.crc32(b"D;0=k")


def template_bin(shape: str) -> int:
    """Template bin of a solution shape: a CRC-32 of the shape, mod 23."""
    return (zlib.crc32(shape.encode()) - _BIN_SHIFT) % N_BINS


def _feasible(flag, B, D, n, u, F):
    """Definition options that keep the construction completable, with their total weight.

    State: budget B left, D dangling parameters, n usable predecessors (capped at 4), u sinks
    left to define (the query, or the support of an abstract query), F other free edges.
    flag: True/False = the node is/is not a sink; None = the node closing the budget is the
    sink (instance query)."""
    feas, total = [], 0.0
    for opt in OPTIONS:
        kind, r, c, w = opt
        if r > n or c > B:
            continue
        b2 = B - c
        is_r = (b2 == 0) if flag is None else flag
        k = r if r < D else D
        if is_r:
            d2, u2, f2 = D - k, u - 1, F
        else:
            if F == 0:
                continue
            d2, u2, f2 = D - k + 1, u, F - 1
        # the budget must stay reachable, the dangling absorbable, and nothing may follow
        # the last sink (it could never become an ancestor of the query)
        if b2 < u2 or d2 > b2 + u2 or b2 > 3 * (f2 + u2) or ((b2 == 0 or u2 == 0) and (b2 or d2 or u2)):
            continue
        feas.append((is_r, opt))
        total += w
    return feas, total


def _cumulative(weighted) -> tuple:
    values, cum, total = [], [], 0.0
    for value, w in weighted:
        total += w
        values.append(value)
        cum.append(total)
    return values, cum


def _draw(law, rand):
    values, cum = law
    x = rand() * cum[-1]
    for value, c in zip(values, cum):
        if x < c:
            return value
    return values[-1]


def _shuffle(x: list, rand) -> None:
    """Fisher-Yates on rng.random (random.shuffle's bit-exact draws are 3x slower)."""
    for i in range(len(x) - 1, 0, -1):
        j = int(rand() * (i + 1))
        x[i], x[j] = x[j], x[i]


def _sample(pop, rand, k: int) -> list:
    """k distinct elements of pop, in random order."""
    n = len(pop)
    if k == 1:
        return [pop[int(rand() * n)]]
    pool = list(pop)
    out = []
    for i in range(k):
        j = int(rand() * (n - i))
        out.append(pool[j])
        pool[j] = pool[n - i - 1]
    return out


def _cost(kind: str, r: int) -> int:
    preds = r + (1 if kind in "cmtMT" else 0)
    return max(1, preds - 1)


def _evaluate(kind: str, const: int, v: list[int]) -> int:
    if kind == "c":
        return const
    if kind == "s":
        return sum(v) % MOD
    if kind == "d":
        return (v[0] - v[1]) % MOD
    inner = (v[0] - v[1]) if kind in "MT" else sum(v)
    return (const + inner) % MOD if kind in "mM" else (const * inner) % MOD
