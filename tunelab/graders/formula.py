"""`multi.calculate_output`: arithmetic over the sub-graders' rewards, evaluated by simpleeval (a parsed
syntax tree walked with a fixed set of operators and functions), never by Python's `eval`.

Taken: numbers, the sub-graders' names, `+ - * / // % **`, `^` as a power (as OpenAI's formulas write it,
not Python's exclusive or), comparisons (true counts 1), parentheses, `a if cond else b`, and the functions
min, max, abs, floor, ceil, exp, sqrt, log, round. Nothing else: no attributes, no strings, no calls of
anything not listed. A power is capped (simpleeval's MAX_POWER) so a formula cannot hang the trainer.
"""

from __future__ import annotations

import ast
import math
import operator

import simpleeval

FUNCTIONS = {"min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp,
             "sqrt": math.sqrt, "log": math.log, "round": round}
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: simpleeval.safe_power,
             ast.BitXor: simpleeval.safe_power, ast.USub: operator.neg, ast.UAdd: operator.pos,
             ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Gt: operator.gt, ast.Lt: operator.lt,
             ast.GtE: operator.ge, ast.LtE: operator.le, ast.Not: operator.not_}


_ALLOWED_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Call, ast.Name, ast.Constant,
                  ast.Load, ast.operator, ast.unaryop, ast.cmpop)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class FormulaError(ValueError):
    """The formula does not parse, or names something that is not a sub-grader."""


class FormulaEvaluationError(ArithmeticError):
    """The formula parsed but could not be computed for these rewards (a division by zero, log of 0, …)."""


class Formula:
    def __init__(self, text: str, names: set[str]):
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as error:
            raise FormulaError(f"{text!r} is not a formula ({error.msg})") from None
        for node in ast.walk(tree):
            if not isinstance(node, _ALLOWED_NODES) or (isinstance(node, ast.Constant) and not _is_number(node.value)):
                raise FormulaError(f"{text!r}: {type(node).__name__.lower()} is not allowed in a formula "
                                   "(numbers, sub-graders' names, arithmetic, comparisons and "
                                   f"{', '.join(FUNCTIONS)})")
            if isinstance(node, ast.Call) and (not isinstance(node.func, ast.Name) or node.keywords):
                raise FormulaError(f"{text!r}: only {', '.join(FUNCTIONS)} can be called, by name")
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} - set(FUNCTIONS)
        unknown = sorted(used - names)
        if unknown:
            raise FormulaError(f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a sub-grader's name; "
                               f"the names are: {', '.join(sorted(names))}")
        calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        if calls - set(FUNCTIONS):
            raise FormulaError(f"{', '.join(sorted(calls - set(FUNCTIONS)))}: not a function a formula can call "
                               f"({', '.join(FUNCTIONS)})")
        self.text = text.strip()

    def __call__(self, rewards: dict[str, float]) -> float:
        evaluator = simpleeval.SimpleEval(operators=OPERATORS, functions=FUNCTIONS, names=dict(rewards))
        try:
            value = evaluator.eval(self.text)
        except (ArithmeticError, ValueError, TypeError, simpleeval.NumberTooHigh) as error:
            raise FormulaEvaluationError(f"{self.text}: {error}") from None
        except simpleeval.InvalidExpression as error:
            raise FormulaError(f"{self.text}: {error}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise FormulaEvaluationError(f"{self.text}: gave {value!r}, not a finite number")
        return float(value)
