"""One type for everything wrong with a data file: the reader, the validator and the converter report it.

    error: train.jsonl:12: messages[2].content: is an empty string [missing_content]

A `Problem` names the file, the 1-based line (0 for the file as a whole), the path inside the example
(`messages[2].content`), OpenAI's error code where it has one, its severity and what was found.
"""

from __future__ import annotations

from dataclasses import dataclass

ERROR, WARNING = "error", "warning"


@dataclass
class Problem:
    """One problem with one line of a data file (or with the file as a whole, at line 0)."""

    severity: str  # ERROR or WARNING
    code: str
    line: int
    path: str  # where inside the example: "messages[2].content"; "" for the line or the file as a whole
    message: str
    file: str = ""

    def __str__(self) -> str:
        if self.line == 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.path or 'line'}: {self.message} [{self.code}]"


class DataError(ValueError):
    """A data file that cannot be used, with every problem found (not just the first)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        if len(problems) == 1:  # one line says it
            super().__init__(str(problems[0]))
            return
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} problem(s) in the data:\n{shown}{more}")
