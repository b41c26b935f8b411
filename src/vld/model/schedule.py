"""Reuse schedules: which base layer the forward pass visits at each virtual layer.

A schedule is a list of 0-based base-layer indices. Patterns are written in a small
notation over `L` (number of base layers, or the size of the `layers` range) and `k`
(extra copies), so a user can define a new named pattern in params.yaml alone:

    patterns:
      middle_cycle: "0, cycle(1..L-2, k+1), L-1"

Grammar (recursive descent, no eval):

    seq    := item ("," item)*
    item   := expr [".." expr]                 # a single index or an inclusive range (see below)
            | NAME "(" seq ")"                 # cycle / sequence / inverse_cycle / reverse
    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "//") factor)*
    factor := INT | "L" | "k" | "(" expr ")" | "-" factor

A range `a..b` runs in the direction it is written in, judged with L large: `0..L-1` and
`1..L-2` ascend, `L-1..0` descends. When a small L turns it around (`1..L-2` for L = 2 is
`1..0`) the range is empty, so `middle_cycle` on 2 layers is `0, 1`, never `0, 1, 0, 1, ...`.
A range without L (`3..1`) runs as written.

For `cycle`, `sequence` and `inverse_cycle` the last argument is the count `n`; the
arguments before it are concatenated into the sequence `s`. `reverse(s)` takes only `s`.

This module imports no torch: config validation stays cheap.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from vld.declared import check_keys
from vld.errors import fail

# Built-in patterns, written in the same notation a user would write.
BUILTIN_PATTERNS: dict[str, str] = {
    "base": "0..L-1",
    "sequence": "sequence(0..L-1, k+1)",
    "cycle": "cycle(0..L-1, k+1)",
    "inverse_cycle": "inverse_cycle(0..L-1, k+1)",
}

# How much larger than L the base is when a range's written direction is read (see _Parser.item).
_WIDE_L = 1_000_000
# A guard against a typo like `cycle(0..L-1, 100000)` allocating a huge list.
MAX_SCHEDULE_LENGTH = 100_000

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKEN_RE = re.compile(r"(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(\.\.|//|[-+*(),])")
_FUNCTIONS = ("cycle", "sequence", "inverse_cycle", "reverse")


class NotationError(Exception):
    """A problem in a notation string; turned into a UserError naming the key."""


class _DependsOnValues(NotationError):
    """A problem that depends on the values of L and k (a count below zero, a division by
    zero, a length): the same text may be fine for another model or k."""


def _tokenize(text: str) -> list[tuple[str, object]]:
    tokens: list[tuple[str, object]] = []
    pos = 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise NotationError(f"unexpected character {text[pos]!r} at position {pos}")
        number, name, symbol = match.groups()
        if number is not None:
            tokens.append(("int", int(number)))
        elif name is not None:
            tokens.append(("name", name))
        else:
            tokens.append(("sym", symbol))
        pos = match.end()
    tokens.append(("end", None))
    return tokens


class _Parser:
    def __init__(self, text: str, n_layers: int, k: int):
        self.tokens = _tokenize(text)
        self.pos = 0
        self.env = {"L": n_layers, "k": k}

    # -- token helpers
    def peek(self, offset: int = 0) -> tuple[str, object]:
        return self.tokens[min(self.pos + offset, len(self.tokens) - 1)]

    def take(self) -> tuple[str, object]:
        token = self.peek()
        self.pos += 1
        return token

    def expect(self, symbol: str) -> None:
        kind, value = self.take()
        if kind != "sym" or value != symbol:
            raise NotationError(f"expected {symbol!r}, got {_describe(kind, value)}")

    def at(self, symbol: str) -> bool:
        kind, value = self.peek()
        return kind == "sym" and value == symbol

    # -- grammar
    def parse(self) -> list[int]:
        if self.peek()[0] == "end":
            raise NotationError("empty pattern")
        result = self.seq()
        kind, value = self.peek()
        if kind != "end":
            raise NotationError(f"unexpected {_describe(kind, value)}")
        return result

    def seq_items(self) -> list[list[int]]:
        items = [self.item()]
        while self.at(","):
            self.take()
            items.append(self.item())
        return items

    def seq(self) -> list[int]:
        return [index for item in self.seq_items() for index in item]

    def item(self) -> list[int]:
        kind, value = self.peek()
        if kind == "name" and value not in self.env:
            if not (self.peek(1)[0] == "sym" and self.peek(1)[1] == "("):
                raise NotationError(f"unknown name {value!r} (variables: L, k)")
            return self.call()
        begin = self.pos
        start = self.expr()
        if not self.at(".."):
            return [start]
        self.take()
        stop = self.expr()
        # The direction of a range is the one it is written in: its ends evaluated for a large L.
        # `1..L-2` ascends, so for L = 2 (1..0) it is empty, not the descending 1, 0; `L-1..0`
        # descends for every L. A range whose ends do not depend on L runs as written.
        wide_start, wide_stop = self._ends_at(begin, self.env["L"] + _WIDE_L)
        written = wide_stop - wide_start
        step = 1 if (written > 0 or (written == 0 and stop >= start)) else -1
        if (stop - start) * step < 0:
            return []  # runs backwards only because L is small: no layers
        if abs(stop - start) + 1 > MAX_SCHEDULE_LENGTH:
            raise _DependsOnValues(f"range {start}..{stop} is longer than {MAX_SCHEDULE_LENGTH}")
        return list(range(start, stop + step, step))

    def _ends_at(self, begin: int, n_layers: int) -> tuple[int, int]:
        """Both ends of the range starting at token `begin`, evaluated with L = n_layers."""
        pos, env = self.pos, self.env
        self.pos, self.env = begin, {**env, "L": n_layers}
        try:
            start = self.expr()
            self.take()  # ".."
            return start, self.expr()
        finally:
            self.pos, self.env = pos, env

    def call(self) -> list[int]:
        _, name = self.take()
        if name not in _FUNCTIONS:
            raise NotationError(f"unknown function {name!r} (known: {', '.join(_FUNCTIONS)})")
        self.expect("(")
        if self.at(")"):
            raise NotationError(f"{name}() needs arguments")
        items = self.seq_items()
        self.expect(")")
        if name == "reverse":
            return [index for item in items for index in item][::-1]
        if len(items) < 2 or len(items[-1]) != 1:
            # a range as the count (`0..k`) is a single index for some values only
            error = NotationError if len(items) < 2 else _DependsOnValues
            raise error(f"{name}(s, n): the last argument must be a single count n")
        count = items[-1][0]
        body = [index for item in items[:-1] for index in item]
        if count < 0:
            raise _DependsOnValues(f"{name}(s, n): count must be >= 0, got {count}")
        if len(body) * count > MAX_SCHEDULE_LENGTH:
            raise _DependsOnValues(f"{name}(s, n) is longer than {MAX_SCHEDULE_LENGTH}")
        if name == "cycle":
            return body * count
        if name == "sequence":
            return [index for index in body for _ in range(count)]
        # inverse_cycle: s, reversed s, s, ... (n blocks)
        backward = body[::-1]
        return [index for block in range(count) for index in (body if block % 2 == 0 else backward)]

    def expr(self) -> int:
        value = self.term()
        while self.at("+") or self.at("-"):
            _, op = self.take()
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self) -> int:
        value = self.factor()
        while self.at("*") or self.at("//"):
            _, op = self.take()
            rhs = self.factor()
            if op == "*":
                value = value * rhs
            else:
                if rhs == 0:
                    raise _DependsOnValues("division by zero")
                value = value // rhs
        return value

    def factor(self) -> int:
        kind, value = self.take()
        if kind == "int":
            return value  # type: ignore[return-value]
        if kind == "name":
            if value in self.env:
                return self.env[value]  # type: ignore[index]
            raise NotationError(f"unknown name {value!r} (variables: L, k)")
        if kind == "sym" and value == "(":
            inner = self.expr()
            self.expect(")")
            return inner
        if kind == "sym" and value == "-":
            return -self.factor()
        raise NotationError(f"expected a number, L or k, got {_describe(kind, value)}")


def _describe(kind: str, value: object) -> str:
    if kind == "end":
        return "end of pattern"
    return repr(value)


def expand_notation(text: str, n_layers: int, k: int) -> list[int]:
    """Expand a notation string for `n_layers` (L) and `k`; raises NotationError."""
    if not isinstance(text, str):
        raise NotationError(f"a pattern must be a string, got {type(text).__name__}")
    return _Parser(text, n_layers, k).parse()


# (L, k) at which check_notation reads a pattern; where one raises an error that depends on
# the values, the next may read further.
_PROBES = ((8, 1), (8, 3), (64, 8))


def check_notation(text: str, where: str) -> None:
    """Fail on an error that no value of L and k can avoid (a typo, an unknown name, a missing
    parenthesis), so a pattern no variant uses yet is checked before any compute. An error
    that depends on the values is left to the variants that use the pattern, which check it
    at their own L and k."""
    for n_layers, k in _PROBES:
        try:
            expand_notation(text, n_layers, k)
            return
        except _DependsOnValues:
            continue
        except NotationError as err:
            fail(where, str(err))


@dataclass
class ScheduleSpec:
    """A schedule as written in config.

    pattern: a built-in name, a name under `patterns:` in params.yaml, or inline notation.
    k: extra copies (effective depth (k+1)*L for the whole-model patterns).
    layers: "a..b" (0-based, inclusive): apply the pattern to that range only, the other
        layers visited once in place; inside the pattern, L is the size of the range.
    order: an explicit list of base indices; then pattern, k and layers are ignored.
    """

    pattern: str = "base"
    k: int = 0
    layers: str | None = None
    order: list[int] | None = None

    @classmethod
    def from_dict(cls, data: Mapping | None, where: str = "schedule") -> "ScheduleSpec":
        if data is None:
            return cls()
        if isinstance(data, ScheduleSpec):
            return data
        if not isinstance(data, Mapping):
            fail(where, f"must be a mapping with keys pattern, k, layers, order; got {type(data).__name__}")
        check_keys(data, cls, where, sort=True)
        values = dict(data)
        if values.get("order") is not None:
            values["order"] = list(values["order"])
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def layer_range(layers: object, n_layers: int, where: str = "layers") -> tuple[int, int]:
    """A schedule's `layers` ("a..b" in the notation, or [a, b]) -> (start, stop), inclusive."""
    if isinstance(layers, (list, tuple)) and len(layers) == 2 and all(_is_int(v) for v in layers):
        start, stop = int(layers[0]), int(layers[1])
    elif isinstance(layers, str):
        try:
            span = expand_notation(layers, n_layers, 0)
        except NotationError as err:
            fail(where, f"{err} in {layers!r}; expected 'a..b'")
        if ".." not in layers or len(span) < 1:
            fail(where, f"expected a range 'a..b', got {layers!r}")
        start, stop = span[0], span[-1]
    else:
        fail(where, f"expected a range 'a..b', got {layers!r}")
    if start > stop:
        fail(where, f"range {start}..{stop} must be ascending")
    if start < 0 or stop >= n_layers:
        fail(where, f"range {start}..{stop} out of range for {n_layers} base layers")
    return start, stop


def _is_int(value: object) -> bool:
    # numbers.Integral also admits numpy integers (an order built with numpy)
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_order(order: Sequence[int], n_layers: int, where: str) -> list[int]:
    """Validate an explicit schedule: non-empty, in range, every base layer visited."""
    if isinstance(order, (str, bytes)) or not isinstance(order, Sequence):
        fail(where, f"must be a list of base-layer indices, got {type(order).__name__}")
    order = list(order)
    if not order:
        fail(where, "empty schedule")
    for index in order:
        if not _is_int(index):
            fail(where, f"entries must be integers, got {index!r}")
        if index < 0 or index >= n_layers:
            fail(where, f"layer {index} out of range for {n_layers} base layers")
    missing = sorted(set(range(n_layers)) - set(order))
    if missing:
        fail(where, f"base layer {missing[0]} is never visited")
    return [int(index) for index in order]


def core_range(layers, n_layers: int, where: str = "schedule.layers") -> tuple[int, int]:
    """The looped range of a schedule's `layers` ("a..b"), or every layer when None."""
    return (0, n_layers - 1) if layers is None else layer_range(layers, n_layers, where)


def loop_layout(order: Sequence[int], n_layers: int, core: Sequence[int] | None = None,
                where: str = "schedule") -> tuple[int, int, int]:
    """(prelude, span, repeats) of a looped schedule: layers 0..a-1 once (the prelude), the core
    a..b in order `repeats` times, layers b+1..L-1 once (the coda); `core` = (a, b), None for
    every layer. This is what pattern cycle gives, on `layers: a..b` or on the whole model.
    One-line UserError for any other schedule."""
    start, stop = (0, n_layers - 1) if core is None else (int(core[0]), int(core[1]))
    order, span, coda = list(order), stop - start + 1, list(range(stop + 1, n_layers))
    body = order[start:len(order) - len(coda)]
    repeats = len(body) // span
    if (order[:start] != list(range(start)) or order[len(order) - len(coda):] != coda or not repeats
            or body != list(range(start, stop + 1)) * repeats):
        fail(where, f"{order} is not a looped schedule (layers 0..{start - 1} once, the core {start}..{stop}"
                    f" repeated, layers {stop + 1}..{n_layers - 1} once): use pattern cycle")
    return start, span, repeats


def looped_schedule(n_layers: int, core: Sequence[int] | None, repeats: int) -> list[int]:
    """The looped schedule (loop_layout) with the core run `repeats` times: pattern cycle at
    k = repeats - 1 on the core's layers."""
    start, stop = (0, n_layers - 1) if core is None else (int(core[0]), int(core[1]))
    if not _is_int(repeats) or repeats < 1:
        raise ValueError(f"looped_schedule: repeats must be >= 1, got {repeats!r}")
    return list(range(start)) + list(range(start, stop + 1)) * int(repeats) + list(range(stop + 1, n_layers))


def known_patterns(patterns: Mapping[str, str] | None = None) -> dict[str, str]:
    """Built-ins plus user patterns (a built-in may be listed, with its own notation only)."""
    merged = dict(BUILTIN_PATTERNS)
    for name, text in (patterns or {}).items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            fail(f"patterns.{name}", "a pattern name must be an identifier (letters, digits, _)")
        if name in BUILTIN_PATTERNS:
            # params.yaml may list the built-ins (so DVC tracks them by name), unchanged only
            if text != BUILTIN_PATTERNS[name]:
                fail(f"patterns.{name}", f"redefines a built-in pattern (its notation is {BUILTIN_PATTERNS[name]!r})")
            continue
        if name in _FUNCTIONS or name in ("L", "k"):
            fail(f"patterns.{name}", "is a reserved word of the notation")
        if not isinstance(text, str):
            fail(f"patterns.{name}", f"must be a notation string, got {type(text).__name__}")
        merged[name] = text
    return merged


def resolve_schedule(
    spec: ScheduleSpec | Mapping | None,
    n_layers: int,
    patterns: Mapping[str, str] | None = None,
    where: str = "schedule",
    listed: Mapping[str, str] | None = None,
) -> list[int]:
    """Expand a ScheduleSpec (or its dict form) into a list of base indices for `n_layers`.

    `listed`: the only pattern names allowed, even with an explicit order (which the name then
    labels): params.yaml's `patterns:` section, which lists the built-ins it uses so that DVC
    tracks them; its user patterns are `patterns`. Default: every built-in and `patterns`."""
    if not isinstance(spec, ScheduleSpec):
        spec = ScheduleSpec.from_dict(spec, where)
    if not _is_int(n_layers) or n_layers < 1:
        fail(where, f"needs at least one base layer, got {n_layers!r}")
    table = known_patterns(patterns)
    names = table if listed is None else listed
    hint = "" if listed is None else "define it under patterns: in params.yaml; "
    pattern = spec.pattern
    if spec.order is None or listed is not None:
        if not isinstance(pattern, str) or not pattern.strip():
            fail(f"{where}.pattern", f"must be a pattern name or notation string, got {pattern!r}")
        pattern = pattern.strip()
        if (listed is not None or _NAME_RE.match(pattern)) and pattern not in names:
            fail(f"{where}.pattern", f"unknown pattern {pattern!r} ({hint}known: {', '.join(names)})")
    if spec.order is not None:
        return check_order(spec.order, n_layers, f"{where}.order")
    if not _is_int(spec.k):
        fail(f"{where}.k", f"must be an integer, got {spec.k!r}")
    if spec.k < 0:
        fail(f"{where}.k", f"must be >= 0, got {spec.k}")
    if _NAME_RE.match(pattern):
        text, label = table[pattern], f"pattern {pattern!r} = {table[pattern]!r}: "
    else:
        text, label = pattern, ""
    if spec.layers is None:
        start, stop = 0, n_layers - 1
    else:
        start, stop = layer_range(spec.layers, n_layers, f"{where}.layers")
    span = stop - start + 1
    try:
        inner = expand_notation(text, span, spec.k)
    except NotationError as err:
        fail(f"{where}.pattern", f"{label}{err}")
    if not inner:
        fail(f"{where}.pattern", f"{label}empty schedule")
    for index in inner:
        if index < 0 or index >= span:
            scope = f"{span} base layers" if spec.layers is None else f"the {span} layers of range {start}..{stop}"
            fail(f"{where}.pattern", f"{label}layer {index} out of range for {scope}")
    order = list(range(start)) + [start + index for index in inner] + list(range(stop + 1, n_layers))
    missing = sorted(set(range(n_layers)) - set(order))
    if missing:
        fail(f"{where}.pattern", f"{label}base layer {missing[0]} is never visited")
    return order


__all__ = [
    "BUILTIN_PATTERNS",
    "MAX_SCHEDULE_LENGTH",
    "NotationError",
    "ScheduleSpec",
    "check_notation",
    "check_order",
    "core_range",
    "expand_notation",
    "known_patterns",
    "loop_layout",
    "looped_schedule",
    "resolve_schedule",
]
