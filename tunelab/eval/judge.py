"""Model-graded scoring through any OpenAI-compatible endpoint (`--judge MODEL[@URL]`).

- `judge`: the judge model grades each reply from 1 to 10 against the prompt and the reference, and gives a
  one-sentence rationale. A reply the judge answered without a readable score gets no score (counted and
  reported, never guessed).
- `pairwise`: the judge sees two systems' replies to the same prompt and says which is better, twice, with
  the order swapped: judges favour the first (or second) position, and asking both ways cancels that. A
  system wins an example only when both orders agree; a split decision is a tie.

The prompts are constants here and are printed in the report, so a reader can see exactly what was asked.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from tunelab.conversation.schema import content_text
from tunelab.eval.items import Item
from tunelab.eval.scorers import Scorer, Scores
from tunelab.models.endpoint import ENDPOINT_CONCURRENCY, Endpoint
from tunelab.models.generate import Generation

JUDGE_PROMPT = """You are grading a reply written by an AI assistant.

## Conversation so far
{conversation}

## Reference reply (what a good reply looks like)
{reference}

## Reply to grade
{reply}

Grade the reply from 1 (useless or wrong) to 10 (as good as the reference, or better) for doing what the
reference does: the same content, format and tone. Answer with a first line "Score: N", then one sentence
saying why."""

PAIRWISE_PROMPT = """You are comparing two replies written by AI assistants to the same conversation.

## Conversation so far
{conversation}

## Reference reply (what a good reply looks like)
{reference}

## Reply 1
{first}

## Reply 2
{second}

Which reply is better: closer to the reference in content, format and tone? Answer with a first line
"Winner: 1", "Winner: 2" or "Winner: tie", then one sentence saying why."""

_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*(10|[1-9])\b", re.I)
_WINNER = re.compile(r"winner\s*[:=]?\s*\**\s*(1|2|tie)\b", re.I)
JUDGE_MAX_TOKENS = 200


def conversation_text(prompt: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {content_text(m.get('content')) or ''}" for m in prompt)


def parse_score(answer: str) -> int | None:
    """The 1–10 score in a judge's answer ("Score: 7"), or None when it wrote none."""
    found = _SCORE.search(answer)
    return int(found.group(1)) if found else None


def parse_winner(answer: str) -> str | None:
    """"1", "2" or "tie" from a pairwise answer ("Winner: 2"), or None."""
    found = _WINNER.search(answer)
    return found.group(1).lower() if found else None


class Judge(Scorer):
    name, label, fraction = "judge", "judge score (1–10)", False

    def __init__(self, spec: str):
        self.endpoint = Endpoint(spec)
        self.spec = spec

    def score(self, items: list[Item], replies: list[Generation]) -> Scores:
        def grade(pair) -> tuple[float | None, dict]:
            item, reply = pair
            answer = self.endpoint.reply([{"role": "user", "content": JUDGE_PROMPT.format(
                conversation=conversation_text(item.prompt), reference=item.reference, reply=reply.text)}],
                None, JUDGE_MAX_TOKENS).text
            value = parse_score(answer)
            return (None if value is None else float(value)), {"judge": answer}

        with ThreadPoolExecutor(ENDPOINT_CONCURRENCY) as pool:
            graded = list(pool.map(grade, zip(items, replies)))
        return Scores([v for v, _ in graded], [d for _, d in graded])

    def describe(self) -> dict:
        return super().describe() | {"judge": self.spec, "prompt": JUDGE_PROMPT}


def pairwise(endpoint: Endpoint, items: list[Item], a: list[Generation], b: list[Generation]
             ) -> tuple[list[float | None], list[dict]]:
    """Per example: +1 when b's reply won in both orders, −1 when a's did, 0 for a tie or split decision, None
    when the judge named no winner in either order; with the judge's two answers."""
    def decide(index: int) -> tuple[float | None, dict]:
        item = items[index]
        answers = []
        for first, second in ((a[index], b[index]), (b[index], a[index])):
            answers.append(endpoint.reply([{"role": "user", "content": PAIRWISE_PROMPT.format(
                conversation=conversation_text(item.prompt), reference=item.reference, first=first.text,
                second=second.text)}], None, JUDGE_MAX_TOKENS).text)
        a_first, b_first = parse_winner(answers[0]), parse_winner(answers[1])
        if a_first is None and b_first is None:
            return None, {"answers": answers}
        # Translate both verdicts to "b won" (+1), "a won" (−1) or tie (0), then require agreement.
        votes = [{"2": 1, "1": -1}.get(a_first, 0), {"1": 1, "2": -1}.get(b_first, 0)]
        value = float(votes[0]) if votes[0] == votes[1] else 0.0
        return value, {"answers": answers}

    with ThreadPoolExecutor(ENDPOINT_CONCURRENCY) as pool:
        decided = list(pool.map(decide, range(len(items))))
    return [v for v, _ in decided], [d for _, d in decided]
