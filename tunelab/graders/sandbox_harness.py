"""Runs inside the sandbox (sandbox.py starts it as `python -I -c <this file>`): never imported by tunelab.

Reads one JSON object from stdin — {"source": …, "cases": [{"sample": …, "item": …}, …]} — defines the
grader's source, and writes one JSON line per case as it finishes, on a descriptor of its own: the grader's
prints go to stderr, so they cannot be mistaken for a result. Standard library only; the grader may import
whatever this Python environment has (numpy, rapidfuzz, …).
"""

import json
import math
import os
import sys
import time
import traceback

MAX_DETAILS = 2000


def _details(error: BaseException) -> str:
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    kept = [line for line in lines if 'File "<grader>"' in line or not line.startswith("  File ")]
    return "".join(kept)[-MAX_DETAILS:]


def main() -> None:
    results = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # the grader's own output (print, os.write(1, …)) goes to stderr
    sys.stdout = sys.stderr
    request = json.loads(sys.stdin.read())
    namespace = {"__name__": "grader"}
    try:
        exec(compile(request["source"], "<grader>", "exec"), namespace)
        grade = namespace.get("grade")
        if not callable(grade):
            raise NameError("the source defines no function grade(sample, item)")
        problem = None
    except BaseException as error:  # noqa: BLE001 - whatever the source raises is the grader's error
        problem = _details(error)
    for index, case in enumerate(request["cases"]):
        started = time.monotonic()
        if problem is not None:
            result = {"index": index, "error": problem}
        else:
            try:
                value = grade(case["sample"], case["item"])
                if not isinstance(value, (int, float)) or not math.isfinite(value):  # a bool counts 0 or 1
                    result = {"index": index, "error": f"grade returned {type(value).__name__} {value!r:.200}, "
                                                         "not a finite number"}
                else:
                    result = {"index": index, "score": float(value)}
            except BaseException as error:  # noqa: BLE001
                result = {"index": index, "error": _details(error)}
        result["seconds"] = round(time.monotonic() - started, 4)
        results.write(json.dumps(result) + "\n")
        results.flush()


main()
