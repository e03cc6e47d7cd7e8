"""The cost estimate: OpenAI's default-epochs rule, per-example limits, the dated price table."""

import pytest

from tunelab.data.cost import local_estimate, openai_cost, openai_model


def test_openai_bill_for_the_seeds_default_model():
    cost = openai_cost("gpt-4o-mini", [500] * 160)
    assert (cost.model, cost.n_epochs, cost.billed_tokens, cost.usd) == ("gpt-4o-mini-2024-07-18", 3, 240_000, 0.72)
    assert cost.prices_as_of  # every estimate carries the table's date


def test_epochs_rule_and_per_example_limit():
    assert openai_cost("gpt-4o-mini", [100] * 5).n_epochs == 20  # 100 // 5
    assert openai_cost("gpt-4o-mini", [100] * 20_000).n_epochs == 1
    cost = openai_cost("gpt-3.5-turbo", [20_000] + [100] * 99, n_epochs=2)
    assert cost.examples_over_limit == 1
    assert cost.billed_tokens == 2 * (16_385 + 99 * 100)  # the long one is cut to the limit, and billed so


def test_unknown_model_lists_the_priced_ones():
    with pytest.raises(ValueError, match="gpt-4o-mini-2024-07-18"):
        openai_model("gpt-5-turbo")


def test_local_time_scales_with_model_size():
    small = local_estimate("a", 268_098_176, [1000] * 100, None)
    big = local_estimate("b", 268_098_176 * 10, [1000] * 100, None)
    assert small.trained_tokens == 300_000 and big.seconds == pytest.approx(small.seconds * 10, rel=0.01)
