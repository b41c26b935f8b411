"""A text-only judge for iGSM: decides from the problem text and the generated text alone.

Two metrics (reference): answer accuracy (the generated answer is the true one written in
decimal, as text: `015` is not 15, as in the reference's exact comparison) and full
solution correctness (Part 2.1): the solution parses; every symbol is defined before use and
only once; every operation is right mod 23; every referenced value equals the value given when
it was defined; each defined parameter depends on exactly the predecessors the problem states
(unnecessary but correct parameters are allowed); the last defined parameter is the one asked
for; its value is the answer.

The true answer is recomputed here from the problem text (sentences + structure implied by the
instance parameters; a layer's category is the one its items share), independently of the
generator. Each step is checked as a computation: its temporaries used exactly once, the
final symbol's polynomial over the parameters it reads equal to the stated definition.

`Verdict.reason` is None when both are right, else "<code>: <detail>" with code one of
unparseable, undefined symbol, arithmetic error, wrong dependency, wrong final parameter,
wrong answer (the first problem found, in solution order). `judge` never raises.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from vld.data.igsm.lexicon import Lexicon

__all__ = ["Verdict", "judge", "Lexicon", "parse_problem", "REASONS"]

MOD = 23
MAX_TEXT = 200_000  # longer inputs are not iGSM; judged unparseable without scanning them
REASONS = ("unparseable", "undefined symbol", "arithmetic error", "wrong dependency", "wrong final parameter", "wrong answer")

_MORE = re.compile(r"(\d+) more than (.+)", re.DOTALL)
_TIMES = re.compile(r"(\d+) times as much as (.+)", re.DOTALL)
_INT = re.compile(r"\d+")
_SYM = re.compile(r"[A-Za-z]")
_DEFINE = re.compile(r"Define (.+) as ([A-Za-z])")
_TERM_SPLIT = re.compile(r", each | and each ")
_PREFIX = "The number of each "


@dataclass(frozen=True)
class Verdict:
    answer_correct: bool
    solution_correct: bool
    reason: str | None = None


class _Bad(Exception):
    """A judged error: carries the reason line."""


@dataclass
class ParsedProblem:
    defs: dict  # (A, B) -> (kind, const, [refs]); kind in c s d m t M T as in the generator
    query: tuple
    children: dict  # A -> [B, ...] (instance parameters say the structure)
    values: dict  # memo of true values
    layer_of: dict  # item -> its layer (0 = top), from the structure the sentences state
    layer_cats: list  # layer -> the category names its items share (usually one)

    def value(self, key, lex: Lexicon, depth: int = 0):
        v = self.values.get(key)
        if v is not None:
            return v
        if depth > 400:
            raise _Bad("unparseable: problem has a dependency cycle (or a chain too deep)")
        self.values[key] = None
        d = self.defs.get(key)
        if d is not None:
            kind, const, refs = d
            vs = [self.value(r, lex, depth + 1) for r in refs]
            if kind == "c":
                v = const
            elif kind == "s":
                v = sum(vs) % MOD
            elif kind == "d":
                v = (vs[0] - vs[1]) % MOD
            else:
                inner = (vs[0] - vs[1]) if kind in "MT" else sum(vs)
                v = (const + inner) % MOD if kind in "mM" else (const * inner) % MOD
        else:
            v = 0
            for term in self.abstract_terms(key, lex):
                prod = 1
                for r in term:
                    prod *= self.value(r, lex, depth + 1)
                v += prod
            v %= MOD
        self.values[key] = v
        return v

    def category_layer(self, key, lex: Lexicon):
        """The layer of the category an abstract key (A, Category) counts, or None: the first
        layer below A's whose items share that category (a name's category is its layer's)."""
        a, cat = key
        la = self.item_layer(a, lex)
        if la is None or cat not in lex.categories:
            return None
        for layer in range(la + 1, len(self.layer_cats)):
            if cat in self.layer_cats[layer]:
                return layer
        return None

    def item_layer(self, item, lex: Lexicon):
        layer = self.layer_of.get(item)
        if layer is None:  # an item with no edge at all (a childless top item): by its category
            cats = lex.categories_of.get(item, ())
            for i, shared in enumerate(self.layer_cats):
                if shared & cats:
                    return i
        return layer

    def abstract_terms(self, key, lex: Lexicon):
        """(A, Category) = sum over A's children x of (A, x) [* (x, Category) below the next layer]."""
        layer = self.category_layer(key, lex)
        if layer is None:
            raise _Bad(f"unparseable: {key[0]}'s {key[1]} is not a parameter of the problem")
        a = key[0]
        nxt = layer == self.item_layer(a, lex) + 1
        return [((a, x),) if nxt else ((a, x), (x, key[1])) for x in self.children.get(a, ())]

    def predecessors(self, key, lex: Lexicon) -> Counter:
        d = self.defs.get(key)
        if d is not None:
            return Counter(d[2])
        return Counter(r for term in self.abstract_terms(key, lex) for r in term)

    def expected_poly(self, key, lex: Lexicon) -> dict:
        """The parameter's definition as a polynomial over its predecessors (mod 23)."""
        d = self.defs.get(key)
        if d is None:
            return _poly_sum(*[{tuple(sorted(term)): 1} for term in self.abstract_terms(key, lex)])
        kind, const, refs = d
        if kind == "c":
            return _poly_const(const)
        leaves = [{(r,): 1} for r in refs]
        inner = _poly_sum(*leaves) if kind in "smt" else _poly_sub(leaves[0], leaves[1])
        if kind in "sd":
            return inner
        if kind in "mM":
            return _poly_sum(_poly_const(const), inner)
        return _poly_mul(_poly_const(const), inner)

    def is_parameter(self, key, lex: Lexicon) -> bool:
        return key in self.defs or self.category_layer(key, lex) is not None


def _poly_const(c: int) -> dict:
    c %= MOD
    return {(): c} if c else {}


def _poly_sum(*polys) -> dict:
    out: dict = {}
    for p in polys:
        for m, c in p.items():
            out[m] = (out.get(m, 0) + c) % MOD
    return {m: c for m, c in out.items() if c}


def _poly_sub(a: dict, b: dict) -> dict:
    return _poly_sum(a, {m: -c for m, c in b.items()})


def _poly_mul(a: dict, b: dict) -> dict:
    out: dict = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            m = tuple(sorted(ma + mb))
            out[m] = (out.get(m, 0) + ca * cb) % MOD
    return {m: c for m, c in out.items() if c}


def _layers(children: dict, lex: Lexicon):
    """Each item's layer (roots 0, a child one below its parent) and each layer's shared
    categories, kept to those that sit at consecutive levels of one hierarchy."""
    is_child = {b for bs in children.values() for b in bs}
    layer_of: dict = {}
    frontier = [a for a in children if a not in is_child]
    for a in frontier:
        layer_of[a] = 0
    while frontier:
        nxt = []
        for a in frontier:
            for b in children.get(a, ()):
                want = layer_of[a] + 1
                got = layer_of.get(b)
                if got is None:
                    layer_of[b] = want
                    nxt.append(b)
                elif got != want:
                    raise _Bad(f"unparseable: {b} sits in two layers of the structure")
        frontier = nxt
    if len(layer_of) < len(is_child | set(children)):
        raise _Bad("unparseable: the structure has a cycle")
    depth = 1 + max(layer_of.values(), default=-1)
    shared = [None] * depth
    for item, layer in layer_of.items():
        cats = lex.categories_of.get(item, frozenset())
        shared[layer] = cats if shared[layer] is None else shared[layer] & cats
    shared = [s or frozenset() for s in shared]
    # keep the categories that fit one hierarchy's consecutive levels, when some placement does
    places = [{(h, lv - i) for c in s for h, lv in lex.levels_of.get(c, ())} for i, s in enumerate(shared)]
    fit = set.intersection(*places) if places else set()
    if fit:
        shared = [frozenset(c for c in s if any((h, top + i) in lex.levels_of.get(c, ()) for h, top in fit)) for i, s in enumerate(shared)]
    return layer_of, shared


def _pair(text: str, lex: Lexicon):
    p = lex.split_pair(text)
    if p is None:
        raise _Bad(f"unparseable: {text!r} is not 'A's B' with lexicon names")
    return p


def _refs(text: str, lex: Lexicon):
    if text.startswith("each "):
        return "s", [_pair(text[5:], lex)]
    if text.startswith("the sum of "):
        terms = _TERM_SPLIT.split(text[11:])
        if len(terms) < 2 or not terms[0].startswith("each "):
            raise _Bad("unparseable: bad sum")
        terms[0] = terms[0][5:]
        return "s", [_pair(t, lex) for t in terms]
    if text.startswith("the difference of "):
        terms = _TERM_SPLIT.split(text[18:])
        if len(terms) != 2 or not terms[0].startswith("each "):
            raise _Bad("unparseable: bad difference")
        return "d", [_pair(terms[0][5:], lex), _pair(terms[1], lex)]
    raise _Bad(f"unparseable: expression {text[:60]!r}")


def _definition(rhs: str, lex: Lexicon):
    if _INT.fullmatch(rhs):
        return "c", int(rhs) % MOD, []
    for pattern, plain, diff in ((_MORE, "m", "M"), (_TIMES, "t", "T")):
        m = pattern.fullmatch(rhs)
        if m:
            kind, refs = _refs(m.group(2), lex)
            return (diff if kind == "d" else plain), int(m.group(1)) % MOD, refs
    kind, refs = _refs(rhs, lex)
    return kind, 0, refs


def _question(text: str, lex: Lexicon):
    """Locate the one question "How many X does Y have?" (X a name or a category, Y a name);
    returns (start, end, key). Bounded scans: names are at most lex.longest characters."""
    i = text.find("How many ")
    if i < 0 or text.find("How many ", i + 1) >= 0:
        raise _Bad("unparseable: problem needs exactly one question")
    j = text.find(" have?", i)
    if j < 0:
        raise _Bad("unparseable: problem needs exactly one question")
    inner = text[i + 9 : j]
    pos = inner.find(" does ")
    while 0 <= pos <= lex.longest:
        what, who = inner[:pos], inner[pos + 6 :]
        if (what in lex.names or what in lex.categories) and who in lex.names:
            return i, j + 6, (who, what)
        pos = inner.find(" does ", pos + 1)
    raise _Bad(f"unparseable: question {text[i : i + 60]!r} names no parameter")


def _statement(sentence: str, lex: Lexicon):
    """(key, right-hand side) of "The number of each A's B equals <rhs>"."""
    if not sentence.startswith(_PREFIX):
        raise _Bad(f"unparseable: problem sentence {sentence[:60]!r}")
    rest = sentence[len(_PREFIX) :]
    pos = rest.find(" equals ")
    while 0 <= pos <= 2 * lex.longest + 3:
        key = lex.split_pair(rest[:pos])
        if key is not None:
            return key, rest[pos + 8 :]
        pos = rest.find(" equals ", pos + 1)
    raise _Bad(f"unparseable: problem sentence {sentence[:60]!r}")


@lru_cache(maxsize=4096)
def _parse_problem_cached(problem_text: str, lex: Lexicon) -> ParsedProblem:
    text = problem_text.strip()
    qa, qb, query = _question(text, lex)
    body = (text[:qa] + " " + text[qb:]).strip()
    if not body.endswith("."):
        raise _Bad("unparseable: problem sentences must end with '.'")
    defs: dict = {}
    children: dict = {}
    for sentence in body[:-1].split(". "):
        key, rhs = _statement(sentence.strip(), lex)
        if key in defs:
            raise _Bad(f"unparseable: {key[0]}'s {key[1]} stated twice")
        defs[key] = _definition(rhs, lex)
        children.setdefault(key[0], []).append(key[1])
    layer_of, layer_cats = _layers(children, lex)
    parsed = ParsedProblem(defs, query, children, {}, layer_of, layer_cats)
    for kind, _, refs in defs.values():
        for r in refs:
            if r not in defs and parsed.category_layer(r, lex) is None:
                raise _Bad(f"unparseable: {r[0]}'s {r[1]} is never stated")
    if not parsed.is_parameter(query, lex):
        raise _Bad("unparseable: the question asks for no parameter")
    for key in list(defs) + [query]:
        parsed.value(key, lex)
    return parsed


def parse_problem(problem_text: str, lexicon: Lexicon) -> ParsedProblem:
    """Parse a problem; raises ValueError with the reason if it is not an iGSM problem."""
    try:
        return _parse_problem_cached(problem_text, lexicon)
    except _Bad as bad:
        raise ValueError(str(bad)) from None


def _int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise _Bad(f"unparseable: {text[:20]!r} is not a number")
    return int(text)


def _check_solution(parsed: ParsedProblem, solution: str, lex: Lexicon):
    """Walk the solution; returns the last step's (parameter, value) or raises _Bad.

    Each step is checked as a computation, not only by its value: every temporary it introduces
    is used exactly once by a later assignment of the step, the final symbol's expression (as a
    polynomial mod 23 over the parameters it reads) is the one the problem states, and the
    parameters it reads are exactly the stated predecessors, each as often as stated."""
    text = solution.strip()
    if not text:
        raise _Bad("unparseable: empty solution")
    if text.endswith("."):
        text = text[:-1]
    symbols: dict[str, int] = {}  # symbol -> value
    owner: dict[str, object] = {}  # symbol -> parameter key (step symbols) or step index (temporaries)
    last = None
    for index, step in enumerate(text.split(". "), 1):
        last = _StepCheck(parsed, lex, index, symbols, owner).run(step)
    return last


class _StepCheck:
    """One step of a solution ("Define <parameter> as x; ...; so x = ..."), checked against the
    problem; `symbols` and `owner` hold the solution's symbols so far and take the step's."""

    def __init__(self, parsed: ParsedProblem, lex: Lexicon, index: int, symbols: dict, owner: dict):
        self.parsed, self.lex, self.index = parsed, lex, index
        self.where = f"step {index}"
        self.symbols, self.owner = symbols, owner
        self.leaves: Counter = Counter()  # the parameters the step reads, each as often as it does
        self.temps: dict[str, dict] = {}  # the step's temporaries not used yet -> their polynomial

    def run(self, step: str) -> tuple:
        """The step's (parameter, value), or raises _Bad."""
        key, x, assigns = self._head(step)
        value = poly = None
        for i, assign in enumerate(assigns):
            final = i == len(assigns) - 1
            lhs, value, poly = self._assignment(assign, x, final)
            self.symbols[lhs] = value
            if not final:
                self.owner[lhs] = self.index
                self.temps[lhs] = poly
        self._check_result(key, x, value, poly)
        return key, value

    def _head(self, step: str) -> tuple:
        """(parameter key, its symbol, the assignments with the final 'so ' removed)."""
        where = self.where
        head, sep, body = step.partition("; ")
        m = _DEFINE.fullmatch(head)
        if not sep or not m:
            raise _Bad(f"unparseable: {where} is not 'Define ... as x; ...'")
        key = self.lex.split_pair(m.group(1))
        if key is None:
            raise _Bad(f"unparseable: {where} defines {m.group(1)[:60]!r}")
        x = m.group(2)
        if x in self.symbols or x in self.owner:
            raise _Bad(f"undefined symbol: {where} defines {x} again")
        if not self.parsed.is_parameter(key, self.lex):
            raise _Bad(f"wrong dependency: {where} defines {key[0]}'s {key[1]}, not a parameter of the problem")
        self.owner[x] = key
        assigns = body.split("; ")
        if not assigns[-1].startswith("so "):
            raise _Bad(f"unparseable: {where} does not end with 'so {x} = ...'")
        assigns[-1] = assigns[-1][3:]
        return key, x, assigns

    def _assignment(self, assign: str, x: str, final: bool) -> tuple:
        """(symbol, value, polynomial) of one `lhs = ...` of the step."""
        where = self.where
        parts = assign.split(" = ")
        lhs = parts[0]
        if final and lhs != x:
            raise _Bad(f"unparseable: {where} concludes {lhs[:10]!r}, not {x}")
        if not final:
            if not _SYM.fullmatch(lhs):
                raise _Bad(f"unparseable: {where} assigns to {lhs[:10]!r}")
            if lhs in self.symbols or lhs in self.owner:
                raise _Bad(f"undefined symbol: {where} defines {lhs} again")
        rhs = parts[1:]
        if len(rhs) == 1:  # x = 5
            value = _int(rhs[0])
            return lhs, value, _poly_const(value)
        if len(rhs) == 2:  # x = y = 5
            return (lhs, *self._operand(rhs[0], rhs[1]))
        if len(rhs) == 3:  # x = y + z = 5 + 6 = 11
            return (lhs, *self._operation(rhs))
        raise _Bad(f"unparseable: {where} assignment {assign[:30]!r}")

    def _operation(self, rhs: list[str]) -> tuple:
        where = self.where
        sa = rhs[0].split(" ")
        na = rhs[1].split(" ")
        if len(sa) != 3 or len(na) != 3 or sa[1] != na[1] or sa[1] not in ("+", "-", "*"):
            raise _Bad(f"unparseable: {where} expression {rhs[0][:20]!r}")
        a, pa = self._operand(sa[0], na[0])
        b, pb = self._operand(sa[2], na[2])
        o = sa[1]
        true = (a + b) % MOD if o == "+" else ((a - b) % MOD if o == "-" else (a * b) % MOD)
        value = _int(rhs[2])
        if value != true:
            raise _Bad(f"arithmetic error: {where} {a} {o} {b} = {value}, it is {true}")
        poly = _poly_sum(pa, pb) if o == "+" else (_poly_sub(pa, pb) if o == "-" else _poly_mul(pa, pb))
        return value, poly

    def _operand(self, sym_text: str, num_text: str) -> tuple:
        """(value, polynomial) of an operand written as a symbol or a number, and its stated value."""
        where = self.where
        num = _int(num_text)
        if _SYM.fullmatch(sym_text):
            if sym_text not in self.symbols:
                raise _Bad(f"undefined symbol: {where} uses {sym_text} before it is defined")
            if self.symbols[sym_text] != num:
                raise _Bad(f"arithmetic error: {where} reads {sym_text} as {num}, it is {self.symbols[sym_text]}")
            own = self.owner[sym_text]
            if own == self.index:
                if sym_text not in self.temps:
                    raise _Bad(f"wrong dependency: {where} uses its temporary {sym_text} twice")
                return num, self.temps.pop(sym_text)
            if isinstance(own, int):
                raise _Bad(f"wrong dependency: {where} uses {sym_text}, a temporary of step {own}")
            self.leaves[own] += 1
            return num, {(own,): 1}
        if _INT.fullmatch(sym_text):
            if int(sym_text) != num:
                raise _Bad(f"arithmetic error: {where} copies {sym_text} as {num}")
            return num, _poly_const(num)
        raise _Bad(f"unparseable: {where} operand {sym_text[:10]!r}")

    def _check_result(self, key: tuple, x: str, value: int, poly: dict) -> None:
        """The step read exactly the stated predecessors, combined as stated, to the stated value."""
        where, parsed, lex = self.where, self.parsed, self.lex
        if self.temps:
            raise _Bad(f"wrong dependency: {where} computes {', '.join(self.temps)} but never uses it in {x}")
        expected = parsed.predecessors(key, lex)
        if self.leaves != expected:
            missing = expected - self.leaves
            extra = self.leaves - expected
            what = f"misses {', '.join(f'{a}'+chr(39)+f's {b}' for a, b in missing)}" if missing else ""
            what += ("; " if what else "") + (f"uses {', '.join(f'{a}'+chr(39)+f's {b}' for a, b in extra)}" if extra else "")
            raise _Bad(f"wrong dependency: {where} ({key[0]}'s {key[1]}) {what}")
        if poly != parsed.expected_poly(key, lex):
            raise _Bad(f"wrong dependency: {where} combines {key[0]}'s {key[1]}'s predecessors otherwise than the problem states")
        true = parsed.value(key, lex)
        if value != true:
            raise _Bad(f"wrong dependency: {where} computes {key[0]}'s {key[1]} as {value}, the problem gives {true}")


def judge(problem_text, solution_text, answer_text, lexicon) -> Verdict:
    """Judge a generated solution and answer against a problem; never raises.
    solution_text None: the answer alone (an answer-only model writes no solution), and
    solution_correct is False."""
    try:
        return _judge(problem_text, solution_text, answer_text, lexicon)
    except Exception as err:  # the judge must give every string a verdict; this is a safety net
        return Verdict(False, False, f"unparseable: {err.__class__.__name__}")


def _judge(problem_text, solution_text, answer_text, lexicon) -> Verdict:
    lex = lexicon if isinstance(lexicon, Lexicon) else Lexicon.load(lexicon)
    problem_text = problem_text if isinstance(problem_text, str) else str(problem_text)
    answer_only = solution_text is None
    solution_text = "" if answer_only else solution_text if isinstance(solution_text, str) else str(solution_text)
    answer_text = answer_text if isinstance(answer_text, str) else str(answer_text)
    if max(len(problem_text), len(solution_text), len(answer_text)) > MAX_TEXT:
        return Verdict(False, False, "unparseable: text too long")
    try:
        parsed = _parse_problem_cached(problem_text, lex)
    except _Bad as bad:
        return Verdict(False, False, f"unparseable: problem: {str(bad).removeprefix('unparseable: ')}")
    truth = parsed.value(parsed.query, lex)
    answer = answer_text.strip()
    # compared as text, as the reference does: `015` or `00` is not the number (a model can write
    # one: the tokenizer decodes 0 then 15 as `015`)
    answer_correct = answer == str(truth)
    if answer_only:
        return Verdict(answer_correct, False, None if answer_correct else f"wrong answer: {answer[:20]!r}, the answer is {truth}")
    try:
        last = _check_solution(parsed, solution_text, lex)
    except _Bad as bad:
        return Verdict(answer_correct, False, str(bad))
    key, value = last
    if key != parsed.query:
        return Verdict(answer_correct, False, f"wrong final parameter: the solution ends with {key[0]}'s {key[1]}")
    if not answer_correct:
        return Verdict(False, False, f"wrong answer: {answer[:20]!r}, the answer is {truth}")
    return Verdict(True, True, None)
