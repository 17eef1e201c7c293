"""Safe formulas: parse ``exp(-(x-50)**2/20)`` without ever calling ``eval``.

The text is parsed with :mod:`ast`, every node is checked against a whitelist, and the
tree is then walked with numpy. Nothing a user types can import, open, call methods or
build huge integers.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from diffusion.errors import InputError

MAX_EXPRESSION_CHARS = 200
MAX_EXPRESSION_NODES = 100
MAX_EXPONENT = 100.0

_FUNCTIONS: dict[str, tuple[Callable[..., Any], int]] = {
    **{name: (getattr(np, name), 1) for name in (
        "sin", "cos", "tan", "exp", "log", "log10", "sqrt", "abs", "tanh", "sinh", "cosh",
        "arctan", "arcsin", "arccos")},
    "step": (lambda a: np.heaviside(a, 0.5), 1), "heaviside": (lambda a: np.heaviside(a, 0.5), 1),
    "minimum": (np.minimum, 2), "maximum": (np.maximum, 2),
}
_NAMES = ("x", "L", "pi", "e")
_BINARY = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply,
           ast.Div: np.divide, ast.Pow: np.power}
_UNARY = {ast.UAdd: np.positive, ast.USub: np.negative}
_OPERATOR_NAMES = {ast.BitXor: "^ (write powers as **)", ast.FloorDiv: "//", ast.Mod: "%",
                   ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|",
                   ast.BitAnd: "&", ast.Invert: "~", ast.Not: "not"}
_CONSTRUCTS = {ast.Attribute: "attribute access (a.b)", ast.Subscript: "indexing (a[i])",
               ast.Lambda: "lambda", ast.IfExp: "conditional (a if b else c)",
               ast.Compare: "comparison", ast.BoolOp: "and / or", ast.List: "list",
               ast.Tuple: "tuple", ast.Dict: "dict", ast.Set: "set",
               ast.ListComp: "comprehension", ast.SetComp: "comprehension",
               ast.DictComp: "comprehension", ast.GeneratorExp: "comprehension",
               ast.JoinedStr: "f-string", ast.NamedExpr: "assignment (:=)",
               ast.Starred: "unpacking (*)", ast.keyword: "keyword argument"}
_PLUMBING = (ast.expr_context, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)


def _not_allowed(construct: str) -> InputError:
    return InputError("expr_not_allowed", "{construct} is not allowed in an expression.",
                      construct=construct)


def too_long(text: str) -> InputError:
    return InputError("expr_too_long", "The expression has {length} characters; "
                      "at most {limit} are allowed.", length=len(text), limit=MAX_EXPRESSION_CHARS)


def _check(node: ast.AST) -> None:
    """Reject every construct outside the whitelist, before anything is evaluated."""
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):  # bool is a subclass of int: compare types
            raise _not_allowed("text" if isinstance(node.value, (str, bytes))
                               else f"the constant {node.value!r}")
    elif isinstance(node, ast.Name):
        if node.id not in _NAMES:
            raise InputError("expr_name", "Unknown name '{name}'. Allowed names: {allowed}.",
                             name=node.id, allowed=", ".join(_NAMES))
    elif isinstance(node, (ast.BinOp, ast.UnaryOp)):
        if type(node.op) not in _BINARY and type(node.op) not in _UNARY:
            raise _not_allowed(_OPERATOR_NAMES.get(type(node.op), type(node.op).__name__))
        for child in (node.left, node.right) if isinstance(node, ast.BinOp) else (node.operand,):
            _check(child)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise _not_allowed(_CONSTRUCTS.get(type(node.func), "calling this"))
        if node.func.id not in _FUNCTIONS:
            raise InputError("expr_function", "Unknown function '{name}'. Allowed functions: "
                             "{allowed}.", name=node.func.id, allowed=", ".join(_FUNCTIONS))
        if node.keywords:
            raise _not_allowed(_CONSTRUCTS[ast.keyword])
        expected = _FUNCTIONS[node.func.id][1]
        if len(node.args) != expected:
            raise InputError("expr_arity", "{name}() takes {expected} argument(s), got {got}.",
                             name=node.func.id, expected=expected, got=len(node.args))
        for arg in node.args:
            _check(arg)
    else:
        raise _not_allowed(_CONSTRUCTS.get(type(node), type(node).__name__))


def _evaluate(node: ast.AST, env: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        try:
            return np.float64(node.value)
        except OverflowError:  # a literal with hundreds of digits
            return np.float64(math.inf)
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, env))
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, env), _evaluate(node.right, env)
        # Constants are float64, so 9**9**9 never becomes a huge Python integer.
        if isinstance(node.op, ast.Pow) and np.ndim(right) == 0 and abs(right) > MAX_EXPONENT:
            raise InputError("expr_too_complex", "The exponent {count} is too large: at most "
                             "{limit} in magnitude.", count=f"{float(right):.6g}",
                             limit=MAX_EXPONENT)
        return _BINARY[type(node.op)](left, right)
    assert isinstance(node, ast.Call)
    return _FUNCTIONS[node.func.id][0](*(_evaluate(arg, env) for arg in node.args))


def parse_expression(text: str, length: float = 100.0) -> Callable[[np.ndarray], np.ndarray]:
    """Compile a formula such as ``exp(-(x-50)**2/20)`` into a function of the grid.

    The text is parsed with ``ast.parse`` and walked node by node; nothing is passed to
    ``eval``. Allowed: int/float numbers, names ``x``, ``L``, ``pi``, ``e``, unary + -,
    binary + - * / **, and one- or two-argument numpy functions listed in ``_FUNCTIONS``.

    Args:
        text: The formula typed by the user.
        length: Value of ``L`` in the formula (the domain length).

    Returns:
        ``f(x)`` giving a float64 array shaped like ``x`` (constants are broadcast).
        Calling it raises ``expr_too_complex`` for a constant exponent above
        ``MAX_EXPONENT`` and ``expr_nonfinite`` (with the first bad ``x``).

    Raises:
        InputError: ``not_text``, ``expr_empty``, ``expr_too_long``, ``expr_syntax``,
            ``expr_too_complex``, ``expr_name``, ``expr_function``, ``expr_arity``,
            ``expr_not_allowed``.
    """
    if not isinstance(text, str):
        raise InputError("not_text", "{name} must be text.", name="custom_expression")
    if not text.strip():
        raise InputError("expr_empty", "The expression is empty.")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise too_long(text)
    indent = len(text) - len(text.lstrip())  # ast.parse rejects leading blanks
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise InputError("expr_syntax", "Syntax error at column {column}: {detail}.",
                         column=(error.offset or 1) + indent, detail=error.msg) from None
    except (ValueError, RecursionError, MemoryError):
        raise InputError("expr_syntax", "Syntax error at column {column}: {detail}.",
                         column=1, detail="unreadable text") from None
    count = sum(not isinstance(node, _PLUMBING) for node in ast.walk(tree.body))
    if count > MAX_EXPRESSION_NODES:
        raise InputError("expr_too_complex", "The expression is too complex: {count} parts, "
                         "at most {limit} allowed.", count=count, limit=MAX_EXPRESSION_NODES)
    _check(tree.body)

    def evaluate(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        env = {"x": x, "L": np.float64(length), "pi": np.float64(np.pi), "e": np.float64(np.e)}
        with np.errstate(all="ignore"):
            value = np.asarray(_evaluate(tree.body, env), dtype=np.float64)
        try:
            value = np.broadcast_to(value, x.shape).copy()
        except ValueError:
            raise InputError("expr_shape", "The expression does not give one value per "
                             "grid point.") from None
        bad = np.flatnonzero(~np.isfinite(value))
        if bad.size:
            raise InputError("expr_nonfinite", "The expression is not a finite number at "
                             "x = {x}.", x=float(f"{x.flat[bad[0]]:.6g}"))
        return value

    return evaluate
