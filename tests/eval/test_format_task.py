"""A format task on the default model: free-text orders → a fixed JSON object. Held-out requests are phrased
in ways training never saw; fine-tuning must raise json_valid and json_schema with intervals above zero."""

import json
import random

import pytest

from tunelab.core.settings import TrainConfig
from tunelab.eval.run import EvalConfig, evaluate
from tunelab.train.local import train

SYSTEM = "Extract the order as a JSON object with the keys item, quantity, colour and city."
ITEMS = ["mug", "lamp", "towel", "cushion", "vase", "rug", "candle", "blanket", "plate", "mirror"]
COLOURS = ["red", "blue", "green", "white", "black", "grey", "yellow"]
CITIES = ["Leeds", "Bristol", "York", "Cardiff", "Glasgow", "Norwich", "Bath", "Derby"]
NUMBERS = ["one", "two", "three", "four", "five", "six"]
TRAINING_PHRASINGS = [
    "I'd like {n} {colour} {item}s delivered to {city}.",
    "Please send {n} {item}s in {colour} to our shop in {city}.",
    "Order: {q} x {item}, colour {colour}, ship to {city}",
    "Can I get {n} {colour} {item}s? I live in {city}.",
]
HELD_OUT_PHRASINGS = [
    "We need {q} {item}s, {colour} ones, sent to {city} please.",
    "{city} address - {n} {colour} {item}s, thanks",
]


def orders(phrasings: list[str], count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    examples = []
    for k in range(count):
        item, colour, city, quantity = rng.choice(ITEMS), rng.choice(COLOURS), rng.choice(CITIES), rng.randint(1, 6)
        request = phrasings[k % len(phrasings)].format(n=NUMBERS[quantity - 1], q=quantity, item=item, colour=colour,
                                                       city=city)
        answer = json.dumps({"item": item, "quantity": quantity, "colour": colour, "city": city})
        examples.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request},
                                      {"role": "assistant", "content": answer}]})
    return examples


@pytest.mark.slow
@pytest.mark.heavy(seconds=85)
def test_fine_tuning_a_json_format_raises_validity_with_an_interval_above_zero(tmp_path, write_jsonl):
    train_file = write_jsonl("train.jsonl", orders(TRAINING_PHRASINGS, 40, seed=1))
    test_file = write_jsonl("test.jsonl", orders(HELD_OUT_PHRASINGS, 16, seed=2))
    # One epoch of the 40 orders already ends every held-out reply in schema-valid JSON (measured on bf16 and
    # AVX2-only fp32 CPUs: 100%, the base 0%); more epochs only made the test slower.
    run = train(TrainConfig(data=str(train_file), out=str(tmp_path / "run"), n_epochs=1))
    out = evaluate(EvalConfig(model=str(run), data=str(test_file), fewshot=0, forgetting="off"))
    results = json.loads((out / "results.json").read_text())

    assert [s["name"] for s in results["scorers"]] == ["json_valid", "json_schema", "ended_turn", "length"]
    schema = results["scorers"][1]["schema"]
    assert schema["required"] == ["city", "colour", "item", "quantity"]
    assert schema["properties"]["quantity"]["type"] == "integer"
    for scorer in ("json_valid", "json_schema"):
        found = next(c for c in results["comparisons"] if c["scorer"] == scorer and (c["a"], c["b"]) == ("base", "fine_tuned"))
        assert found["detectable"] and found["ci95"][0] > 0, found
        assert results["systems"]["fine_tuned"]["scores"][scorer]["mean"] >= 0.75
    assert "Fine-tuning raised schema-valid JSON" in results["verdict"]
