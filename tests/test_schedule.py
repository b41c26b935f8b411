"""Reuse schedules: the paper's orders, the notation, config round trips, one-line errors."""

import pytest
from omegaconf import OmegaConf

from vld.errors import UserError
from vld.model.schedule import (
    BUILTIN_PATTERNS,
    ScheduleSpec,
    check_notation,
    expand_notation,
    NotationError,
    resolve_schedule,
)

MIDDLE_CYCLE = {"middle_cycle": "0, cycle(1..L-2, k+1), L-1"}


def one_based(text):
    return [int(v) - 1 for v in text.split(",")]


# The table in paper.md (1-based there), L = 4.
PAPER_ORDERS = {
    ("sequence", 1): one_based("1,1,2,2,3,3,4,4"),
    ("sequence", 2): one_based("1,1,1,2,2,2,3,3,3,4,4,4"),
    ("sequence", 3): one_based("1,1,1,1,2,2,2,2,3,3,3,3,4,4,4,4"),  # "each layer 4 times in place"
    ("cycle", 1): one_based("1,2,3,4,1,2,3,4"),
    ("cycle", 2): one_based("1,2,3,4,1,2,3,4,1,2,3,4"),
    ("cycle", 3): one_based("1,2,3,4,1,2,3,4,1,2,3,4,1,2,3,4"),
    ("inverse_cycle", 1): one_based("1,2,3,4,4,3,2,1"),
    ("inverse_cycle", 2): one_based("1,2,3,4,4,3,2,1,1,2,3,4"),
    ("inverse_cycle", 3): one_based("1,2,3,4,4,3,2,1,1,2,3,4,4,3,2,1"),
}


@pytest.mark.parametrize("pattern,k", sorted(PAPER_ORDERS))
def test_paper_table_orders_l4(pattern, k):
    assert resolve_schedule(ScheduleSpec(pattern, k), 4) == PAPER_ORDERS[(pattern, k)]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_eight_layer_analogues(k):
    layers = list(range(8))
    assert resolve_schedule(ScheduleSpec("cycle", k), 8) == layers * (k + 1)
    assert resolve_schedule(ScheduleSpec("sequence", k), 8) == [i for i in layers for _ in range(k + 1)]
    expected = []
    for block in range(k + 1):
        expected += layers if block % 2 == 0 else layers[::-1]
    assert resolve_schedule(ScheduleSpec("inverse_cycle", k), 8) == expected


@pytest.mark.parametrize("pattern", ["base", "sequence", "cycle", "inverse_cycle"])
def test_k0_is_identity(pattern):
    assert resolve_schedule(ScheduleSpec(pattern, 0), 5) == [0, 1, 2, 3, 4]


def test_base_ignores_k():
    assert resolve_schedule(ScheduleSpec("base", 3), 4) == [0, 1, 2, 3]


def test_layer_subsets_on_eight_layers():
    # Paper Table 7: cycle over layers 1-4 only / 5-8 only (0-based 0..3 / 4..7).
    assert resolve_schedule(ScheduleSpec("cycle", 1, layers="0..3"), 8) == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]
    assert resolve_schedule(ScheduleSpec("cycle", 1, layers="4..7"), 8) == [0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7]
    assert resolve_schedule(ScheduleSpec("cycle", 2, layers="4..7"), 8) == [0, 1, 2, 3] + [4, 5, 6, 7] * 3
    assert resolve_schedule(ScheduleSpec("sequence", 1, layers="2..3"), 6) == [0, 1, 2, 2, 3, 3, 4, 5]
    assert resolve_schedule(ScheduleSpec("inverse_cycle", 1, layers=[1, 2]), 4) == [0, 1, 2, 2, 1, 3]
    assert resolve_schedule(ScheduleSpec("cycle", 1, layers="0..L-1"), 3) == [0, 1, 2, 0, 1, 2]


def test_explicit_order_ignores_pattern_and_k():
    spec = ScheduleSpec("cycle", 3, order=[2, 0, 1, 1])
    assert resolve_schedule(spec, 3) == [2, 0, 1, 1]


def test_user_pattern_middle_cycle():
    for k, expected in [(0, [0, 1, 2, 3]), (1, [0, 1, 2, 1, 2, 3]), (2, [0, 1, 2, 1, 2, 1, 2, 3])]:
        assert resolve_schedule(ScheduleSpec("middle_cycle", k), 4, MIDDLE_CYCLE) == expected
    assert resolve_schedule(ScheduleSpec("middle_cycle", 1), 8, MIDDLE_CYCLE) == [0] + list(range(1, 7)) * 2 + [7]


def test_notation_features():
    assert expand_notation("0..L-1", 4, 0) == [0, 1, 2, 3]
    assert expand_notation("L-1..0", 4, 0) == [3, 2, 1, 0]
    assert expand_notation("reverse(0..2), 3", 4, 0) == [2, 1, 0, 3]
    assert expand_notation("cycle(0, 1, 2)", 4, 0) == [0, 1, 0, 1]  # last argument is the count
    assert expand_notation("sequence(cycle(0..1, 2), k)", 4, 2) == [0, 0, 1, 1, 0, 0, 1, 1]
    assert expand_notation("inverse_cycle(0..2, 3)", 4, 0) == [0, 1, 2, 2, 1, 0, 0, 1, 2]
    assert expand_notation("(L + k) // 2 * 2 - 1, -(-3)", 5, 1) == [5, 3]
    assert expand_notation(" 0 ,1 ,  2 ", 3, 0) == [0, 1, 2]
    assert expand_notation("cycle(0..1, 0), 2", 3, 0) == [2]


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "empty pattern"),
        ("0..L-1,", "expected a number, L or k, got end of pattern"),
        ("cycle(0..L-1)", "cycle(s, n): the last argument must be a single count n"),
        ("cycle(0..L-1, 0..1)", "cycle(s, n): the last argument must be a single count n"),
        ("cycle(0..L-1, -1)", "cycle(s, n): count must be >= 0, got -1"),
        ("cycel(0..L-1, 2)", "unknown function 'cycel' (known: cycle, sequence, inverse_cycle, reverse)"),
        ("0..N", "unknown name 'N' (variables: L, k)"),
        ("1 // (k - k)", "division by zero"),
        ("0; 1", "unexpected character ';' at position 1"),
        ("0 1", "unexpected 1"),
        ("cycle(0..L-1, 100000)", "cycle(s, n) is longer than 100000"),
    ],
)
def test_notation_errors(text, message):
    with pytest.raises(NotationError) as err:
        expand_notation(text, 4, 1)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "text,message",
    [
        ("cycle(0..L-1", "expected ')', got end of pattern"),
        ("cycel(0..L-1, 2)", "unknown function 'cycel' (known: cycle, sequence, inverse_cycle, reverse)"),
        ("0..L-1,", "expected a number, L or k, got end of pattern"),
        ("cycle(0..L-1)", "cycle(s, n): the last argument must be a single count n"),
        # after a count that is negative at the first probe (k = 1), the next probe reads on
        ("cycle(0..L-1, k-2), 0 1", "unexpected 1"),
    ],
)
def test_check_notation_reports_what_no_value_avoids(text, message):
    with pytest.raises(UserError) as err:
        check_notation(text, "patterns.p")
    assert str(err.value) == f"patterns.p: {message}"


@pytest.mark.parametrize("text", ["cycle(0..L-1, k-5)", "cycle(0..L-1, 0..k-1)", "1 // (k - 1)", "0..L+9",
                                  "cycle(0..L-1, 100000)", *BUILTIN_PATTERNS.values(), "0, cycle(1..L-2, k+1), L-1"])
def test_check_notation_leaves_value_errors_to_the_variant(text):
    check_notation(text, "patterns.p")  # each is wrong for some (L, k) only, or never


def test_config_round_trip_through_yaml():
    """Every built-in and the params-defined example survive params.yaml -> spec -> schedule."""
    params = OmegaConf.create(
        {
            "patterns": dict(MIDDLE_CYCLE),
            "variants": {
                name: ScheduleSpec(name, 2).to_dict() for name in [*BUILTIN_PATTERNS, "middle_cycle"]
            }
            | {"sub": ScheduleSpec("cycle", 1, layers="4..7").to_dict(), "explicit": ScheduleSpec(order=[0, 0, 1, 2, 3, 4, 5, 6, 7]).to_dict()},
        }
    )
    loaded = OmegaConf.create(OmegaConf.to_yaml(params))
    plain = OmegaConf.to_container(loaded, resolve=True)
    for name, spec_dict in plain["variants"].items():
        spec = ScheduleSpec.from_dict(spec_dict, where=f"variants.{name}")
        assert spec.to_dict() == spec_dict
        direct = resolve_schedule(ScheduleSpec(**spec_dict), 8, MIDDLE_CYCLE)
        assert resolve_schedule(spec, 8, plain["patterns"], where=f"variants.{name}") == direct
        assert resolve_schedule(spec_dict, 8, plain["patterns"]) == direct
    assert resolve_schedule(plain["variants"]["middle_cycle"], 8, plain["patterns"]) == [0] + list(range(1, 7)) * 3 + [7]


def test_builtins_may_be_listed_unchanged_in_patterns():
    listed = dict(BUILTIN_PATTERNS) | MIDDLE_CYCLE  # as params.yaml lists them
    assert resolve_schedule(ScheduleSpec("cycle", 1), 4, listed) == [0, 1, 2, 3, 0, 1, 2, 3]
    assert resolve_schedule(ScheduleSpec("middle_cycle", 1), 4, listed) == [0, 1, 2, 1, 2, 3]


def test_inline_notation_as_pattern():
    assert resolve_schedule(ScheduleSpec("cycle(0..L-1, k+1)", 1), 3) == [0, 1, 2, 0, 1, 2]


WHERE = "variants.cyc.schedule"


@pytest.mark.parametrize(
    "spec,n_layers,patterns,message",
    [
        (ScheduleSpec("cycl", 1), 4, None,
         f"{WHERE}.pattern: unknown pattern 'cycl' (known: base, sequence, cycle, inverse_cycle)"),
        (ScheduleSpec("cycl", 1), 4, MIDDLE_CYCLE,
         f"{WHERE}.pattern: unknown pattern 'cycl' (known: base, sequence, cycle, inverse_cycle, middle_cycle)"),
        (ScheduleSpec("cycle", -1), 4, None, f"{WHERE}.k: must be >= 0, got -1"),
        (ScheduleSpec("cycle", 1.5), 4, None, f"{WHERE}.k: must be an integer, got 1.5"),
        (ScheduleSpec(order=[0, 1, 2, 9]), 8, None, f"{WHERE}.order: layer 9 out of range for 8 base layers"),
        (ScheduleSpec(order=[0, 1, 2, -1]), 4, None, f"{WHERE}.order: layer -1 out of range for 4 base layers"),
        (ScheduleSpec(order=[0, 1, 2, 4, 5, 6, 7]), 8, None, f"{WHERE}.order: base layer 3 is never visited"),
        (ScheduleSpec(order=[]), 4, None, f"{WHERE}.order: empty schedule"),
        (ScheduleSpec("0..L", 1), 4, None, f"{WHERE}.pattern: layer 4 out of range for 4 base layers"),
        (ScheduleSpec("cycle(0..L-1, k)", 0), 4, None, f"{WHERE}.pattern: empty schedule"),
        (ScheduleSpec("0, L-1"), 4, None, f"{WHERE}.pattern: base layer 1 is never visited"),
        (ScheduleSpec("bad", 1), 4, {"bad": "0..L"},
         f"{WHERE}.pattern: pattern 'bad' = '0..L': layer 4 out of range for 4 base layers"),
        (ScheduleSpec("bad", 1), 4, {"bad": "cycle(0..L-1 k)"},
         f"{WHERE}.pattern: pattern 'bad' = 'cycle(0..L-1 k)': expected ')', got 'k'"),
        (ScheduleSpec("cycle", 1, layers="4..8"), 8, None, f"{WHERE}.layers: range 4..8 out of range for 8 base layers"),
        (ScheduleSpec("cycle", 1, layers="7..4"), 8, None, f"{WHERE}.layers: range 7..4 must be ascending"),
        (ScheduleSpec("cycle", 1, layers="4"), 8, None, f"{WHERE}.layers: expected a range 'a..b', got '4'"),
        (ScheduleSpec("0..L", 1, layers="4..7"), 8, None,
         f"{WHERE}.pattern: layer 4 out of range for the 4 layers of range 4..7"),
        ({"pattern": "cycle", "kk": 1}, 4, None, f"{WHERE}.kk: unknown key (known: k, layers, order, pattern)"),
        (ScheduleSpec("cycle", 1), 4, {"cycle": "0..L-1"},
         "patterns.cycle: redefines a built-in pattern (its notation is 'cycle(0..L-1, k+1)')"),
        (ScheduleSpec("cycle", 1), 4, {"my pattern": "0..L-1"},
         "patterns.my pattern: a pattern name must be an identifier (letters, digits, _)"),
        (ScheduleSpec("cycle", 1), 4, {"mine": 3}, "patterns.mine: must be a notation string, got int"),
        (ScheduleSpec("cycle", 1), 0, None, f"{WHERE}: needs at least one base layer, got 0"),
    ],
)
def test_bad_specs_fail_with_one_line(spec, n_layers, patterns, message):
    with pytest.raises(UserError) as err:
        resolve_schedule(spec, n_layers, patterns, where=WHERE)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def test_schedule_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, vld.model.schedule, vld.model.config, vld.model; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
