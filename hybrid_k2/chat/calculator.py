"""The REPL's built-in `calculator` tool: arithmetic on an AST walk, never eval().

Only numbers, + - * / // % **, unary +/-, parentheses, the constants pi/e/tau and a few math
functions are accepted; sizes are bounded so a model cannot make the REPL hang ("9**9**9").
"""
from __future__ import annotations

import ast
import json
import math
import operator

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 10_000
MAX_RESULT_BITS = 13_000  # ~3,900 digits: below Python's 4,300-digit int-to-str limit

TOOL = {"type": "function", "function": {
    "name": "calculator",
    "description": "Evaluates an arithmetic expression (+ - * / // % **, parentheses, pi, e, "
                   "sqrt, log, exp, sin, cos, tan, abs, round, floor, ceil, min, max).",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string",
                                                                  "description": "for example (2 + 3) * sqrt(16)"}},
                   "required": ["expression"]}}}

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {"sqrt": math.sqrt, "log": math.log, "log2": math.log2, "log10": math.log10, "exp": math.exp,
              "sin": math.sin, "cos": math.cos, "tan": math.tan, "abs": abs, "round": round,
              "floor": math.floor, "ceil": math.ceil, "min": min, "max": max}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


class CalculatorError(ValueError):
    pass


def calculate(expression: str) -> int | float:
    """Value of an arithmetic expression; CalculatorError (one line) for anything else."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("empty expression")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from None
    try:
        return _eval(tree.body)
    except (ArithmeticError, ValueError, TypeError) as e:
        if isinstance(e, CalculatorError):
            raise
        raise CalculatorError(str(e) or type(e).__name__) from None


def _eval(node: ast.AST):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(left) not in (0, 1) and (
                abs(right) > MAX_EXPONENT or (isinstance(left, int) and isinstance(right, int)
                                              and left.bit_length() * right > MAX_RESULT_BITS)):
            raise CalculatorError("result too large")
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int) \
                and left and right and left.bit_length() + right.bit_length() > MAX_RESULT_BITS:
            raise CalculatorError("result too large")
        result = _BINARY[type(node.op)](left, right)
        if isinstance(result, complex):
            raise CalculatorError("the result is not a real number")
        if isinstance(result, int) and result.bit_length() > MAX_RESULT_BITS:
            raise CalculatorError("result too large")
        return result
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS \
            and not node.keywords:
        return _FUNCTIONS[node.func.id](*[_eval(a) for a in node.args])
    raise CalculatorError(f"not allowed in an expression: {ast.unparse(node)!r}")


def run_calculator(arguments: str) -> str:
    """The tool call: JSON arguments {"expression": ...} -> result text (errors are results too,
    so the model can see and fix them)."""
    try:
        args = json.loads(arguments)
        value = calculate(args["expression"])
    except CalculatorError as e:
        return f"error: {e}"
    except (ValueError, KeyError, TypeError):
        return 'error: expected arguments {"expression": "..."}'
    return repr(value) if isinstance(value, float) else str(value)
