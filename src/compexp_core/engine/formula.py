"""Logical formulas over named concepts (Mu & Andreas 2020 compositional explanations).

A formula is an immutable, hashable tree of :class:`Leaf`, :class:`Not`, :class:`And`
and :class:`Or` nodes with structural equality.

Print style (the reference code's): every binary node is wrapped in parentheses,
``NOT`` is a prefix with no parentheses of its own, and a leaf prints as its name,
double-quoted only when needed (see :func:`format_name`)::

    >>> str(Formula.from_steps("water", [("or", "river"), ("and_not", "blue")]))
    '((water OR river) AND NOT blue)'
    >>> str(Not(And(Leaf("living room"), Leaf("AND"))))
    'NOT ("living room" AND "AND")'

:meth:`Formula.parse` is the exact inverse of ``str``.

No operation recurses: printing, parsing, ``len``, ``leaves``, ``==``, ``hash``,
``evaluate``, ``steps`` and the key functions walk the tree with explicit stacks, so a
formula of any depth works (a search with a large ``max_length`` builds left-deep formulas
as deep as that). Each node stores a signature computed, when it is built, from its
children's: its printed text while that is short (then ``str`` is O(1), ``==`` a string
comparison and ``hash`` the text's), else a structural hash (then ``hash`` is O(1) and
``==`` rejects most unequal formulas at once). Memory stays O(size): no node keeps more
than about ``_SHORT`` characters of text (a leaf, however long, keeps its own name's).
"""

from __future__ import annotations

import operator
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np

__all__ = ["Formula", "Leaf", "Not", "And", "Or", "format_name", "OP_CODES", "formula_key",
           "key_formula", "reference_text", "reference_length"]

# Operator codes of formula keys and of the materialisation kernel (csrc/compexp.h, enum Op;
# a test checks they agree with the compiled module's OP_* constants).
OP_CODES = {"or": 1, "and": 2, "and_not": 3, "or_not": 4}
_OP_NAMES = {code: name for name, code in OP_CODES.items()}

_OPERATORS = frozenset({"AND", "OR", "NOT"})
# A node stores its printed text when it is shorter than this (see the module docstring).
_SHORT = 512
# A run of characters that may appear in an unquoted name: anything but whitespace (as
# str.isspace, which is what \s means for str patterns), parentheses, '"' and '\'.
_PLAIN_RUN = re.compile(r'[^\s()"\\]+')

# Token kinds of the words that are not names (operator words are case-insensitive).
_TOKEN_KINDS = {"AND": "AND", "OR": "OR", "NOT": "NOT", "(": "(", ")": ")"}

# Node kinds (the class attribute _KIND), for the tree walks below.
_LEAF, _NOT, _BINARY = 0, 1, 2


def format_name(name: str) -> str:
    """Write a concept name as it appears in a printed formula.

    Args:
        name: the concept name.

    Returns:
        ``name`` unchanged, or double-quoted when it is empty, contains whitespace,
        ``(``, ``)``, ``"`` or ``\\``, or is an operator word (case-insensitive).
        Inside quotes ``\\`` is written ``\\\\`` and ``"`` is written ``\\"``.

    Examples:
        >>> format_name("sky-blue")
        'sky-blue'
        >>> format_name("ANDROID")
        'ANDROID'
        >>> print(format_name("living room"), format_name("and"), format_name(""))
        "living room" "and" ""
        >>> print(format_name('say "hi"\\\\'))
        "say \\"hi\\"\\\\"
    """
    if _PLAIN_RUN.fullmatch(name) and name.upper() not in _OPERATORS:
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _as_formula(x: str | Formula) -> Formula:
    if x.__class__ is str:
        return Leaf(x)
    if isinstance(x, Formula):
        return x
    if isinstance(x, str):
        return Leaf(x)
    raise TypeError(f"expected a concept name (str) or a Formula, got {type(x).__name__}")


class Formula(ABC):
    """Abstract base of formula nodes; see the module docstring for the print style."""

    # _sig, set by every node's constructor from its children's: the printed text (a str)
    # when it is shorter than about _SHORT and the subtree has only the four node classes
    # (subclasses print alike but compare unequal), else a structural hash (an int). Equal
    # formulas have equal signatures (of the same type), and equal str signatures mean
    # equal formulas since parse inverts str.
    __slots__ = ("_sig",)
    _KIND: ClassVar[int]

    @abstractmethod
    def __str__(self) -> str: ...

    def __repr__(self) -> str:
        return f"Formula({str(self)!r})"

    def __hash__(self) -> int:
        return hash(self._sig)  # O(1): a str caches its hash

    def __eq__(self, other: object) -> bool:
        # Structural equality, as the dataclass-generated __eq__ had it (same class at
        # every node, equal names at the leaves), but walked without recursion.
        if self is other:
            return True
        if other.__class__ is not self.__class__:
            return NotImplemented
        sig = self._sig
        if sig != other._sig:  # type: ignore[attr-defined]
            return False
        return sig.__class__ is str or _same(self, other)  # type: ignore[arg-type]

    def __len__(self) -> int:
        """The number of leaves (repeats included)."""
        return len(self.leaves())

    def leaves(self) -> tuple[str, ...]:
        """The leaf names, left to right (repeats included)."""
        # Walk down left children; right children wait on the stack.
        out: list[str] = []
        pending: list[Formula] = []
        node: Any = self
        while True:
            kind = node._KIND
            if kind == _BINARY:
                pending.append(node.right)
                node = node.left
            elif kind == _NOT:
                node = node.operand
            elif pending:
                out.append(node.name)
                node = pending.pop()
            else:
                out.append(node.name)
                return tuple(out)

    # Immutable: a copy is the formula itself. Pickles hold the printed text (parse is its
    # exact inverse), which, unlike pickling the tree, works at any depth; a tree with
    # subclasses of the node classes (which parse would not restore) pickles node by node.
    def __copy__(self) -> Formula:
        return self

    def __deepcopy__(self, memo: dict) -> Formula:
        return self

    def __reduce__(self) -> tuple:
        if _only_node_types(self):
            return _from_text, (str(self),)
        return self.__class__, tuple(getattr(self, field) for field in self.__match_args__)  # type: ignore[attr-defined]

    # Builders used by the beam search: extend the current formula by one concept.
    def or_(self, x: str | Formula) -> Formula:
        return Or(self, _as_formula(x))

    def and_(self, x: str | Formula) -> Formula:
        return And(self, _as_formula(x))

    def and_not(self, x: str | Formula) -> Formula:
        return And(self, Not(_as_formula(x)))

    def or_not(self, x: str | Formula) -> Formula:
        return Or(self, Not(_as_formula(x)))

    @classmethod
    def from_steps(cls, first: str, steps: Iterable[tuple[str, str]]) -> Formula:
        """Build a left-deep formula from a first concept and a list of steps.

        Args:
            first: name of the first leaf.
            steps: ``(op, name)`` pairs applied in order, with ``op`` one of
                ``"or"``, ``"and"``, ``"and_not"``, ``"or_not"``.

        Returns:
            The formula.

        Raises:
            ValueError: on an unknown op.

        Examples:
            >>> Formula.from_steps("water", [("or", "river"), ("and_not", "blue")])
            Formula('((water OR river) AND NOT blue)')
            >>> Formula.from_steps("sky", [])
            Formula('sky')
        """
        f: Formula = Leaf(first)
        for op, name in steps:
            build = _STEP_OPS.get(op)
            if build is None:
                raise ValueError(f"unknown step op {op!r}; allowed ops: {', '.join(map(repr, _STEP_OPS))}")
            f = build(f, name)
        return f

    def steps(self) -> tuple[str, list[tuple[str, str]]]:
        """The inverse of :meth:`from_steps`: ``(first, [(op, name), ...])`` of a left-deep
        formula (the shape the search builds).

        Raises:
            ValueError: the formula is not left-deep over leaves.

        Examples:
            >>> Formula.parse("((water OR river) AND NOT blue)").steps()
            ('water', [('or', 'river'), ('and_not', 'blue')])
        """
        steps = []
        node: Formula = self
        while isinstance(node, (And, Or)):
            right, negated = node.right, isinstance(node.right, Not)
            if negated:
                right = right.operand
            if not isinstance(right, Leaf):
                raise ValueError(f"{self} is not left-deep (a search formula)")
            op = ("and_not" if negated else "and") if isinstance(node, And) else \
                ("or_not" if negated else "or")
            steps.append((op, right.name))
            node = node.left
        if not isinstance(node, Leaf):
            raise ValueError(f"{self} is not left-deep (a search formula)")
        return node.name, steps[::-1]

    @staticmethod
    def parse(text: str) -> Formula:
        """Parse a formula written in the print style (the exact inverse of ``str``).

        Grammar: ``expr := unary ((AND|OR) unary)*`` (left-associative, equal
        precedence); ``unary := NOT unary | atom``; ``atom := NAME | QUOTED | '(' expr ')'``.
        Unquoted operator words are case-insensitive; whitespace between tokens is free.

        Args:
            text: the formula text.

        Returns:
            The parsed formula.

        Raises:
            ValueError: on malformed text; the message quotes ``text`` and gives the
                0-based character position of the error.

        Examples:
            >>> f = Formula.parse("(water or river) AND not blue")
            >>> f == And(Or(Leaf("water"), Leaf("river")), Not(Leaf("blue")))
            True
            >>> str(f)
            '((water OR river) AND NOT blue)'
            >>> Formula.parse('"living room" OR "and"').leaves()
            ('living room', 'and')
            >>> Formula.parse("(a AND b")
            Traceback (most recent call last):
            ...
            ValueError: invalid formula '(a AND b': expected ')' but found end of input at position 8
        """
        return _Parser(text).parse()

    def to_tree(self, index_of: Callable[[str], int] | None = None) -> dict:
        """The formula's parse tree as nested dicts of JSON types (for programs: ``json.dumps``
        writes it as it is; :meth:`from_tree` is the inverse).

        A leaf is ``{"concept": name}``, with ``"index": index_of(name)`` added when
        ``index_of`` is given (e.g. ``ConceptSet.index``); ``NOT x`` is
        ``{"op": "not", "args": [x]}``; ``(l AND r)`` and ``(l OR r)`` are
        ``{"op": "and", "args": [l, r]}`` and ``{"op": "or", "args": [l, r]}``. So the
        search's ``F AND NOT C`` is an ``and`` whose second argument is a ``not``.

        Args:
            index_of: maps a concept name to its index (must return an int), or None.

        Returns:
            The tree (a new dict).

        Raises:
            TypeError: ``index_of`` returns something other than an int.

        Examples:
            >>> f = Formula.parse("((water OR river) AND NOT blue)")
            >>> f.to_tree() == {"op": "and", "args": [
            ...     {"op": "or", "args": [{"concept": "water"}, {"concept": "river"}]},
            ...     {"op": "not", "args": [{"concept": "blue"}]}]}
            True
            >>> Leaf("blue").to_tree(["water", "river", "blue"].index)
            {'concept': 'blue', 'index': 2}
            >>> Formula.from_tree(f.to_tree()) == f
            True
        """
        return _to_tree(self, index_of)

    @staticmethod
    def from_tree(tree: Any) -> Formula:
        """The formula of a parse tree written by :meth:`to_tree` (leaves' ``"index"`` keys
        are ignored: the names decide).

        Args:
            tree: nested dicts as :meth:`to_tree` returns them (e.g. read with ``json.loads``).

        Returns:
            The formula.

        Raises:
            ValueError: a node that is not a dict with either a str ``"concept"`` or an
                ``"op"`` of ``"and"``, ``"or"``, ``"not"`` with a list of 2, 2 or 1
                ``"args"``; the message gives the node's path, e.g. ``tree.args[1]``.

        Examples:
            >>> str(Formula.from_tree({"op": "or", "args": [{"concept": "a"},
            ...                                            {"concept": "living room"}]}))
            '(a OR "living room")'
            >>> Formula.from_tree({"op": "xor", "args": []})
            Traceback (most recent call last):
            ...
            ValueError: invalid formula tree at tree: unknown op 'xor' (expected 'and', 'or' or 'not')
        """
        return _from_tree(tree)

    def evaluate(self, masks: Any, names: Sequence[str] | None = None) -> np.ndarray:
        """Compute the formula's boolean mask (AND/OR/NOT are elementwise).

        Args:
            masks: either a dense boolean (or integer 0/1) array of shape
                ``[N, K, H, W]`` or ``[N, K]`` where concept ``j`` is ``masks[:, j]``,
                or a concept-set object with a ``names`` sequence and a
                ``concept_mask(j)`` method returning concept ``j``'s dense mask.
            names: for a dense array, the K unique concept names (default
                ``"c0"`` .. ``"c{K-1}"``); must be None for a concept set.

        Returns:
            A new boolean array of shape ``[N, H, W]`` or ``[N]`` (dense input) or of
            the concept masks' shape (concept set).

        Raises:
            ValueError: unknown leaf name, wrong ``masks`` ndim, bad ``names``.
            TypeError: ``masks`` of a non-bool, non-integer dtype.

        Examples:
            >>> m = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0]], dtype=bool)  # [N=3, K=3]
            >>> Formula.parse("(a OR b) AND NOT c").evaluate(m, names=["a", "b", "c"])
            array([False, False,  True])
            >>> Leaf("c1").evaluate(m)
            array([False,  True,  True])
        """
        if hasattr(masks, "concept_mask") and hasattr(masks, "names"):
            if names is not None:
                raise ValueError("names must be None when masks is a concept set (it has its own names)")
            index = _name_index(masks.names)
            get = lambda j: _as_bool(masks.concept_mask(j))  # noqa: E731
        else:
            arr = np.asarray(masks)
            if arr.ndim not in (2, 4):
                raise ValueError(f"masks must have shape [N, K, H, W] or [N, K], got shape {arr.shape}")
            arr = _check_dtype(arr)
            k = arr.shape[1]
            if names is None:
                names = [f"c{j}" for j in range(k)]
            elif len(names) != k:
                raise ValueError(f"names has {len(names)} entries but masks has K={k} concepts")
            index = _name_index(names)
            # Convert per concept, lazily: only the leaves used are touched.
            get = lambda j: arr[:, j] if arr.dtype == bool else arr[:, j] != 0  # noqa: E731

        cache: dict[str, np.ndarray] = {}  # each distinct leaf evaluated once per call

        def leaf(name: str) -> np.ndarray:
            if name not in cache:
                if name not in index:
                    raise ValueError(f"unknown concept {name!r} in formula {str(self)!r}")
                cache[name] = get(index[name])
            return cache[name]

        # Operands left to right (so leaves are fetched left to right), without recursion:
        # descend to the leftmost leaf noting on `stack` what to do on the way back up
        # (None: negate; a binary node: evaluate its right operand; a (combine, left value)
        # pair: combine with the right operand's value), then go back up.
        stack: list[Any] = []
        push, pop = stack.append, stack.pop
        node: Any = self
        while True:
            kind = node._KIND
            while kind != _LEAF:
                if kind == _NOT:
                    push(None)
                    node = node.operand
                else:
                    push(node)
                    node = node.left
                kind = node._KIND
            value = leaf(node.name)
            while stack:
                top = pop()
                if top is None:
                    value = ~value
                elif top.__class__ is tuple:
                    value = top[0](top[1], value)
                else:
                    node = top.right
                    kind = node._KIND
                    # The search's shapes (a right operand that is a leaf or a negated leaf)
                    # are done at once.
                    if kind == _LEAF:
                        value = top._COMBINE(value, leaf(node.name))
                    elif kind == _NOT and node.operand._KIND == _LEAF:
                        value = top._COMBINE(value, ~leaf(node.operand.name))
                    else:
                        push((top._COMBINE, value))
                        break
            else:
                # A bare leaf's value is the stored mask itself; copy so callers may mutate it.
                return value.copy() if isinstance(self, Leaf) else value


def _check_dtype(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != bool and arr.dtype.kind not in "iu":
        raise TypeError(f"masks must be a boolean (or integer 0/1) array, got dtype {arr.dtype}")
    return arr


def _as_bool(mask: Any) -> np.ndarray:
    arr = _check_dtype(np.asarray(mask))
    return arr if arr.dtype == bool else arr != 0


def _name_index(names: Sequence[str]) -> dict[str, int]:
    index = {name: j for j, name in enumerate(names)}
    if len(index) != len(names):
        dups = sorted({n for n in names if list(names).count(n) > 1})
        raise ValueError(f"concept names must be unique; duplicated: {dups}")
    return index


def _to_str(root: Formula) -> str:
    """The printed form of ``root``, built left to right from an explicit stack that holds
    nodes still to print and literal pieces (str) to emit; subtrees that store their text
    are emitted whole."""
    sig = root._sig  # type: ignore[attr-defined]
    if sig.__class__ is str:
        return sig
    parts: list[str] = []
    append = parts.append
    stack: list[Any] = [root]
    pop, push = stack.pop, stack.append
    while stack:
        node = pop()
        if node.__class__ is str:
            append(node)
            continue
        sig = node._sig
        if sig.__class__ is str:
            append(sig)
            continue
        kind = node._KIND
        if kind == _LEAF:
            append(format_name(node.name))
        elif kind == _NOT:
            append("NOT ")
            push(node.operand)
        else:
            append("(")
            push(")")
            push(node.right)
            push(node._INFIX)
            push(node.left)
    return "".join(parts)


def _same(a: Formula, b: Formula) -> bool:
    """Structural equality of two trees, walked pairwise: shared subtrees are skipped,
    signatures prune unequal subtrees early and settle those that store their text."""
    stack: list[Any] = [a, b]
    pop, push = stack.pop, stack.append
    while stack:
        y = pop()
        x = pop()
        if x is y:
            continue
        if x.__class__ is not y.__class__:
            return False
        sig = x._sig
        if sig != y._sig:
            return False
        if sig.__class__ is str:
            continue
        kind = x._KIND
        if kind == _LEAF:
            if x.name != y.name:
                return False
        elif kind == _NOT:
            push(x.operand)
            push(y.operand)
        else:
            push(x.right)
            push(y.right)
            push(x.left)
            push(y.left)
    return True


def _only_node_types(root: Formula) -> bool:
    """Whether every node of ``root`` is a Leaf, Not, And or Or (not a subclass)."""
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if type(node) not in _NODE_TYPES:
            return False
        if node._sig.__class__ is str:  # a text signature vouches for the whole subtree
            continue
        kind = node._KIND
        if kind == _NOT:
            stack.append(node.operand)
        elif kind == _BINARY:
            stack.append(node.right)
            stack.append(node.left)
    return True


def _from_text(text: str) -> Formula:
    """Unpickle a formula from its printed text."""
    return Formula.parse(text)


# Formatted leaf names, by name: concept vocabularies are small, so this is nearly always a
# hit; cleared when full so that hostile input cannot grow it without bound.
_FORMATTED: dict[str, str] = {}
_FORMATTED_MAX = 1 << 16


# The constructors below are written by hand (init=False) to type-check their arguments and
# store _sig; frozen=True still makes the dataclass refuse assignment to its fields,
# and eq=False leaves Formula's iterative __eq__ and __hash__ in place. Fields are set
# through their slot descriptors (frozen classes refuse plain assignment).

@dataclass(frozen=True, slots=True, init=False, eq=False, repr=False)
class Leaf(Formula):
    """A single concept, by name."""

    name: str

    _KIND = _LEAF

    def __init__(self, name: str) -> None:
        if name.__class__ is not str and not isinstance(name, str):
            raise TypeError(f"Leaf name must be a str, got {type(name).__name__}")
        _set_name(self, name)
        if self.__class__ is not Leaf:
            _set_sig(self, hash((_LEAF, name)))
        elif name.__class__ is not str:  # a str subclass: keep the text as a plain str
            _set_sig(self, str.__str__(format_name(name)))
        else:
            text = _FORMATTED.get(name)
            if text is None:
                if len(_FORMATTED) >= _FORMATTED_MAX:
                    _FORMATTED.clear()
                text = _FORMATTED[name] = format_name(name)
            _set_sig(self, text)

    def __str__(self) -> str:
        sig = self._sig
        return sig if sig.__class__ is str else format_name(self.name)


@dataclass(frozen=True, slots=True, init=False, eq=False, repr=False)
class Not(Formula):
    """Negation of a formula."""

    operand: Formula

    _KIND = _NOT

    def __init__(self, operand: Formula) -> None:
        if type(operand) not in _NODE_TYPES and not isinstance(operand, Formula):
            raise TypeError(f"Not operand must be a Formula, got {type(operand).__name__}")
        _set_operand(self, operand)
        sig = operand._sig
        if sig.__class__ is str and len(sig) < _SHORT and self.__class__ is Not:
            _set_sig(self, "NOT " + sig)
        else:
            _set_sig(self, hash((_NOT, hash(sig))))

    def __str__(self) -> str:
        sig = self._sig
        return sig if sig.__class__ is str else _to_str(self)


@dataclass(frozen=True, slots=True, init=False, eq=False, repr=False)
class _Binary(Formula):
    left: Formula
    right: Formula

    _KIND = _BINARY
    _INFIX = ""  # " AND " / " OR "
    _COMBINE: ClassVar[Callable[[np.ndarray, np.ndarray], np.ndarray]]

    def __init__(self, left: Formula, right: Formula) -> None:
        if type(left) not in _NODE_TYPES or type(right) not in _NODE_TYPES:
            for side in (left, right):
                if not isinstance(side, Formula):
                    raise TypeError(f"{type(self).__name__} operands must be Formulas, got {type(side).__name__}")
        _set_left(self, left)
        _set_right(self, right)
        infix, ls, rs = self._INFIX, left._sig, right._sig
        if ls.__class__ is str and rs.__class__ is str and len(ls) + len(rs) < _SHORT \
                and type(self) in _NODE_TYPES:
            _set_sig(self, f"({ls}{infix}{rs})")
        else:
            _set_sig(self, hash((hash(ls), infix, hash(rs))))

    def __str__(self) -> str:
        sig = self._sig
        return sig if sig.__class__ is str else _to_str(self)


@dataclass(frozen=True, slots=True, init=False, eq=False, repr=False)
class And(_Binary):
    """Conjunction of two formulas."""

    _INFIX = " AND "
    _COMBINE = operator.and_


@dataclass(frozen=True, slots=True, init=False, eq=False, repr=False)
class Or(_Binary):
    """Disjunction of two formulas."""

    _INFIX = " OR "
    _COMBINE = operator.or_


_NODE_TYPES = frozenset({Leaf, Not, And, Or})
_set_sig = Formula._sig.__set__  # type: ignore[attr-defined]
_set_name = Leaf.name.__set__  # type: ignore[attr-defined]
_set_operand = Not.operand.__set__  # type: ignore[attr-defined]
_set_left = _Binary.left.__set__  # type: ignore[attr-defined]
_set_right = _Binary.right.__set__  # type: ignore[attr-defined]

_STEP_OPS: dict[str, Callable[[Formula, str], Formula]] = {
    "or": Formula.or_,
    "and": Formula.and_,
    "and_not": Formula.and_not,
    "or_not": Formula.or_not,
}


# ------------------------------------------------------------------------------ parse trees
# Formula.to_tree / from_tree, without recursion like the rest of this module.

_TREE_OPS = {"and": 2, "or": 2, "not": 1}


def _to_tree(root: Formula, index_of: Callable[[str], int] | None) -> dict:
    """Post-order over ``root``: a node's dict is built once its children's are."""
    built: list[dict] = []          # finished subtrees, in post-order
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        kind = node._KIND
        if kind == _LEAF:
            leaf: dict = {"concept": node.name}
            if index_of is not None:
                index = index_of(node.name)
                if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
                    raise TypeError(f"index_of must return an int; it returned "
                                    f"{type(index).__name__} for the concept {node.name!r}")
                leaf["index"] = int(index)
            built.append(leaf)
        elif not children_done:
            stack.append((node, True))
            if kind == _NOT:
                stack.append((node.operand, False))
            else:
                stack.append((node.right, False))
                stack.append((node.left, False))
        elif kind == _NOT:
            built.append({"op": "not", "args": [built.pop()]})
        else:
            right = built.pop()
            built.append({"op": "and" if isinstance(node, And) else "or",
                          "args": [built.pop(), right]})
    return built[0]


def _from_tree(tree: Any) -> Formula:
    """Post-order over the dicts, checking each node; ``where`` paths name bad nodes."""
    built: list[Formula] = []
    stack: list[tuple[Any, str, bool]] = [(tree, "tree", False)]
    while stack:
        node, where, children_done = stack.pop()
        if children_done:
            if node["op"] == "not":
                built.append(Not(built.pop()))
            else:
                right = built.pop()
                left = built.pop()
                built.append(And(left, right) if node["op"] == "and" else Or(left, right))
            continue
        if not isinstance(node, dict):
            raise ValueError(f"invalid formula tree at {where}: expected a dict node, got "
                             f"{type(node).__name__}")
        if "concept" in node:
            if "op" in node or "args" in node:
                raise ValueError(f"invalid formula tree at {where}: a node has either "
                                 f"'concept' or 'op' and 'args', not both")
            name = node["concept"]
            if not isinstance(name, str):
                raise ValueError(f"invalid formula tree at {where}: 'concept' must be a str, "
                                 f"got {type(name).__name__}")
            built.append(Leaf(name))
            continue
        op = node.get("op")
        if op not in _TREE_OPS:
            raise ValueError(f"invalid formula tree at {where}: unknown op {op!r} (expected "
                             f"'and', 'or' or 'not')")
        args = node.get("args")
        if not isinstance(args, list) or len(args) != _TREE_OPS[op]:
            raise ValueError(f"invalid formula tree at {where}: op {op!r} needs a list of "
                             f"{_TREE_OPS[op]} args, got {args!r:.80}")
        stack.append((node, where, True))
        for i in reversed(range(len(args))):
            stack.append((args[i], f"{where}.args[{i}]", False))
    return built[0]


class _Parser:
    """Parser over a token list of ``(kind, value, position)``.

    The grammar is recursive (parentheses nest), but the parser keeps the enclosing
    expressions on an explicit stack instead of the call stack, so nesting depth is
    limited only by memory.
    """

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"Formula.parse expects a str, got {type(text).__name__}")
        self.text = text
        if '"' in text or "\\" in text:
            self.tokens = self._tokenize()
        else:
            # No quotes or escapes: tokens are the words around whitespace and parentheses,
            # split in C. Their positions (-1 here) are only needed for an error message,
            # and _pos then gets them from _tokenize, which yields the same tokens.
            kind = _TOKEN_KINDS.get
            self.tokens = [(kind(word.upper(), "NAME"), word, -1)
                           for word in text.replace("(", " ( ").replace(")", " ) ").split()]
            self.tokens.append(("END", "", len(text)))

    def _error(self, msg: str, pos: int) -> ValueError:
        return ValueError(f"invalid formula {self.text!r}: {msg} at position {pos}")

    def _pos(self, i: int) -> int:
        """The position of token ``i`` in the text."""
        pos = self.tokens[i][2]
        return pos if pos >= 0 else self._tokenize()[i][2]

    def _tokenize(self) -> list[tuple[str, str, int]]:
        text, n, i = self.text, len(self.text), 0
        plain = _PLAIN_RUN.match
        tokens: list[tuple[str, str, int]] = []
        append = tokens.append
        while i < n:
            c = text[i]
            if c.isspace():
                i += 1
            elif c in "()":
                append((c, c, i))
                i += 1
            elif c == '"':
                start, i, chars = i, i + 1, []
                while True:
                    if i >= n:
                        raise self._error("unterminated quoted name starting", start)
                    c = text[i]
                    if c == '"':
                        break
                    if c == "\\":
                        if i + 1 >= n or text[i + 1] not in '"\\':
                            raise self._error('bad escape (only \\\\ and \\" are allowed)', i)
                        i += 1
                    chars.append(text[i])
                    i += 1
                append(("NAME", "".join(chars), start))
                i += 1
            elif c == "\\":
                raise self._error("unexpected '\\' outside quotes", i)
            else:
                start = i
                i = plain(text, i).end()  # type: ignore[union-attr]
                word = text[start:i]
                # Unquoted operator words are keywords; quote them to use them as names.
                upper = word.upper()
                append((upper if upper in _OPERATORS else "NAME", word, start))
        append(("END", "", n))
        return tokens

    def _found(self, i: int) -> str:
        kind, value, _ = self.tokens[i]
        return "end of input" if kind == "END" else repr(value)

    def parse(self) -> Formula:
        """``expr := unary ((AND|OR) unary)*``, ``unary := NOT* atom``,
        ``atom := NAME | '(' expr ')'``, as a loop: ``acc`` is the expression parsed so
        far at the current nesting level, ``op`` the operator waiting for its right operand
        and ``nots`` the NOTs before the operand; ``(`` saves them on ``outer``, ``)``
        restores them and the parenthesised expression becomes the operand."""
        tokens = self.tokens
        outer: list[tuple[Formula | None, str, int]] = []
        acc: Formula | None = None
        op, nots, i = "", 0, 0
        while True:
            # An operand: NOT* then a name or '('.
            kind = tokens[i][0]
            while kind == "NOT":
                nots += 1
                i += 1
                kind = tokens[i][0]
            if kind == "(":
                outer.append((acc, op, nots))
                acc, op, nots = None, "", 0
                i += 1
                continue
            if kind != "NAME":
                raise self._error(f"expected a concept name, NOT or '(' but found {self._found(i)}",
                                  self._pos(i))
            f: Formula = Leaf(tokens[i][1])
            i += 1
            # The operand is complete: combine it, then close as many ')' as follow.
            while True:
                if nots:
                    for _ in range(nots):
                        f = Not(f)
                if acc is None:
                    acc = f
                else:
                    acc = And(acc, f) if op == "AND" else Or(acc, f)
                kind = tokens[i][0]
                if kind == "AND" or kind == "OR":
                    op, nots = kind, 0
                    i += 1
                    break
                if not outer:
                    if kind != "END":
                        raise self._error(f"expected AND, OR or end of input but found {self._found(i)}",
                                          self._pos(i))
                    return acc
                if kind != ")":
                    raise self._error(f"expected ')' but found {self._found(i)}", self._pos(i))
                i += 1
                f = acc
                acc, op, nots = outer.pop()


# ------------------------------------------------------------------- the reference's print style
# The reference implementation (Mu & Andreas's code) writes formulas into its results files in
# a style of its own: every NOT in parentheses, names as its namer returns them (unquoted), and
# each binary node's two operands in string order. These functions reproduce that text and its
# length rule, so that files written here can be compared with the reference's.

# Characters of each subtree's text kept while deciding the sort order (see reference_text).
_REF_PREFIX = 128


def reference_text(formula: Formula, namer: Callable[[str], str] = str, sort: bool = True) -> str:
    """The formula as the reference code prints it (its ``to_str(namer, sort)``).

    A leaf is ``namer(name)``, written as it is (never quoted, so the text need not parse back
    with :meth:`Formula.parse`); ``NOT C`` is ``(NOT C)``; a binary node is ``(L OP R)``. So the
    search's ``F AND NOT C`` prints as ``(F AND (NOT C))`` and ``F OR NOT C`` as
    ``(F OR (NOT C))``. With ``sort``, a binary node whose two operand texts ``L``, ``R`` are
    not in order (``not L < R``, Python string comparison) prints them swapped, ``(R OP L)``;
    as in the reference, the operand of a NOT is printed unsorted.

    Args:
        formula: the formula.
        namer: maps a leaf's name to its printed text (must return a str); the reference's
            category column uses ``lambda name: name.split(":")[0]``.
        sort: order the operands of binary nodes as described above.

    Returns:
        The text.

    Raises:
        TypeError: ``formula`` is not a Formula; ``namer`` returns something other than a str.

    Examples:
        >>> f = Formula.parse("((hyp:tok:sleeping OR pre:tok:dog) AND NOT hyp:tag:nn)")
        >>> reference_text(f, sort=False)
        '((hyp:tok:sleeping OR pre:tok:dog) AND (NOT hyp:tag:nn))'
        >>> reference_text(f)                     # not '(hyp...' < '(NOT...': swapped
        '((NOT hyp:tag:nn) AND (hyp:tok:sleeping OR pre:tok:dog))'
        >>> reference_text(f, namer=lambda name: name.split(":")[0])
        '((NOT hyp) AND (hyp OR pre))'
    """
    if not isinstance(formula, Formula):
        raise TypeError(f"reference_text expects a Formula, got {type(formula).__name__}")
    texts: dict[str, str] = {}

    def leaf_text(name: str) -> str:
        text = texts.get(name)
        if text is None:
            text = namer(name)
            if not isinstance(text, str):
                raise TypeError(f"namer must return a str; it returned {type(text).__name__} "
                                f"for the concept {name!r}")
            texts[name] = text
        return text

    # First pass, bottom-up without recursion: for each (node, sorted?) the length of its text
    # and the text's first _REF_PREFIX + 1 characters, which settle the order of two operands
    # unless both are longer and agree on all of them (then their full texts decide). Keeping
    # prefixes rather than whole texts keeps deep formulas linear in time and memory.
    keep = _REF_PREFIX + 1
    info: dict[tuple[int, bool], tuple[int, str]] = {}
    swapped: set[tuple[int, bool]] = set()
    stack: list[tuple[Any, bool, bool]] = [(formula, bool(sort), False)]
    while stack:
        node, sorting, children_done = stack.pop()
        key = (id(node), sorting)
        if key in info:
            continue
        kind = node._KIND
        if kind == _LEAF:
            text = leaf_text(node.name)
            info[key] = (len(text), text[:keep])
        elif not children_done:
            stack.append((node, sorting, True))
            if kind == _NOT:
                stack.append((node.operand, False, False))
            else:
                stack.append((node.right, sorting, False))
                stack.append((node.left, sorting, False))
        elif kind == _NOT:
            n, prefix = info[(id(node.operand), False)]
            info[key] = (n + 6, ("(NOT " + prefix + ")")[:keep])
        else:
            (ln, lp), (rn, rp) = info[(id(node.left), sorting)], info[(id(node.right), sorting)]
            if sorting:
                if ln > _REF_PREFIX and rn > _REF_PREFIX and lp == rp:
                    in_order = (_emit_reference(node.left, sorting, leaf_text, swapped)
                                < _emit_reference(node.right, sorting, leaf_text, swapped))
                else:
                    in_order = lp < rp
                if not in_order:
                    swapped.add(key)
                    lp, rp = rp, lp
            infix = node._INFIX
            info[key] = (ln + rn + len(infix) + 2, ("(" + lp + infix + rp + ")")[:keep])
    return _emit_reference(formula, bool(sort), leaf_text, swapped)


def _emit_reference(root: Formula, sort: bool, leaf_text: Callable[[str], str],
                    swapped: set) -> str:
    """The reference text of ``root``, left to right from an explicit stack, with the operand
    order ``reference_text`` decided (``swapped``: the binary nodes printed right first)."""
    parts: list[str] = []
    append = parts.append
    stack: list[Any] = [(root, sort)]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        if item.__class__ is str:
            append(item)
            continue
        node, sorting = item
        kind = node._KIND
        if kind == _LEAF:
            append(leaf_text(node.name))
        elif kind == _NOT:
            append("(NOT ")
            push(")")
            push((node.operand, False))
        else:
            first, second = node.left, node.right
            if (id(node), sorting) in swapped:
                first, second = second, first
            append("(")
            push(")")
            push((second, sorting))
            push(node._INFIX)
            push((first, sorting))
    return "".join(parts)


def reference_length(formula: Formula) -> int:
    """The formula's length as the reference code counts it (its ``len``): one per leaf plus
    one per NOT node. (``len(formula)`` counts leaves only.)

    Raises:
        TypeError: ``formula`` is not a Formula.

    Examples:
        >>> f = Formula.parse("((water OR river) AND NOT blue)")
        >>> len(f), reference_length(f)
        (3, 4)
    """
    if not isinstance(formula, Formula):
        raise TypeError(f"reference_length expects a Formula, got {type(formula).__name__}")
    count = 0
    stack: list[Any] = [formula]
    pop, push = stack.pop, stack.append
    while stack:
        node = pop()
        kind = node._KIND
        if kind == _BINARY:
            push(node.right)
            push(node.left)
        else:
            count += 1
            if kind == _NOT:
                push(node.operand)
    return count


# ------------------------------------------------------------------------------ formula keys
# The search keeps formulas as keys: (first concept, (op code, concept), ...), concepts by
# index. Keys are hashable, cheap to extend, and map one to one onto left-deep formulas.

def formula_key(formula: Formula, index_of: Callable[[str], int]) -> tuple:
    """The key ``(first, (op code, concept), ...)`` of a left-deep formula, with concepts
    numbered by ``index_of(name)`` (e.g. ``ConceptSet.index``).

    Raises:
        ValueError: the formula is not left-deep, or ``index_of`` rejects a name.

    Examples:
        >>> names = ["water", "river", "blue"]
        >>> formula_key(Formula.parse("((water OR river) AND NOT blue)"), names.index)
        (0, (1, 1), (3, 2))
    """
    first, steps = formula.steps()
    return (index_of(first), *((OP_CODES[op], index_of(name)) for op, name in steps))


def key_formula(key: tuple, names: Sequence[str]) -> Formula:
    """The formula of a key (the inverse of :func:`formula_key`).

    Examples:
        >>> str(key_formula((0, (1, 1), (3, 2)), ["water", "river", "blue"]))
        '((water OR river) AND NOT blue)'
    """
    return Formula.from_steps(names[key[0]], [(_OP_NAMES[op], names[c]) for op, c in key[1:]])
