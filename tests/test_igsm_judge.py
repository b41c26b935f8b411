"""iGSM judge: corruptions are caught with the right reason; garbage never raises; any lexicon."""

import json
import random
import re

import pytest

from vld.data.igsm.generator import ABS, PRESETS, Generator, IgsmConfig, light_op
from vld.data.igsm.judge import REASONS, Verdict, judge, parse_problem
from vld.data.igsm.lexicon import DEFAULT_PATH, Lexicon
from vld.errors import UserError

LEX = Lexicon.load()


@pytest.fixture(scope="module")
def problems():
    gen = Generator(PRESETS["med"])
    rng = random.Random(17)
    return [gen.make(rng, op, "train" if op <= 15 else "test") for op in (2, 3, 5, 8, 12, 15, 20, 23) for _ in range(15)]


def steps_of(solution):
    return solution[:-1].split(". ")


def join(steps):
    return ". ".join(steps) + "."


def reason_code(v: Verdict):
    return v.reason.split(":")[0] if v.reason else None


def test_correct_solutions_pass(problems):
    for P in problems:
        assert judge(P.text, P.solution, str(P.answer), LEX) == Verdict(True, True, None)
        assert judge(P.text, P.solution, f" {P.answer} ", str(DEFAULT_PATH)) == Verdict(True, True, None)


def binary_assignments(steps):
    """(step index, assignment index, parts) of every 'sym = a op b = n op m = v' assignment."""
    for si, step in enumerate(steps):
        assigns = step.split("; ")
        for ai, a in enumerate(assigns[1:], 1):
            parts = a.split(" = ")
            if len(parts) == 4:
                yield si, ai, parts


def replace_assign(steps, si, ai, parts):
    assigns = steps[si].split("; ")
    assigns[ai] = " = ".join(parts)
    out = list(steps)
    out[si] = "; ".join(assigns)
    return out


def test_corrupted_result_number_is_an_arithmetic_error(problems):
    checked = 0
    for P in problems:
        steps = steps_of(P.solution)
        for si, ai, parts in binary_assignments(steps):
            bad = list(parts)
            bad[3] = str((int(parts[3]) + 1 + si) % 23)
            v = judge(P.text, join(replace_assign(steps, si, ai, bad)), str(P.answer), LEX)
            assert not v.solution_correct and reason_code(v) == "arithmetic error", v
            assert v.answer_correct  # the answer metric only reads the answer
            checked += 1
            break
    assert checked > 50


def test_corrupted_operand_number_is_an_arithmetic_error(problems):
    checked = 0
    for P in problems:
        steps = steps_of(P.solution)
        for si, ai, parts in binary_assignments(steps):
            nums = parts[2].split(" ")
            nums[0] = str((int(nums[0]) + 5) % 23)
            bad = [parts[0], parts[1], " ".join(nums), parts[3]]
            v = judge(P.text, join(replace_assign(steps, si, ai, bad)), str(P.answer), LEX)
            assert reason_code(v) == "arithmetic error", v
            checked += 1
            break
    assert checked > 50


def test_corrupted_symbol_is_undefined(problems):
    checked = 0
    for P in problems:
        steps = steps_of(P.solution)
        used = set(re.findall(r"\b[A-Za-z]\b", P.solution.replace("Define", "")))
        fresh = next(c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in used)
        for si, ai, parts in binary_assignments(steps):
            syms = parts[1].split(" ")
            if not re.fullmatch(r"[A-Za-z]", syms[2]):
                continue
            syms[2] = fresh
            bad = [parts[0], " ".join(syms), parts[2], parts[3]]
            v = judge(P.text, join(replace_assign(steps, si, ai, bad)), str(P.answer), LEX)
            assert reason_code(v) == "undefined symbol", v
            checked += 1
            break
    assert checked > 50


def test_corrupted_dependency_is_caught(problems):
    """Read another earlier parameter (with its true value, arithmetic redone): a wrong dependency."""
    checked = 0
    for P in problems:
        steps = steps_of(P.solution)
        values, step_syms = {}, []
        for step in steps:
            x = re.search(r" as ([A-Za-z])$", step.split("; ")[0]).group(1)
            for a in step.split("; ")[1:]:
                parts = a.removeprefix("so ").split(" = ")
                values[parts[0]] = int(parts[-1])
            step_syms.append(x)
        for si in range(1, len(steps)):
            assigns = steps[si].split("; ")
            parts = assigns[-1].removeprefix("so ").split(" = ")
            earlier = step_syms[:si]
            if len(parts) == 3 and parts[1] in earlier:  # copy: so x = E = v
                other = next((s for s in earlier if s != parts[1]), None)
                if other is None:
                    continue
                assigns[-1] = f"so {parts[0]} = {other} = {values[other]}"
            elif len(parts) == 4:
                syms, nums = parts[1].split(" "), parts[2].split(" ")
                if syms[2] not in earlier:
                    continue
                other = next((s for s in earlier if s not in (syms[0], syms[2])), None)
                if other is None:
                    continue
                syms[2], nums[2] = other, str(values[other])
                a, o, b = int(nums[0]), nums[1], int(nums[2])
                res = (a + b) % 23 if o == "+" else ((a - b) % 23 if o == "-" else (a * b) % 23)
                assigns[-1] = f"so {parts[0]} = {' '.join(syms)} = {' '.join(nums)} = {res}"
            else:
                continue
            bad = list(steps)
            bad[si] = "; ".join(assigns)
            v = judge(P.text, join(bad), str(P.answer), LEX)
            assert reason_code(v) == "wrong dependency", (v, join(bad))
            checked += 1
            break
    assert checked > 40


def test_wrong_final_parameter_and_wrong_answer(problems):
    for P in problems:
        steps = steps_of(P.solution)
        if len(steps) > 1:
            v = judge(P.text, join(steps[:-1]), str(P.answer), LEX)
            assert reason_code(v) == "wrong final parameter", v
        v = judge(P.text, P.solution, str((P.answer + 1) % 23), LEX)
        assert v == Verdict(False, False, v.reason) and reason_code(v) == "wrong answer"


def test_an_answer_with_leading_zeros_is_wrong_as_in_the_reference(problems):
    """The reference compares the answer as text: `015` for 15 and `00` for 0 are wrong (a model
    can write them: the tokenizer decodes 0 then 15 as `015`); spaces around it are not part of it."""
    zero = [P for P in problems if P.answer == 0]
    two_digits = [P for P in problems if P.answer >= 10]
    assert zero and two_digits  # the fixture has both kinds
    for P in problems:
        for padded in ("0" + str(P.answer), "00" + str(P.answer)):
            v = judge(P.text, P.solution, padded, LEX)
            assert v == Verdict(False, False, v.reason) and reason_code(v) == "wrong answer", (padded, v)
            assert not judge(P.text, None, padded, LEX).answer_correct
        assert judge(P.text, None, f" {P.answer}\n", LEX).answer_correct


def test_unnecessary_but_correct_steps_are_allowed():
    gen = Generator(PRESETS["med"])
    rng = random.Random(4)
    found = 0
    for _ in range(200):
        P = gen.make(rng, 6, "train")
        if P.query >= ABS:
            continue
        pos = {ref: i for i, ref in enumerate(P.order)}
        need_q = P.necessary(P.query)
        for other in range(len(P.edges)):
            need_o = P.necessary(other)
            if other in need_q or max(pos[r] for r in need_o if r in pos) > pos[P.query]:
                continue
            # the steps of a parameter the question does not need, then the real solution
            need = need_o | need_q
            gen._solution(P, random.Random(0), P.query, need, P.op_of(need))
            assert P.solution.count("Define ") == len(need) > len(need_q)
            assert judge(P.text, P.solution, str(P.answer), gen.lexicon) == Verdict(True, True, None)
            found += 1
            break
    assert found > 20


GARBAGE = [
    "", " ", ".", "..", "Define", "Define . as x;", "so x = 3.", "Define Ashford's Golden Crust as x; so x = ",
    "Define Ashford's Golden Crust as x; so x = 99999999999999999999999.", "\x00\xff", "ü" * 1000,
    "Define Ashford's Golden Crust as x; so x = x + x = 1 + 1 = 2.", "; ; ; = = =", "x = 1 + 2 = 3.",
    "Define Ashford's Golden Crust as xy; so xy = 1.", "<sep><eos><unk>", "Define " * 5000,
]


def test_garbage_never_raises(problems):
    P = problems[0]
    # prefixes short of the last step (the final period is optional: the whole solution without it is right)
    texts = GARBAGE + [P.solution[:i] for i in range(0, len(P.solution) - 1, 7)]
    texts += [P.solution.replace(" = ", " =", 1), P.solution.replace(";", ""), P.solution * 2]
    for sol in texts:
        for ans in ("", "x", str(P.answer), "-1", "1e9", " 7 7"):
            v = judge(P.text, sol, ans, LEX)
            assert isinstance(v.answer_correct, bool) and isinstance(v.solution_correct, bool)
            assert not v.solution_correct and v.reason.split(":")[0] in REASONS
    for prob in ("", "How many", "The number of each X's Y equals 3. How many Y does X have?", P.text[:50], None, 5):
        v = judge(prob, P.solution, str(P.answer), LEX)
        assert v.reason.startswith("unparseable") and not v.answer_correct
    assert judge(P.text, None, None, LEX).reason  # not even strings
    assert judge(P.text, P.solution, str(P.answer), "/nonexistent/lexicon.json").reason.startswith("unparseable")


def test_judge_with_a_user_lexicon(tmp_path):
    """Names with "'s" and " and " (and one name in two hierarchies), parsed against the lexicon file."""
    items = lambda base: [f"{base} {i}" for i in ("Alpha", "Beta", "Gamma", "Delta")]
    data = {
        "hierarchies": [
            {"name": "h1", "levels": [
                {"categories": [{"name": "Town", "items": ["Nature's Food Patch", "Salt and Pepper", "Mom's Place", "Rock and Roll"]}]},
                {"categories": [{"name": "Shop", "items": ["Bob's Shop", "Bits and Bobs", "Joe's", "Odds and Ends"]}]},
                {"categories": [{"name": "Product", "items": items("Item")}]},
                {"categories": [{"name": "Ingredient", "items": ["Eve's Salt", "Fish and Chips", "Pepper", "Salt"]}]},
            ]},
            {"name": "h2", "levels": [{"categories": [{"name": f"L{i}", "items": items(f"Thing{i}")[:3] + [f"Pepper{i}" if i < 3 else "Salt"]}]} for i in range(4)]},
        ]
    }
    path = tmp_path / "lex.json"
    path.write_text(json.dumps(data))
    cfg = IgsmConfig(max_op=8, max_edge=12, lexicon_path=str(path))
    cfg.validate()
    gen = Generator(cfg)
    lex = Lexicon.load(path)
    rng = random.Random(1)
    seen_apostrophe = 0
    for _ in range(300):
        P = gen.make(rng, light_op(rng, 8), None)
        seen_apostrophe += "Nature's Food Patch's" in P.text or "Bob's Shop's" in P.text
        assert judge(P.text, P.solution, str(P.answer), path) == Verdict(True, True, None)
        assert judge(P.text, P.solution, str(P.answer), lex).solution_correct
        parsed = parse_problem(P.text, lex)
        assert len(parsed.defs) == len(P.edges)
    assert seen_apostrophe > 10
    assert lex.split_pair("Nature's Food Patch's Bob's Shop") == ("Nature's Food Patch", "Bob's Shop")
    assert lex.split_pair("Salt and Pepper's Fish and Chips") == ("Salt and Pepper", "Fish and Chips")


def test_repeated_names_are_refused_for_generation_but_judged(tmp_path):
    data = Lexicon.load().to_dict()
    levels = data["hierarchies"][0]["levels"]
    levels[3]["categories"][0]["items"][0] = levels[2]["categories"][0]["items"][0]  # a name in two levels
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="repeated within the hierarchy"):
        IgsmConfig(lexicon_path=str(path)).validate()
    lex = Lexicon.load(path)  # the judge still reads it (a reference generator's lexicon does this)
    P = Generator(PRESETS["med"]).make(random.Random(0), 5, "train")
    assert judge(P.text, P.solution, str(P.answer), lex).answer_correct


# ---- hand-made wrong solutions (issue 15): each step is checked as a computation ----------------
CROISSANT = ("The number of each Ashford's Golden Crust equals 5. The number of each Ashford's Morning Loaf equals 0. "
             "The number of each Golden Crust's Croissant equals 2 times as much as the sum of each Ashford's Golden Crust "
             "and each Ashford's Morning Loaf. How many Croissant does Golden Crust have?")
HEAD = "Define Ashford's Golden Crust as a; so a = 5. Define Ashford's Morning Loaf as b; so b = 0. Define Golden Crust's Croissant as c; "


@pytest.mark.parametrize("last,reason", [
    ("t = a + b = 5 + 0 = 5; so c = 2 * t = 2 * 5 = 10.", None),
    ("t = b + a = 0 + 5 = 5; so c = t * 2 = 5 * 2 = 10.", None),  # the same computation, operands swapped
    # a temporary never consumed (the value is right because b = 0)
    ("t = a + b = 5 + 0 = 5; so c = 2 * a = 2 * 5 = 10.", "wrong dependency: step 3 computes t but never uses it"),
    # every predecessor read once, the value right by coincidence, the wrong expression (2a + b)
    ("t = 2 * a = 2 * 5 = 10; so c = t + b = 10 + 0 = 10.", "wrong dependency: step 3 combines"),
    # a temporary reused (t + t = 2 t, right value)
    ("t = a + b = 5 + 0 = 5; so c = t + t = 5 + 5 = 10.", "wrong dependency: step 3 uses its temporary t twice"),
    # a symbol of an earlier step defined again
    ("a = a + b = 5 + 0 = 5; so c = 2 * a = 2 * 5 = 10.", "undefined symbol: step 3 defines a again"),
    # a predecessor missing, the value right by coincidence
    ("so c = 2 * a = 2 * 5 = 10.", "wrong dependency: step 3 (Golden Crust's Croissant) misses Ashford's Morning Loaf"),
])
def test_hand_made_wrong_solutions_are_rejected_with_a_reason(last, reason):
    v = judge(CROISSANT, HEAD + last, "10", LEX)
    assert v.answer_correct
    if reason is None:
        assert v == Verdict(True, True, None)
    else:
        assert not v.solution_correct and v.reason.startswith(reason), v


def two_category_lexicon():
    cat = lambda name, items: {"categories": [{"name": name, "items": items}]}
    return Lexicon.from_dict({"hierarchies": [{"name": "shops", "levels": [
        cat("Town", ["Oldtown", "Newtown"]), cat("Shop", ["Corner Shop", "Kiosk"]),
        cat("Product", ["Crisps", "Popcorn", "Toffee"]), cat("Ingredient", ["Salt", "Corn", "Popcorn"]),
    ]}]})


def test_a_name_in_two_categories_is_judged_by_its_layer():
    """Popcorn is a product and an ingredient; here it sits in the product layer, so the
    Kiosk's ingredients count Popcorn's ingredients, not Popcorn itself."""
    lex = two_category_lexicon()
    problem = ("The number of each Kiosk's Crisps equals 3. The number of each Kiosk's Popcorn equals 2. "
               "The number of each Crisps's Salt equals 4. The number of each Popcorn's Corn equals 5. How many Ingredient does Kiosk have?")
    solution = ("Define Kiosk's Crisps as a; so a = 3. Define Kiosk's Popcorn as b; so b = 2. Define Crisps's Salt as c; so c = 4. "
                "Define Popcorn's Corn as d; so d = 5. Define Crisps's Ingredient as e; so e = c = 4. Define Popcorn's Ingredient as f; so f = d = 5. "
                "Define Kiosk's Ingredient as g; h = a * e = 3 * 4 = 12; i = b * f = 2 * 5 = 10; so g = h + i = 12 + 10 = 22.")
    assert judge(problem, solution, "22", lex) == Verdict(True, True, None)
    # reading Popcorn as an ingredient (lexicon membership) is the wrong computation
    by_membership = ("Define Kiosk's Crisps as a; so a = 3. Define Kiosk's Popcorn as b; so b = 2. Define Crisps's Salt as c; so c = 4. "
                     "Define Crisps's Ingredient as e; so e = c = 4. Define Kiosk's Ingredient as g; h = a * e = 3 * 4 = 12; so g = h + b = 12 + 2 = 14.")
    v = judge(problem, by_membership, "14", lex)
    assert not v.answer_correct and v.reason.startswith("wrong dependency: step 5 (Kiosk's Ingredient)"), v
    assert parse_problem(problem, lex).layer_cats == [frozenset({"Shop"}), frozenset({"Product"}), frozenset({"Ingredient"})]
    # the same name in the ingredient layer is an ingredient
    lower = ("The number of each Kiosk's Crisps equals 3. The number of each Crisps's Popcorn equals 4. "
             "How many Ingredient does Kiosk have?")
    assert parse_problem(lower, lex).value(("Kiosk", "Ingredient"), lex) == 12


@pytest.mark.parametrize("build", [
    lambda: "How many " + "Ashford does " * 8000 + "have? The number of each Ashford's Golden Crust equals 3.",
    lambda: "The number of each " + "Ashford's " * 10000 + "Golden Crust equals 3. How many Golden Crust does Ashford have?",
    lambda: "The number of each Ashford's Golden Crust equals 3" + ". The number of each Ashford's Golden Crust equals 3" * 1900 + ". How many Golden Crust does Ashford have?",
    lambda: "How many How many " * 6000,
    lambda: "The number of each Ashford's Golden Crust equals " + "the sum of each " * 6000 + "Ashford's Golden Crust. How many Golden Crust does Ashford have?",
])
def test_a_100k_character_text_is_judged_fast(build):
    import time

    text = build()
    assert 90_000 < len(text) < 200_000
    start = time.perf_counter()
    v1 = judge(text, "Define Ashford's Golden Crust as a; so a = 3.", "3", LEX)
    v2 = judge(CROISSANT, ("Define Ashford's Golden Crust as a; " + "t = a + a = 5 + 5 = 10; " * 4000)[:100_000] + "so a = 1.", "3", LEX)
    assert time.perf_counter() - start < 0.5
    assert not v1.solution_correct and not v2.solution_correct
