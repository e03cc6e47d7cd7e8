"""Form or facts: a style dataset (the support example) reads as form, a knowledge Q&A set as facts."""

import json
import random

from tests.conftest import EXAMPLES, read_jsonl
from tunelab.advise.form import form_and_facts


def knowledge_questions(count: int) -> list[dict]:
    """Answers full of names, years and places the question never mentions: what RAG is for."""
    rng = random.Random(0)
    first = ["Maria", "Jonas", "Aiko", "Tomasz", "Leila", "Okonkwo", "Ingrid", "Rafael"]
    last = ["Lindqvist", "Moreau", "Tanaka", "Kowalski", "Haddad", "Eze", "Berg", "Alvarez"]
    places = ["Uppsala", "Lyon", "Sapporo", "Gdansk", "Beirut", "Enugu", "Bergen", "Valencia"]
    conversations = []
    for index in range(count):
        syllables = ["ka", "lo", "mi", "ru", "te", "zan", "bor", "vel"]  # distinct names, no digits: the data
        topic = "the compound " + "".join(syllables[(index >> (3 * k)) % 8] for k in range(3))  # toolkit
        # reads prompts that differ only in digits as one prompt
        answer = (f"It was first described in {rng.randint(1850, 1990)} by {rng.choice(first)} {rng.choice(last)} "
                  f"at the University of {rng.choice(places)}, and its melting point is {rng.randint(40, 400)} °C. "
                  f"{rng.choice(first)} {rng.choice(last)} later patented it in {rng.choice(places)}.")
        conversations.append({"messages": [{"role": "user", "content": f"Who discovered {topic}?"},
                                           {"role": "assistant", "content": answer}]})
    return conversations


def test_the_support_example_teaches_form():
    profile = form_and_facts(read_jsonl(EXAMPLES / "train.jsonl"))
    assert profile.replies == 160 and profile.new_fact_share < 0.10  # order numbers come from the prompts
    assert profile.shared_opening == "hi there" and profile.shared_opening_share > 0.75  # 125 of 160
    assert profile.shared_closing_share > 0.9  # every reply signs off the same way


def test_a_knowledge_set_teaches_facts():
    profile = form_and_facts(knowledge_questions(60))
    assert profile.new_fact_share > 0.25 and profile.json_share == 0.0


def test_json_replies_and_facts_copied_from_the_prompt_are_form():
    conversations = [{"messages": [
        {"role": "user", "content": f"Extract: Order BL-{n} for Dana Whitfield, 3 lamps, due 2026-03-0{n % 9 + 1}."},
        {"role": "assistant", "content": json.dumps({"order": f"BL-{n}", "name": "Dana Whitfield", "items": 3,
                                                      "due": f"2026-03-0{n % 9 + 1}"})}]} for n in range(30)]
    profile = form_and_facts(conversations)
    assert profile.json_share == 1.0 and profile.new_fact_words == 0 and profile.fact_words > 0
