"""Tests for compexp_core.engine.formula: printing, parsing, builders and evaluation."""

import contextlib
import copy
import pickle
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compexp_core.engine.formula import (OP_CODES, And, Formula, Leaf, Not, Or, format_name, formula_key,
                                         key_formula)
from compexp_core.engine.formula import reference_length, reference_text

A, B, C = Leaf("a"), Leaf("b"), Leaf("c")

# --- printing -----------------------------------------------------------------

NAME_CASES = [
    ("water", "water"),
    ("ANDROID", "ANDROID"),
    ("sky-blue", "sky-blue"),
    ("c12", "c12"),
    ("wall_paper", "wall_paper"),
    ("notebook", "notebook"),
    ("living room", '"living room"'),
    ("tab\there", '"tab\there"'),
    ("and", '"and"'),
    ("AND", '"AND"'),
    ("Or", '"Or"'),
    ("nOt", '"nOt"'),
    ("a(b)", '"a(b)"'),
    (")", '")"'),
    ("", '""'),
    ('say "hi"', '"say \\"hi\\""'),
    ("back\\slash", '"back\\\\slash"'),
]


@pytest.mark.parametrize("name, expected", NAME_CASES)
def test_format_name(name, expected):
    assert format_name(name) == expected
    assert str(Leaf(name)) == expected


STR_CASES = [
    (A, "a"),
    (Not(A), "NOT a"),
    (Not(Not(A)), "NOT NOT a"),
    (And(A, B), "(a AND b)"),
    (Or(A, B), "(a OR b)"),
    (And(Or(Leaf("water"), Leaf("river")), Not(Leaf("blue"))), "((water OR river) AND NOT blue)"),
    (Or(A, And(B, C)), "(a OR (b AND c))"),
    (Not(And(A, B)), "NOT (a AND b)"),
    (And(Not(Or(A, B)), Not(Not(C))), "(NOT (a OR b) AND NOT NOT c)"),
    (Or(Leaf("living room"), Not(Leaf("and"))), '("living room" OR NOT "and")'),
    (And(Leaf('x"y'), Leaf("p\\q")), '("x\\"y" AND "p\\\\q")'),
]


@pytest.mark.parametrize("f, expected", STR_CASES)
def test_str(f, expected):
    assert str(f) == expected
    assert repr(f) == f"Formula({expected!r})"


@pytest.mark.parametrize("f, expected", STR_CASES)
def test_parse_round_trip_table(f, expected):
    assert Formula.parse(expected) == f
    assert str(Formula.parse(expected)) == expected


def test_structural_equality_and_hash():
    assert And(A, B) == And(Leaf("a"), Leaf("b"))
    assert hash(And(A, B)) == hash(And(Leaf("a"), Leaf("b")))
    assert And(A, B) != Or(A, B)
    assert And(A, B) != And(B, A)
    assert Not(A) != A
    assert len({And(A, B), And(Leaf("a"), Leaf("b")), Or(A, B)}) == 2


def test_immutable():
    f = And(A, B)
    with pytest.raises(AttributeError):
        f.left = C  # type: ignore[misc]
    with pytest.raises(AttributeError):
        A.name = "z"  # type: ignore[misc]


def test_constructor_type_checks():
    with pytest.raises(TypeError):
        Leaf(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Not("a")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        And(A, "b")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Formula()  # abstract


# --- parsing --------------------------------------------------------------------

PARSE_CASES = [
    ("a and b or c", Or(And(A, B), C)),  # left-assoc, equal precedence
    ("a or b and c", And(Or(A, B), C)),
    ("a OR (b AND c)", Or(A, And(B, C))),
    ("not a AND b", And(Not(A), B)),
    ("NOT (a AND b)", Not(And(A, B))),
    ("  (  a\tAND\n b )  ", And(A, B)),
    ("(a)", A),
    ("((a))", A),
    ("a AND NOT NOT b", And(A, Not(Not(B)))),
    ("ANDROID or notebook", Or(Leaf("ANDROID"), Leaf("notebook"))),
    ('"AND" AND "or"', And(Leaf("AND"), Leaf("or"))),
    ('"a b"OR"c"', Or(Leaf("a b"), C)),
    ('"x\\\\y\\""', Leaf('x\\y"')),
    ('""', Leaf("")),
    ("(a)AND(b)", And(A, B)),
]


@pytest.mark.parametrize("text, expected", PARSE_CASES)
def test_parse(text, expected):
    assert Formula.parse(text) == expected


BAD_CASES = [
    ("", 0),
    ("   ", 3),
    ("(a AND b", 8),
    ("a AND b)", 7),
    ("((a)", 4),
    ("a AND", 5),
    ("a OR ", 5),
    ("NOT", 3),
    ("AND a", 0),
    ("()", 1),
    ("a b", 2),
    ("(a AND b) c", 10),
    ('"abc', 0),
    ('a OR "b', 5),
    ('"a\\x"', 2),
    ('"a\\', 2),
    ("a\\b", 1),
    ("a AND AND b", 6),
]


@pytest.mark.parametrize("text, pos", BAD_CASES)
def test_parse_errors(text, pos):
    with pytest.raises(ValueError) as info:
        Formula.parse(text)
    msg = str(info.value)
    assert repr(text) in msg
    assert msg.endswith(f"at position {pos}")


def test_parse_rejects_non_str():
    with pytest.raises(TypeError):
        Formula.parse(None)  # type: ignore[arg-type]


def test_parse_long_not_chain():
    f = Formula.parse("NOT " * 5000 + "a")
    depth = 0
    while isinstance(f, Not):
        f, depth = f.operand, depth + 1
    assert depth == 5000 and f == A


# --- hypothesis round trips ---------------------------------------------------------

names = st.one_of(
    st.sampled_from(["and", "AND", "or", "OR", "not", "NOT", "Not", "ANDROID", "", "a b"]),
    st.text(alphabet='ab AND or not ()"\\\t_-', max_size=8),
)
ops = st.sampled_from(["or", "and", "and_not", "or_not"])
trees = st.recursive(
    names.map(Leaf),
    lambda kids: st.one_of(
        kids.map(Not),
        st.builds(And, kids, kids),
        st.builds(Or, kids, kids),
    ),
    max_leaves=12,
)


@settings(max_examples=300)
@given(trees)
def test_round_trip_arbitrary_trees(f):
    s = str(f)
    assert Formula.parse(s) == f
    assert str(Formula.parse(s)) == s


@settings(max_examples=200)
@given(names, st.lists(st.tuples(ops, names), max_size=6))
def test_round_trip_left_deep(first, steps):
    f = Formula.from_steps(first, steps)
    assert Formula.parse(str(f)) == f
    assert str(Formula.parse(str(f))) == str(f)
    assert f.leaves() == (first, *(n for _, n in steps))
    assert len(f) == len(steps) + 1


@given(names)
def test_format_name_round_trip(name):
    assert Formula.parse(format_name(name)) == Leaf(name)


# --- len / leaves / builders ----------------------------------------------------------


@pytest.mark.parametrize(
    "f, leaves",
    [
        (A, ("a",)),
        (Not(A), ("a",)),
        (And(Or(A, B), Not(C)), ("a", "b", "c")),
        (Or(A, And(A, Not(B))), ("a", "a", "b")),
    ],
)
def test_len_leaves(f, leaves):
    assert f.leaves() == leaves
    assert len(f) == len(leaves)


def test_builders():
    assert A.or_("b") == Or(A, B)
    assert A.and_(B) == And(A, B)
    assert A.and_not("b") == And(A, Not(B))
    assert A.or_not(Or(B, C)) == Or(A, Not(Or(B, C)))
    with pytest.raises(TypeError):
        A.or_(3)  # type: ignore[arg-type]


def test_from_steps():
    f = Formula.from_steps("water", [("or", "river"), ("and_not", "blue")])
    assert str(f) == "((water OR river) AND NOT blue)"
    assert str(Formula.from_steps("a", [("and", "b"), ("or_not", "c")])) == "((a AND b) OR NOT c)"
    assert Formula.from_steps("a", iter([])) == A


def test_from_steps_unknown_op():
    with pytest.raises(ValueError, match=r"'xor'.*'or'.*'and'.*'and_not'.*'or_not'"):
        Formula.from_steps("a", [("or", "b"), ("xor", "c")])


# --- evaluate -----------------------------------------------------------------------

RNG = np.random.default_rng(0)
DENSE4 = RNG.random((3, 4, 5, 6)) < 0.5  # [N, K, H, W]
DENSE2 = RNG.random((7, 4)) < 0.5  # [N, K]
NAMES = ["water", "river", "blue", "living room"]


def _expected(m):
    water, river, blue, room = (m[:, j] for j in range(4))
    return {
        "water": water,
        "NOT blue": ~blue,
        "((water OR river) AND NOT blue)": (water | river) & ~blue,
        '(NOT (blue OR "living room") AND water)': ~(blue | room) & water,
        "((water AND water) OR NOT water)": np.ones_like(water),
        '(("living room" AND river) OR NOT (water AND blue))': (room & river) | ~(water & blue),
    }


@pytest.mark.parametrize("dense", [DENSE4, DENSE2], ids=["NKHW", "NK"])
def test_evaluate_dense(dense):
    for text, want in _expected(dense).items():
        got = Formula.parse(text).evaluate(dense, names=NAMES)
        assert got.dtype == bool
        assert got.shape == (dense.shape[0], *dense.shape[2:])
        np.testing.assert_array_equal(got, want, err_msg=text)


def test_evaluate_default_names_and_int_masks():
    want = (DENSE4[:, 0] | DENSE4[:, 1]) & ~DENSE4[:, 3]
    f = Formula.parse("(c0 OR c1) AND NOT c3")
    np.testing.assert_array_equal(f.evaluate(DENSE4), want)
    for dtype in (np.int8, np.uint8, np.int64):
        got = f.evaluate(DENSE4.astype(dtype))
        assert got.dtype == bool
        np.testing.assert_array_equal(got, want)
    # Integer masks are read as "!= 0", so a 2 counts as True.
    np.testing.assert_array_equal(Leaf("c0").evaluate(np.array([[2, 0], [0, 1]])), [True, False])


def test_evaluate_hand_computed():
    m = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=bool)
    f = Formula.parse("(a OR b) AND NOT c")
    np.testing.assert_array_equal(f.evaluate(m, names=["a", "b", "c"]), [False, False, True, False])
    np.testing.assert_array_equal(Formula.parse("NOT a OR c").evaluate(m, names=["a", "b", "c"]), [True, True, False, True])


def test_evaluate_leaf_result_is_a_copy():
    m = DENSE2.copy()
    out = Leaf("c0").evaluate(m)
    out[:] = ~out
    np.testing.assert_array_equal(m, DENSE2)


class TinyConceptSet:
    """Duck-typed concept set that counts mask requests."""

    def __init__(self, names, masks):
        self.names = names
        self._masks = masks
        self.calls = []

    def concept_mask(self, j):
        self.calls.append(j)
        return self._masks[j]


def test_evaluate_concept_set():
    masks = [DENSE4[:, j] for j in range(4)]
    cs = TinyConceptSet(NAMES, masks)
    for text, want in _expected(DENSE4).items():
        cs.calls.clear()
        f = Formula.parse(text)
        np.testing.assert_array_equal(f.evaluate(cs), want, err_msg=text)
        # Each distinct leaf fetched exactly once, even if repeated in the formula.
        assert sorted(cs.calls) == sorted(NAMES.index(n) for n in set(f.leaves()))


def test_evaluate_concept_set_int_masks_and_copy():
    cs = TinyConceptSet(["x", "y"], [np.array([0, 3, 0]), np.array([1, 1, 0])])
    np.testing.assert_array_equal(Formula.parse("x AND y").evaluate(cs), [False, True, False])
    out = Leaf("y").evaluate(cs)
    out[0] = False
    assert cs._masks[1][0] == 1


def test_evaluate_concept_set_errors():
    cs = TinyConceptSet(["x", "y"], [np.zeros(3, bool), np.ones(3, bool)])
    with pytest.raises(ValueError, match="names"):
        Leaf("x").evaluate(cs, names=["x", "y"])
    with pytest.raises(ValueError, match="unknown concept 'z'"):
        Formula.parse("x OR z").evaluate(cs)
    with pytest.raises(TypeError, match="masks"):
        Leaf("x").evaluate(TinyConceptSet(["x"], [np.zeros(3)]))
    with pytest.raises(ValueError, match="unique"):
        Leaf("x").evaluate(TinyConceptSet(["x", "x"], [np.zeros(3, bool)] * 2))


def test_evaluate_dense_errors():
    with pytest.raises(ValueError, match=r"unknown concept 'sky' in formula '\(water OR sky\)'"):
        Formula.parse("water OR sky").evaluate(DENSE2, names=NAMES)
    with pytest.raises(ValueError, match="unknown concept 'water'"):
        Leaf("water").evaluate(DENSE2)  # default names are c0..c3
    with pytest.raises(TypeError, match="masks"):
        Leaf("c0").evaluate(DENSE2.astype(np.float32))
    for bad in (np.zeros(4, bool), np.zeros((2, 4, 3), bool), np.zeros((1, 2, 3, 4, 5), bool)):
        with pytest.raises(ValueError, match=r"masks.*\[N, K, H, W\] or \[N, K\]"):
            Leaf("c0").evaluate(bad)
    with pytest.raises(ValueError, match="names"):
        Leaf("water").evaluate(DENSE2, names=NAMES[:3])
    with pytest.raises(ValueError, match="unique"):
        Leaf("water").evaluate(DENSE2, names=["water", "river", "water", "blue"])


# --- depth: no operation recurses -------------------------------------------------------
# Formulas far deeper than the recursion limit, which the checks lower to 200 (restoring it
# after), so any recursive walk fails.

DEEP = 100_000
N_ROWS = 16
MASKS_DEEP = np.random.default_rng(1).random((N_ROWS, 4)) < 0.5  # [N, K]: concepts c0..c3
NAMES_DEEP = ["c0", "c1", "c2", "c3"]
# The masks as bit sets (bit r: row r), to compute expected values cheaply.
BITS = [sum(1 << r for r in range(N_ROWS) if MASKS_DEEP[r, j]) for j in range(4)]
ALL = (1 << N_ROWS) - 1
STEP_OPS = ["or", "and_not", "and", "or_not"]
STEP_WORDS = {"or": "OR", "and": "AND", "and_not": "AND NOT", "or_not": "OR NOT"}


@contextlib.contextmanager
def shallow_stack():
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def _check_deep(f, text, n_leaves, want_bits, pickles=False):
    """str, parse round trip, ==, hash, len, leaves, evaluate (and repr, pickle) of a deep
    formula; returns the parsed copy."""
    with shallow_stack():
        assert str(f) == text
        g = Formula.parse(text)
        assert g is not f and g == f and hash(g) == hash(f)
        assert str(g) == text
        assert len(f) == n_leaves and len(f.leaves()) == n_leaves and f.leaves() == g.leaves()
        assert f != Not(f)
        want = np.array([(want_bits >> r) & 1 for r in range(N_ROWS)], dtype=bool)
        np.testing.assert_array_equal(f.evaluate(MASKS_DEEP), want)
        if pickles:
            assert repr(f) == f"Formula({text!r})"
            assert pickle.loads(pickle.dumps(f)) == f and copy.deepcopy(f) == f
    return g


def _left_deep(n):
    """Steps, printed text and expected mask bits of a left-deep formula of n steps."""
    steps = [(STEP_OPS[i % 4], f"c{(i + 1) % 4}") for i in range(n)]
    text = "(" * n + "c0" + "".join(f" {STEP_WORDS[op]} {name})" for op, name in steps)
    bits = BITS[0]
    for op, name in steps:
        b = BITS[int(name[1:])]
        b = ALL & ~b if op.endswith("_not") else b
        bits = bits | b if op.startswith("or") else bits & b
    return steps, text, bits


def test_deep_left_formula_as_the_search_builds():
    steps, text, bits = _left_deep(DEEP)
    key = (0, *((OP_CODES[op], int(name[1:])) for op, name in steps))
    with shallow_stack():
        f = key_formula(key, NAMES_DEEP)  # by Formula.from_steps
    g = _check_deep(f, text, DEEP + 1, bits)
    with shallow_stack():
        assert g.steps() == ("c0", steps)
        assert formula_key(g, NAMES_DEEP.index) == key
        assert f.left == g.left and f.left != f and f != f.left.or_("c0")


def test_deep_right_nested_formula():
    leaves = [Leaf(name) for name in NAMES_DEEP]
    f, bits = leaves[3], BITS[3]
    with shallow_stack():
        for i in reversed(range(DEEP)):
            j = i % 3
            if i % 2:
                f, bits = And(leaves[j], f), BITS[j] & bits
            else:
                f, bits = Or(leaves[j], f), BITS[j] | bits
    text = "".join(f"(c{i % 3} {'AND' if i % 2 else 'OR'} " for i in range(DEEP)) + "c3" + ")" * DEEP
    _check_deep(f, text, DEEP + 1, bits)
    with shallow_stack():
        with pytest.raises(ValueError, match="not left-deep"):
            f.steps()
        with pytest.raises(ValueError, match="not left-deep"):
            formula_key(f, NAMES_DEEP.index)


def test_deep_not_chain():
    text = "NOT " * DEEP + "c1"
    with shallow_stack():
        f = Formula.parse(text)
        built = Leaf("c1")
        for _ in range(DEEP):
            built = Not(built)
        assert f == built and hash(f) == hash(built)
        g = Formula.parse(f"(c0 or {text})")
        assert g.right == f and len(g) == 2 and str(g) == f"(c0 OR {text})"
        np.testing.assert_array_equal(Not(f).evaluate(MASKS_DEEP), ~MASKS_DEEP[:, 1])
        with pytest.raises(ValueError, match="not left-deep"):
            f.steps()
    _check_deep(f, text, 1, BITS[1], pickles=True)


def test_deep_nested_parentheses_parse():
    with shallow_stack():
        assert Formula.parse("(" * DEEP + "c2" + ")" * DEEP) == Leaf("c2")
        assert str(Formula.parse("NOT (" * DEEP + "c2" + ")" * DEEP)) == "NOT " * DEEP + "c2"
        # ((((c0) AND c1)) AND c1) ...: a redundant pair of parentheses at every level.
        f = Formula.parse("((" * DEEP + "c0" + ") AND c1)" * DEEP)
        assert str(f) == "(" * DEEP + "c0" + " AND c1)" * DEEP
        # Unbalanced at depth: the error gives the position, as for shallow input.
        with pytest.raises(ValueError, match=f"expected '\\)' but found end of input at position {2 * DEEP + 1}$"):
            Formula.parse("(" * DEEP + "c2" + ")" * (DEEP - 1))
        with pytest.raises(ValueError, match=f"expected AND, OR or end of input but found '\\)' at position {2 * DEEP + 2}$"):
            Formula.parse("(" * DEEP + "c2" + ")" * (DEEP + 1))


def test_flat_10000_term_formula():
    n = 10_000
    steps, text, bits = _left_deep(n - 1)
    words = {"or": "or", "and": "AND", "and_not": "and not", "or_not": "OR NOT"}
    flat = "c0 " + " ".join(f"{words[op]} {name}" for op, name in steps)  # no parentheses
    with shallow_stack():
        f = Formula.parse(flat)
        assert f == Formula.from_steps("c0", steps)
    _check_deep(f, text, n, bits, pickles=True)
    with shallow_stack():
        assert f.steps() == ("c0", steps)
        assert key_formula(formula_key(f, NAMES_DEEP.index), NAMES_DEEP) == f


# --- the reference code's print style and length -----------------------------------------

def _category(name):
    return name.split(":")[0]


def _naive_reference_text(f, namer=str, sort=True):
    """The reference's to_str, written recursively as it is there (NOT passes no sort)."""
    if isinstance(f, Leaf):
        return namer(f.name)
    if isinstance(f, Not):
        return f"(NOT {_naive_reference_text(f.operand, namer, False)})"
    op = "AND" if isinstance(f, And) else "OR"
    left = _naive_reference_text(f.left, namer, sort)
    right = _naive_reference_text(f.right, namer, sort)
    if not sort or left < right:
        return f"({left} {op} {right})"
    return f"({right} {op} {left})"


@pytest.mark.parametrize("text, sort, expected", [
    ("a", True, "a"),
    ("(b OR a)", False, "(b OR a)"),
    ("(b OR a)", True, "(a OR b)"),                 # "b" < "a" is False: swapped
    ("(a OR b)", True, "(a OR b)"),
    ("(a OR a)", True, "(a OR a)"),                 # equal texts: swapped, the same text
    ("(a AND NOT b)", False, "(a AND (NOT b))"),
    ("(a AND NOT b)", True, "((NOT b) AND a)"),     # "(" < "a": the NOT goes first
    ("(a OR NOT b)", True, "((NOT b) OR a)"),
    ("((c OR b) AND a)", True, "((b OR c) AND a)"),  # inner swapped; "(b..." < "a": kept
    ("((c OR b) AND NOT a)", True, "((NOT a) AND (b OR c))"),  # "(b" < "(N" is False
    ("NOT (b OR a)", True, "(NOT (b OR a))"),       # a NOT's operand is never sorted
    ("(z AND NOT (b OR a))", True, "((NOT (b OR a)) AND z)"),
    ("NOT NOT a", True, "(NOT (NOT a))"),
])
def test_reference_text_by_hand(text, sort, expected):
    assert reference_text(Formula.parse(text), sort=sort) == expected


def test_reference_text_nli_names_and_category_namer():
    f = Formula.parse("((pre:tok:dog OR hyp:tok:cat) AND NOT oth:overlap:overlap50)")
    assert reference_text(f) == "((NOT oth:overlap:overlap50) AND (hyp:tok:cat OR pre:tok:dog))"
    assert reference_text(f, _category) == "((NOT oth) AND (hyp OR pre))"
    assert reference_text(f, _category, sort=False) == "((pre OR hyp) AND (NOT oth))"
    # The namer's texts are what is sorted: categories equal, the names' order is not used.
    g = Formula.parse("(hyp:tok:b OR hyp:tag:a)")
    assert reference_text(g) == "(hyp:tag:a OR hyp:tok:b)"
    assert reference_text(g, lambda n: n.split(":")[2]) == "(a OR b)"
    assert reference_text(Formula.parse("(pre:tok:a OR hyp:tok:b)"), lambda n: n[::-1]) \
        == "(a:kot:erp OR b:kot:pyh)"
    # Names are written as they are: no quotes.
    assert reference_text(Formula.parse('("living room" OR "and")')) == "(and OR living room)"


def test_reference_text_long_operands_with_a_common_prefix():
    # Both operands longer than the prefix the sort decision keeps, and equal over it.
    x, y = "x" * 300 + "b", "x" * 300 + "a"
    assert reference_text(Or(Leaf(x), Leaf(y))) == f"({y} OR {x})"
    assert reference_text(Or(Leaf(y), Leaf(x))) == f"({y} OR {x})"
    f = Or(And(Leaf(x), Leaf("q")), And(Leaf(y), Leaf("q")))
    assert reference_text(f) == _naive_reference_text(f) == f"((q AND {y}) OR (q AND {x}))"
    # One operand exactly as long as the prefix, the other longer.
    p = "p" * 128
    assert reference_text(Or(Leaf(p + "z"), Leaf(p))) == f"({p} OR {p}z)"


long_names = st.one_of(names, st.sampled_from(["x" * 130, "x" * 130 + "a", "(NOT", "((", "x:y"]))
long_trees = st.recursive(
    long_names.map(Leaf),
    lambda kids: st.one_of(kids.map(Not), st.builds(And, kids, kids), st.builds(Or, kids, kids)),
    max_leaves=12,
)


@settings(max_examples=300)
@given(long_trees, st.booleans())
def test_reference_text_matches_the_recursive_rule(f, sort):
    assert reference_text(f, sort=sort) == _naive_reference_text(f, sort=sort)
    assert reference_text(f, _category, sort) == _naive_reference_text(f, _category, sort)


@pytest.mark.parametrize("text, length", [
    ("a", 1), ("NOT a", 2), ("(a OR b)", 2), ("(a AND NOT b)", 3), ("NOT NOT a", 3),
    ("((a OR NOT b) AND NOT (c OR d))", 6),
])
def test_reference_length(text, length):
    assert reference_length(Formula.parse(text)) == length


def test_reference_text_and_length_errors():
    with pytest.raises(TypeError, match="Formula"):
        reference_text("(a OR b)")
    with pytest.raises(TypeError, match="Formula"):
        reference_length("a")
    with pytest.raises(TypeError, match="namer must return a str.*'b'"):
        reference_text(Formula.parse("(a OR b)"), namer=lambda n: 1 if n == "b" else n)


def test_reference_text_and_length_deep():
    # The search's left-deep shape at depth DEEP: the first AND NOT swaps ("(c0..." against
    # "(NOT c2)"); every later left operand starts "((", which sorts before any operand.
    steps, _, _ = _left_deep(DEEP)
    words = {"or": "OR c{})", "and": "AND c{})", "and_not": "AND (NOT c{}))",
             "or_not": "OR (NOT c{}))"}
    tail = "".join(" " + words[op].format(name[1:]) for op, name in steps[2:])
    with shallow_stack():
        f = Formula.from_steps("c0", steps)
        assert reference_text(f) == "(" * (DEEP - 2) + "((NOT c2) AND (c0 OR c1))" + tail
        assert reference_text(f, sort=False) == "(" * DEEP + "c0 OR c1) AND (NOT c2))" + tail
        n_not = sum(op.endswith("_not") for op, _ in steps)
        assert reference_length(f) == DEEP + 1 + n_not
