"""Does a chat dataset teach form or facts? The measurement `tunelab advise` weighs against fine-tuning.

    profile = form_and_facts(conversations)
    profile.new_fact_share        # of the replies' words, the share that are facts the prompt did not hold
    profile.shared_opening_share  # of the replies, the share that open with the most common first words

Fine-tuning teaches style and format well and facts badly: a model trained on answers full of names,
numbers and dates it was never shown learns to write such answers, not to know them — that is what
retrieval (RAG) is for. So for each reply (the last assistant message) this counts:

- fact words: numbers and codes (`3–5`, `BL-730264`, `£12.50`), dates, and capitalised words inside a
  sentence (names, products, places) — and of those, the ones absent from the conversation before the reply;
- form signals: how alike the replies open and close (the most common first and last two words), how many
  are JSON, and how much their lengths vary (coefficient of variation).

Hand-written rather than an entity tagger: spaCy or a NER model would name entities better, but would add a
model download and minutes of CPU for a ratio that only has to tell "mostly copied from the prompt or
stylistic" from "mostly new facts"; the patterns below do that on any language written in Latin script.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass

from tunelab.conversation.reader import split_prompt_and_reply

_WORD = re.compile(r"[\w£$€%][\w£$€%.,:/'’–-]*\w|[\w£$€%]", re.UNICODE)
_NUMBER_OR_CODE = re.compile(r"\d")
_SENTENCE_END = re.compile(r"[.!?:]\s*$|\n\s*$")
_MONTHS = {"january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
OPENING_WORDS = 2  # "Hi there", "Sure,": an opening is short; a closing signature is longer, but two words find it too


@dataclass
class FormAndFacts:
    replies: int
    reply_words: int
    fact_words: int
    new_fact_words: int  # fact words not found in the conversation before the reply
    shared_opening_share: float
    shared_opening: str
    shared_closing_share: float
    shared_closing: str
    json_share: float
    length_variation: float  # standard deviation / mean of reply lengths in words

    @property
    def new_fact_share(self) -> float:
        return self.new_fact_words / self.reply_words if self.reply_words else 0.0

    def as_dict(self) -> dict:
        return {"replies": self.replies, "reply_words": self.reply_words, "fact_words": self.fact_words,
                "new_fact_words": self.new_fact_words, "new_fact_share": round(self.new_fact_share, 4),
                "shared_opening": self.shared_opening, "shared_opening_share": round(self.shared_opening_share, 4),
                "shared_closing": self.shared_closing, "shared_closing_share": round(self.shared_closing_share, 4),
                "json_share": round(self.json_share, 4), "length_variation": round(self.length_variation, 4)}


def form_and_facts(conversations: list[dict]) -> FormAndFacts:
    """The measurements over every conversation's last assistant reply."""
    openings, closings, lengths = Counter(), Counter(), []
    reply_words = fact_words = new_fact_words = json_replies = 0
    for conversation in conversations:
        prompt, reply = split_prompt_and_reply(conversation)
        words = _WORD.findall(reply)
        if not words:
            continue
        known = {word.lower().strip(".,:") for message in prompt for word in _WORD.findall(_text(message))}
        facts = _fact_words(reply)
        reply_words += len(words)
        fact_words += len(facts)
        new_fact_words += sum(1 for word in facts if word.lower().strip(".,:") not in known)
        lowered = [word.lower() for word in words]
        openings[" ".join(lowered[:OPENING_WORDS])] += 1
        closings[" ".join(lowered[-OPENING_WORDS:])] += 1
        lengths.append(len(words))
        json_replies += _is_json(reply)
    count = len(lengths)
    opening, opened = openings.most_common(1)[0] if openings else ("", 0)
    closing, closed = closings.most_common(1)[0] if closings else ("", 0)
    variation = statistics.pstdev(lengths) / statistics.mean(lengths) if count > 1 else 0.0
    return FormAndFacts(count, reply_words, fact_words, new_fact_words, opened / count if count else 0.0, opening,
                        closed / count if count else 0.0, closing, json_replies / count if count else 0.0, variation)


def _fact_words(text: str) -> list[str]:
    """Numbers and codes, day and month names, and capitalised words that do not start a sentence."""
    facts = []
    for match in _WORD.finditer(text):
        word = match.group()
        before = text[:match.start()]
        starts_sentence = not before.strip() or bool(_SENTENCE_END.search(before))
        if _NUMBER_OR_CODE.search(word) or word.lower() in _MONTHS:
            facts.append(word)
        elif word[0].isupper() and not starts_sentence and word not in ("I", "I'm", "I've", "I'll", "I'd"):
            facts.append(word)
    return facts


def _text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _is_json(text: str) -> bool:
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return False
    try:
        json.loads(stripped)
    except ValueError:
        return False
    return True
