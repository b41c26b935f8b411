"""The iGSM generator: structure graph, dependency graph built for a drawn op, text and solution.

A problem is built for the op it must have, never by rejecting at random on op:

1. structure: one hierarchy, d consecutive levels, a layer of w items per level, e edges
   between consecutive layers (every lower item has a parent); each edge (A, B) is an
   instance parameter "each A's B". Abstract parameters "each A's Category" are implied.
   d and the width range are drawn from an op-dependent softmax and layers grow from the
   narrowest width, as the reference does.
2. necessary graph: parameters are defined one after another, each from earlier ones, with an
   op budget, of which a drawn part n goes to abstract parameters first (planned as the
   reference picks them, climbing layer gaps; their support edges defined early). Every option (constant, copy, sum, difference, "more than", "times as much as",
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
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

from vld.data.igsm.lexicon import Lexicon
from vld.declared import check_keys
from vld.errors import fail

MOD = 23
N_BINS = 23
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_SYMBOLS = len(LETTERS)
ABS = 1 << 16  # abstract parameter refs: ABS + (item << 3) + layer; instance refs are edge ids

# Definition options: (kind, parameter predecessors, op cost, weight in the necessary graph,
# weight for a distractor). Kinds:
#  c constant | s sum (r=1: copy) | d difference | m/t K more than / K times as much as a
#  single parameter or a sum | M/T the same around a difference.
# The necessary graph weighs options of cost 2-3 as the reference's spread of extra operations
# comes out (op per instance step, docs/igsm.md); distractors keep the plainer law.
OPTIONS = (
    ("c", 0, 1, 2.0, 3.0),
    ("s", 1, 1, 1.6, 1.6),
    ("m", 1, 1, 1.5, 1.5),
    ("t", 1, 1, 1.5, 1.5),
    ("s", 2, 1, 1.5, 1.5),
    ("d", 2, 1, 0.9, 0.9),
    ("m", 2, 2, 1.5, 0.25),
    ("t", 2, 2, 1.5, 0.25),
    ("M", 2, 2, 0.9, 0.1),
    ("T", 2, 2, 0.9, 0.1),
    ("s", 3, 2, 0.5, 0.3),
    ("m", 3, 3, 0.4, 0.08),
    ("t", 3, 3, 0.4, 0.08),
    ("s", 4, 3, 0.4, 0.08),
)
DISTRACTOR_TOTAL = sum(o[4] for o in OPTIONS)
# Abstract parameters (calibrated to the reference's shares, docs/igsm.md): the chance that the
# question asks for one (when one fits the abstract op budget), that a definition reads one while
# the budget is not spent / once it is, and that a distractor reads one.
P_ABSTRACT_QUERY = 0.43  # + P_ABSTRACT_QUERY_GROWTH * (op - 1) / (max_edge - 1), at most 1
P_ABSTRACT_QUERY_GROWTH = 0.12
P_ABSTRACT_WANTED = 0.7
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
        check_keys(values, cls, where, also=("preset",))
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

    # An abstract parameter "each A's Category" (ref ABS + (A << 3) + layer) sums, over A's
    # children C, "each A's C" (the category is the next layer) or "each A's C" times "each C's
    # Category" (a deeper one).
    def abstract(self, ref: int) -> tuple[int, int, list[int]]:
        """(support edge mask, own op cost, sub-abstract refs) of an abstract parameter."""
        info = self.abs_info.get(ref)
        if info is None:
            item, layer = (ref - ABS) >> 3, ref & 7
            children = self.children[item]
            next_layer = layer == self.item_layer[item] + 1
            mask, subs = 0, []
            for child, edge in children:
                mask |= 1 << edge
                if not next_layer:
                    sub = ABS + (child << 3) + layer
                    subs.append(sub)
                    mask |= self.abstract(sub)[0]
            n = len(children)
            cost = max(1, n - 1) if next_layer else max(1, 2 * n - 1)
            info = self.abs_info[ref] = (mask, cost, subs)
        return info

    def closure(self, ref: int, used, out: list) -> None:
        """Append to `out` the abstract refs `ref` needs (subs first) not in `used` or `out`."""
        if ref in used or ref in out:
            return
        for sub in self.abstract(ref)[2]:
            self.closure(sub, used, out)
        out.append(ref)

    def closure_cost(self, closure: list[int]) -> int:
        return sum(self.abstract(ref)[1] for ref in closure)

    def abs_value(self, ref: int) -> int:
        value = self.vals.get(ref)
        if value is None:
            item, layer = (ref - ABS) >> 3, ref & 7
            vals = self.vals
            total = 0
            if layer == self.item_layer[item] + 1:
                for child, edge in self.children[item]:
                    total += vals[edge]
            else:
                for child, edge in self.children[item]:
                    total += vals[edge] * self.abs_value(ABS + (child << 3) + layer)
            value = vals[ref] = total % MOD
        return value

    def all_abstracts(self) -> list[int]:
        if self.all_abs is None:
            self.all_abs = [ABS + (item << 3) + layer
                            for item, i in enumerate(self.item_layer) for layer in range(i + 1, self.d)]
        return self.all_abs

    def necessary(self, query: int) -> set[int]:
        """Every parameter the answer to `query` depends on (itself included)."""
        need: set[int] = set()
        stack = [query]
        defs = self.defs
        while stack:
            ref = stack.pop()
            if ref in need:
                continue
            need.add(ref)
            if ref >= ABS:
                mask, _, subs = self.abstract(ref)
                stack.extend(subs)
                edge = 0
                while mask:
                    if mask & 1:
                        stack.append(edge)
                    mask >>= 1
                    edge += 1
            else:
                stack.extend(defs[ref][2])
        return need

    def op_of(self, need: set[int]) -> int:
        return sum(self.abstract(ref)[1] if ref >= ABS else self.defs[ref][3] for ref in need)

    def solution_steps(self, query: int, need: set[int]) -> list[tuple[int, int, list[tuple]]]:
        """The detailed solution of `query` defining the parameters of `need`, as symbols (numbered
        in order of definition): steps (the ref a step defines, its symbol, its assignments), an
        abstract parameter's step before the first step reading it. An assignment is one of
        ("k", x, c): x = c | ("=", x, s): x = s | (o, x, s, t): x = s o t, o in "+-*" |
        ("k" + o, x, c, s): x = c o s, o in "+*". A sum, difference or product of several terms
        is written left to right through temporary symbols. Both the text and the shape (which
        `make` needs before values and names are drawn) are rendered from these steps."""
        defs, children = self.defs, self.children
        symbol_of: dict[int, int] = {}
        steps: list[tuple[int, int, list[tuple]]] = []
        count = 0

        def new_symbol() -> int:
            nonlocal count
            count += 1
            return count - 1

        def chain(terms: list[int], o: str, target: int | None, out: list) -> int:
            """Binarise `terms` left to right; the last result goes to `target` (None: a temporary)."""
            left = terms[0]
            last = len(terms) - 1
            for i in range(1, len(terms)):
                result = target if (i == last and target is not None) else new_symbol()
                out.append((o, result, left, terms[i]))
                left = result
            return left

        def define_abstract(ref: int) -> None:
            if ref in symbol_of:
                return
            subs = self.abstract(ref)[2]
            for sub in subs:
                define_abstract(sub)
            x = symbol_of[ref] = new_symbol()
            item_children = children[(ref - ABS) >> 3]
            out: list[tuple] = []
            if not item_children:
                out.append(("k", x, 0))
            elif not subs:  # the category is the next layer: a sum over the children's edges
                if len(item_children) == 1:
                    out.append(("=", x, symbol_of[item_children[0][1]]))
                else:
                    chain([symbol_of[edge] for _, edge in item_children], "+", x, out)
            else:  # deeper: a sum of each edge times the child's own abstract parameter
                layer = ref & 7
                single = x if len(item_children) == 1 else None
                products = [chain([symbol_of[edge], symbol_of[ABS + (child << 3) + layer]], "*", single, out)
                            for child, edge in item_children]
                if len(item_children) > 1:
                    chain(products, "+", x, out)
            steps.append((ref, x, out))

        for ref in self.order:
            if ref not in need:
                continue
            kind, const, refs, _ = defs[ref]
            for p in refs:
                if p >= ABS:
                    define_abstract(p)
            x = symbol_of[ref] = new_symbol()
            out: list[tuple] = []
            if kind == "c":
                out.append(("k", x, const))
            else:
                terms = [symbol_of[p] for p in refs]
                if kind == "s" and len(terms) == 1:
                    out.append(("=", x, terms[0]))
                elif kind == "s" or kind == "d":
                    chain(terms, "+" if kind == "s" else "-", x, out)
                else:  # K more than / K times as much as one term, a sum or a difference
                    inner = terms[0] if len(terms) == 1 else chain(terms, "-" if kind in "MT" else "+", None, out)
                    out.append(("k" + ("+" if kind in "mM" else "*"), x, const, inner))
            steps.append((ref, x, out))
        if query >= ABS:
            define_abstract(query)
        return steps


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
            # e = the smaller of two draws of U{(d-1) w0 .. max_edge}, at most what layers of w1 hold
            base = (d - 1) * w0  # the mandatory edges of layers of w0 items
            if base > cfg.max_edge:
                continue
            span = cfg.max_edge - base + 1
            e = base + min(int(rand() * span), int(rand() * span))
            e = min(max(e, e_need), (d - 1) * w1 * w1)
            if e >= e_need:
                break
        widths = _grow_layers(rand, d, w0, w1, e)
        top = int(rand() * (len(levels) - d + 1))
        problem = Problem()
        problem.d = d
        problem.hierarchy = h
        problem.top = top
        problem.widths = widths
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
        problem.item_layer, problem.edges, problem.children = item_layer, edges, children
        return problem

    def _name(self, problem: Problem, rng: random.Random) -> None:
        """Draw the layers' sub-categories and item names (only for problems that are kept)."""
        rand = rng.random
        levels = self.tables[problem.hierarchy]
        names, cats = [], []
        for i, w in enumerate(problem.widths):
            options = levels[problem.top + i]
            cat, pool = options[int(rand() * len(options))]
            cats.append(cat)
            names.extend(_sample(pool, rand, w))
        problem.names, problem.cats = names, cats
        problem.pair = [f"{names[p]}'s {names[c]}" for p, c in problem.edges]

    # ---- 2. the necessary graph, built for its op ------------------------------------------
    # Words of the construction: a sink is an edge the query reads directly (the instance query
    # itself, or an edge of an abstract query's support), so no later definition has to read it;
    # any other defined parameter is dangling until a later definition reads it (it must, to be
    # an ancestor of the query), consumed afterwards (and free to be read again).
    def _necessary(self, problem: Problem, rng: random.Random, op: int) -> bool:
        """Define parameters one after another until the budget `op` is spent and every sink is
        defined (problem.order, problem.defs, problem.query); False at a dead end."""
        rand = rng.random
        # the op the necessary set spends on abstract parameters: the reference's max of two draws
        abstract_op = max(int(rand() * op), int(rand() * op)) + 1
        query, reserved, spent, sinks = self._query(problem, rand, op, abstract_op)
        instance_query = query < ABS  # then the definition closing the budget is the query
        budget = op - spent
        undefined_sinks = set(sinks)
        free = [k for k in range(len(problem.edges)) if k not in undefined_sinks]
        _shuffle(free, rand)
        used = set(reserved)  # abstracts in the necessary graph (their cost is counted)
        plan = []
        if spent < abstract_op:
            avoid = (1 << query) if instance_query else 0
            plan = self._plan(problem, rand, free, used, abstract_op - spent, budget, avoid)
        sinks = list(sinks)
        _shuffle(sinks, rand)  # the order sinks are defined in (popped from the end)
        consumed: list[int] = []
        dangling: list[int] = []
        order: list[int] = []
        defined = 0  # mask of the edges defined so far
        while budget > 0 or undefined_sinks:
            picked = self._draw_option(rand, instance_query, budget, len(dangling), len(dangling) + len(consumed),
                                       len(undefined_sinks), len(free))
            if picked is None:
                return False
            is_sink, (kind, n_preds, cost, _, _) = picked
            budget_after = budget - cost
            sinks_after = len(undefined_sinks) - 1 if is_sink else len(undefined_sinks)
            use = None
            if n_preds and budget_after > 0 and rand() < (P_ABSTRACT_WANTED if spent < abstract_op else P_ABSTRACT_EXTRA):
                use = self._abstract_use(problem, rand, plan, used, defined, dangling, consumed, n_preds, budget_after,
                                         sinks_after, is_sink, abstract_op - spent)
            if use is not None:
                ref, closure, extra, from_dangling = use
                absorbed = problem.abstract(ref)[0]  # dangling edges the abstract parameter reads
                consumed.extend(x for x in dangling if absorbed >> x & 1)
                dangling[:] = [x for x in dangling if not absorbed >> x & 1]
                used.update(closure)
                spent += extra
                budget_after -= extra
                others = n_preds - 1 - from_dangling
                refs = [ref] + (_sample(consumed, rand, others) if others > 0 else [])
            else:
                from_dangling = self._dangling_to_read(rand, len(dangling), len(consumed), n_preds, is_sink,
                                                       budget_after, sinks_after)
                others = n_preds - from_dangling
                refs = _sample(consumed, rand, others) if others > 0 else []
            _consume(rand, dangling, consumed, from_dangling, refs)
            if len(refs) > 1:
                _shuffle(refs, rand)
            edge = sinks.pop() if is_sink else free.pop()
            if is_sink:
                undefined_sinks.discard(edge)
            problem.defs[edge] = (kind, _constant(kind, rand), refs, cost)
            order.append(edge)
            defined |= 1 << edge
            (consumed if is_sink else dangling).append(edge)
            budget = budget_after
        problem.order = order
        problem.query = order[-1] if instance_query else query
        return True

    def _query(self, problem: Problem, rand, op: int, abstract_op: int) -> tuple[int, list[int], int, list[int]]:
        """The parameter the question asks for: an abstract one (more often as op grows) when
        one fits, else an instance edge (the one the last definition will take). Returns
        (query, the abstract refs it reserves, the op they cost, the sinks)."""
        n_edges = len(problem.edges)
        abstracts = problem.all_abstracts()
        growth = P_ABSTRACT_QUERY_GROWTH * min(1.0, (op - 1) / (self.cfg.max_edge - 1))
        if abstracts and rand() < P_ABSTRACT_QUERY + growth:
            candidates = list(abstracts)
            _shuffle(candidates, rand)
            for candidate in candidates:
                closure: list[int] = []
                problem.closure(candidate, (), closure)
                cost = problem.closure_cost(closure)
                mask = problem.abstract(candidate)[0]
                support = [k for k in range(n_edges) if mask >> k & 1]
                if (cost <= abstract_op and cost + len(support) <= op and op - cost <= 3 * n_edges
                        and (support or op == cost)):
                    return candidate, closure, cost, support
        edge = int(rand() * n_edges)
        return edge, [], 0, [edge]

    def _draw_option(self, rand, instance_query: bool, budget: int, n_dangling: int, n_usable: int,
                     n_sinks: int, n_free: int):
        """(is_sink, option) for the next definition, drawn by weight among the options that keep
        the construction completable; None at a dead end. Whether it defines a sink is drawn
        first (by the share of sinks among the undefined edges), the other way if that fails."""
        if instance_query:
            choices = (None,)  # decided per option: the node closing the budget is the query
        elif n_sinks == 0:
            choices = (False,)
        elif n_free == 0:
            choices = (True,)
        else:
            first = rand() * (n_sinks + n_free) < n_sinks
            choices = (first, not first)
        cache = self._feasible_cache
        for sink_flag in choices:
            state = (sink_flag, budget, n_dangling, n_usable if n_usable < 4 else 4, n_sinks, n_free)
            feasible = cache.get(state)
            if feasible is None:
                feasible = cache[state] = _feasible(*state)
            options, total = feasible
            if options:
                x = rand() * total
                for picked in options:
                    x -= picked[1][3]
                    if x < 0:
                        break
                return picked
        return None

    @staticmethod
    def _dangling_to_read(rand, n_dangling: int, n_consumed: int, n_preds: int, is_sink: bool,
                          budget_after: int, sinks_after: int) -> int:
        """How many of a definition's predecessors are dangling refs: enough to stay
        feasible, usually as many as possible."""
        least = max(0, n_dangling + (0 if is_sink else 1) - budget_after - sinks_after, n_preds - n_consumed)
        most = n_preds if n_preds < n_dangling else n_dangling
        if budget_after == 0:
            least = n_dangling
        return most if rand() < 0.6 else least + int(rand() * (most - least + 1))

    def _plan(self, problem: Problem, rand, free: list, taken: set, room: int, budget: int, avoid: int) -> list:
        """Abstract parameters to read, while their op fits in `room`, chosen as the reference
        chooses them: one random candidate per layer gap, smallest gap first, climbing to the
        largest gap whose candidate still fits (none fits at the smallest gap: planning stops).
        Their support edges go to the end of `free` (defined first). Returns them in that order."""
        by_gap: dict[int, list[int]] = {}
        layer = problem.item_layer
        for a in problem.all_abstracts():
            if a not in taken and not problem.abstract(a)[0] & avoid:
                by_gap.setdefault((a & 7) - layer[(a - ABS) >> 3], []).append(a)
        gaps = sorted(by_gap)
        plan: list[int] = []
        seen = set(taken)
        planned = 0
        while room > 0 and budget > 1:
            pick = None
            for gap in gaps:
                cands = [a for a in by_gap[gap] if a not in seen]
                if not cands:
                    continue
                a = cands[int(rand() * len(cands))]
                closure: list[int] = []
                problem.closure(a, seen, closure)
                extra = problem.closure_cost(closure)
                mask = problem.abstract(a)[0]
                edges = (mask & ~planned).bit_count()
                if extra > room or edges + extra + 1 > budget:
                    break
                pick = a, closure, extra, edges, mask
            if pick is None:
                break
            a, closure, extra, edges, mask = pick
            plan.append(a)
            seen.update(closure)
            planned |= mask
            room -= extra
            budget -= edges + extra
        if planned:
            first = [k for k in free if planned >> k & 1]
            free[:] = [k for k in free if not planned >> k & 1] + first[::-1]
        return plan

    def _abstract_use(self, problem, rand, plan, used, defined, dangling, consumed, n_preds, budget, n_sinks,
                      is_sink, room):
        """An available abstract parameter for one slot of a definition with n_preds predecessors,
        and how many dangling refs the other slots take, keeping the construction completable:
        (ref, its new closure, the op it adds, the dangling count), or None. `budget` and
        `n_sinks` are what is left after this definition."""
        candidates = [a for a in plan if a not in used and not (problem.abstract(a)[0] & ~defined)]
        if not candidates:
            candidates = [a for a in problem.all_abstracts() if not (problem.abstract(a)[0] & ~defined)]
            if not candidates:
                return None
            _shuffle(candidates, rand)
        for a in candidates:
            closure: list[int] = []
            problem.closure(a, used, closure)
            extra = problem.closure_cost(closure)
            if extra > budget or (closure and a not in plan and extra > room > 0):
                continue
            mask = problem.abstract(a)[0]
            absorbed = sum(1 for x in dangling if mask >> x & 1)
            n_dangling, n_consumed = len(dangling) - absorbed, len(consumed) + absorbed
            budget_after = budget - extra
            counts = []
            for k in range(min(n_preds - 1, n_dangling) + 1):
                dangling_after = n_dangling - k + (0 if is_sink else 1)
                if (n_preds - 1 - k > n_consumed or budget_after < n_sinks or dangling_after > budget_after + n_sinks
                        or ((budget_after == 0 or n_sinks == 0) and (budget_after or dangling_after or n_sinks))):
                    continue
                counts.append(k)
            if counts:
                k = counts[-1] if rand() < 0.6 else counts[int(rand() * len(counts))]
                return a, closure, extra, k
        return None

    def _values(self, problem: Problem) -> None:
        """Values of the necessary graph, in order (deferred until the template bin is known)."""
        vals, defs, abs_value = problem.vals, problem.defs, problem.abs_value
        for ref in problem.order:
            kind, const, refs, _ = defs[ref]
            vals[ref] = _evaluate(kind, const, [vals[p] if p < ABS else abs_value(p) for p in refs])
        if problem.query >= ABS:
            abs_value(problem.query)

    # ---- 3. distractors ------------------------------------------------------------------
    def _distractors(self, problem: Problem, rng: random.Random) -> None:
        rand = rng.random
        order, defs, vals = problem.order, problem.defs, problem.vals
        rest = [k for k in range(len(problem.edges)) if k not in defs]
        _shuffle(rest, rng.random)
        for edge in rest:
            pos = int(rand() * (len(order) + 1))  # stated after the first `pos` parameters, reading only them
            x = rand() * DISTRACTOR_TOTAL
            for kind, n_preds, _, _, weight in OPTIONS:
                x -= weight
                if x < 0:
                    break
            if n_preds > pos:
                kind, n_preds = ("c", 0) if pos == 0 else ("s", min(pos, 2))
            refs = _sample(order[:pos], rng.random, n_preds) if n_preds else []
            if n_preds and rand() < P_ABSTRACT_DISTRACTOR:
                mask = 0
                for k in order[:pos]:
                    mask |= 1 << k
                cands = [a for a in problem.all_abstracts() if not (problem.abstract(a)[0] & ~mask) and a not in refs]
                if cands:
                    refs[-1] = cands[int(rand() * len(cands))]
                    problem.abs_value(refs[-1])
            const = _constant(kind, rand)
            defs[edge] = (kind, const, refs, _cost(kind, n_preds))
            vals[edge] = _evaluate(kind, const, [vals[p] for p in refs])
            order.insert(pos, edge)

    # ---- 4. text -------------------------------------------------------------------------
    def _solution(self, problem: Problem, rng: random.Random, query: int, need: set[int], op: int,
                  steps: list | None = None) -> None:
        """Render the detailed solution, its shape and the answer; `steps` are the solution's
        steps (problem.solution_steps, computed once by `make` for the template split)."""
        letters = _sample(LETTERS, rng.random, op)
        if steps is None:
            steps = problem.solution_steps(query, need)
        names, cats, pair = problem.names, problem.cats, problem.pair
        value: dict[int, int] = {}  # of each symbol, as the solution computes it
        texts = []
        for ref, symbol, assignments in steps:
            parts = [_assignment_text(assignment, letters, value) for assignment in assignments]
            parts[-1] = "so " + parts[-1]
            what = f"{names[(ref - ABS) >> 3]}'s {cats[ref & 7]}" if ref >= ABS else pair[ref]
            texts.append(f"Define {what} as {letters[symbol]}; " + "; ".join(parts))
        problem.solution = ". ".join(texts) + "."
        problem.shape = shape_of(steps)
        problem.template_bin = template_bin(problem.shape)
        problem.answer = problem.vals[query]
        problem.op = op
        if query >= ABS:
            problem.question = f"How many {cats[query & 7]} does {names[(query - ABS) >> 3]} have?"
        else:
            parent, child = problem.edges[query]
            problem.question = f"How many {names[child]} does {names[parent]} have?"
        problem.query = query

    def _problem_text(self, problem: Problem, rng: random.Random) -> None:
        names, cats, defs, pair = problem.names, problem.cats, problem.defs, problem.pair

        def ref_text(p):
            if p >= ABS:
                return f"each {names[(p - ABS) >> 3]}'s {cats[p & 7]}"
            return f"each {pair[p]}"

        level = self.cfg.perm_level
        if level == 6:  # the order the problem was built in, no shuffle
            start = stated = problem.order
        elif level == 5:
            start = problem.order
            stated = list(start)
            _shuffle(stated, rng.random)
        else:  # a random topological order, each sentence moved to key i + U{0..level}, ties at random
            start = self._random_topological(problem, rng.random)
            stated = start
            if level:
                rand = rng.random
                keyed = sorted((i + int(rand() * (level + 1)), rand(), ref) for i, ref in enumerate(start))
                stated = [ref for _, _, ref in keyed]
        problem.start_order, problem.stated_order = start, stated
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
        problem.sentences = sentences
        body = ". ".join(sentences) + "."
        problem.text = f"{body} {problem.question}" if self.cfg.format == "pq" else f"{problem.question} {body}"

    def _random_topological(self, problem: Problem, rand) -> list[int]:
        """A uniformly drawn ready sentence at each step: a random topological order of the
        parameters (an abstract reference waits for every edge it sums over)."""
        defs, abstract = problem.defs, problem.abstract
        need = {}
        for ref in problem.order:
            m = 0
            for p in defs[ref][2]:
                m |= abstract(p)[0] if p >= ABS else 1 << p
            need[ref] = m
        done, out = 0, []
        left = list(problem.order)
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
            problem = self._structure(rng, e_need, op)
            if not self._necessary(problem, rng, op):
                self.restarts += 1
                continue
            if cfg.reask:
                self._values(problem)
                self._distractors(problem, rng)
                query = self._reask_query(problem, rng)
                if query is None:
                    self.restarts += 1
                    continue
            else:
                query = problem.query
            problem.base_query = problem.query  # the question the problem was built for (differs when reasking)
            need = problem.necessary(query)
            steps = problem.solution_steps(query, need)
            if lo_bin <= template_bin(shape_of(steps)) < hi_bin:
                break
            self.bin_rejects += 1
            misses += 1
        if not cfg.reask:
            self._values(problem)
            self._distractors(problem, rng)
        if query >= ABS:
            problem.abs_value(query)
        self._name(problem, rng)
        self._solution(problem, rng, query, need, problem.op_of(need), steps)
        self._problem_text(problem, rng)
        return problem

    def _reask_query(self, problem: Problem, rng: random.Random):
        """A new question among all parameters, abstract ones included. Most parameters of a
        problem need far fewer operations than its query (a third are constants), so the draw
        is among those needing at least half the base problem's op, keeping a reask set's op
        near its base set's; failing any, the one needing the most."""
        base_op = problem.op_of(problem.necessary(problem.query))
        cands = ([k for k in range(len(problem.edges)) if k != problem.query]
                 + [a for a in problem.all_abstracts() if a != problem.query])
        _shuffle(cands, rng.random)
        best, best_op = None, 0
        for k in cands:
            op = problem.op_of(problem.necessary(k))
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


def shape_of(steps: list) -> str:
    """A solution's shape: its steps (Problem.solution_steps) without values, names or letters."""
    return "|".join("D;" + ";".join(_assignment_shape(a) for a in assignments) for _, _, assignments in steps)


def _assignment_shape(assignment: tuple) -> str:
    o, x = assignment[0], assignment[1]
    if o == "k":
        return f"{x}=k"
    if o == "=":
        return f"{x}={assignment[2]}"
    if o[0] == "k":
        return f"{x}=k{o[1]}{assignment[3]}"
    return f"{x}={assignment[2]}{o}{assignment[3]}"


def _assignment_text(assignment: tuple, letters: str | list, value: dict[int, int]) -> str:
    """An assignment as the solution writes it; records the value of the symbol it defines."""
    o, x = assignment[0], assignment[1]
    if o == "k":
        value[x] = assignment[2]
        return f"{letters[x]} = {assignment[2]}"
    if o == "=":
        s = assignment[2]
        value[x] = value[s]
        return f"{letters[x]} = {letters[s]} = {value[s]}"
    if o[0] == "k":
        const, s = assignment[2], assignment[3]
        v = value[s]
        result = value[x] = (const + v) % MOD if o[1] == "+" else (const * v) % MOD
        return f"{letters[x]} = {const} {o[1]} {letters[s]} = {const} {o[1]} {v} = {result}"
    s, t = assignment[2], assignment[3]
    v, w = value[s], value[t]
    result = value[x] = (v + w) % MOD if o == "+" else ((v - w) % MOD if o == "-" else (v * w) % MOD)
    return f"{letters[x]} = {letters[s]} {o} {letters[t]} = {v} {o} {w} = {result}"


def _feasible(sink_flag, budget, n_dangling, n_usable, n_sinks, n_free):
    """Definition options that keep the construction completable, with their total weight.

    State: the op budget left, the dangling parameters, the usable predecessors (capped at 4),
    the sinks left to define (the query, or the support of an abstract query), the other free
    edges. sink_flag: True/False = the node is/is not a sink; None = the node closing the
    budget is the sink (instance query)."""
    feasible, total = [], 0.0
    for option in OPTIONS:
        kind, n_preds, cost, weight, _ = option
        if n_preds > n_usable or cost > budget:
            continue
        budget_after = budget - cost
        is_sink = (budget_after == 0) if sink_flag is None else sink_flag
        k = n_preds if n_preds < n_dangling else n_dangling  # dangling refs it reads
        if is_sink:
            dangling_after, sinks_after, free_after = n_dangling - k, n_sinks - 1, n_free
        else:
            if n_free == 0:
                continue
            dangling_after, sinks_after, free_after = n_dangling - k + 1, n_sinks, n_free - 1
        # the budget must stay reachable, the dangling absorbable, and nothing may follow
        # the last sink (it could never become an ancestor of the query)
        if (budget_after < sinks_after or dangling_after > budget_after + sinks_after
                or budget_after > 3 * (free_after + sinks_after)
                or ((budget_after == 0 or sinks_after == 0) and (budget_after or dangling_after or sinks_after))):
            continue
        feasible.append((is_sink, option))
        total += weight
    return feasible, total


def _grow_layers(rand, d: int, w0: int, w1: int, e: int) -> list[int]:
    """Layer widths as the reference grows them: every layer starts at w0; a vertex is added to a
    random layer not yet at w1 while the layers cannot hold e edges, then with a chance p = U(0, 1)
    each time (stopping at the first refusal), until full or until the mandatory edges (one parent
    per lower item) alone make e. So most layers stay near w0 unless e needs them wider."""
    widths = [w0] * d
    p = rand()
    while True:
        room = [i for i in range(d) if widths[i] < w1]
        if sum(widths[i] * widths[i + 1] for i in range(d - 1)) >= e:
            if sum(widths[1:]) >= e or not room or rand() >= p:
                return widths
        widths[room[int(rand() * len(room))]] += 1


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


def _consume(rand, dangling: list, consumed: list, k: int, refs: list) -> None:
    """Move k random dangling refs (swap-remove) to `consumed`, appending them to `refs`."""
    for _ in range(k):
        j = int(rand() * len(dangling))
        ref = dangling[j]
        dangling[j] = dangling[-1]
        dangling.pop()
        refs.append(ref)
        consumed.append(ref)


def _constant(kind: str, rand) -> int:
    """The K of a definition: a constant or "K more than" 0..22, "K times as much as" 1..22."""
    if kind in "cmM":
        return int(rand() * MOD)
    if kind in "tT":
        return 1 + int(rand() * (MOD - 1))
    return 0


def _cost(kind: str, n_preds: int) -> int:
    preds = n_preds + (1 if kind in "cmtMT" else 0)  # a constant counts as a predecessor
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
