"""`tunelab advise --volume`: the break-even of a small fine-tune against a large prompted model."""

import json

from tests.advise.test_decide import READY, format_task, write
from tests.conftest import run_cli
from tunelab.advise.decide import Answers, decide, measure_data
from tunelab.advise.volume import FEWSHOT_EXAMPLES, break_even
from tunelab.data.cost import price_table


def messages(conversations):
    return [conversation["messages"] for conversation in conversations]


def test_the_costs_follow_the_calls_and_the_dated_prices():
    data = messages(format_task(150))
    small, large = break_even(1_000, data), break_even(10_000, data)
    assert small.prices_as_of == str(price_table()["as_of"])
    assert abs(large.prompted.usd_per_day - 10 * small.prompted.usd_per_day) < 0.05  # each rounded to cents
    # The prompted model pays for the examples in every prompt; the fine-tunes do not.
    assert small.tokens.fewshot > FEWSHOT_EXAMPLES * small.tokens.input
    hosted = [option for option in small.fine_tuned if option.usd_per_day is not None]
    assert [option.name.split()[0] for option in hosted] == ["gpt-4.1-mini", "gpt-4.1-nano"]
    for cheap, busy in zip(hosted, large.fine_tuned):
        assert cheap.training_usd == busy.training_usd > 0  # training does not depend on the calls
        assert busy.days_to_pay_back < cheap.days_to_pay_back  # more calls, faster payback
        saving_a_day = small.prompted.usd_per_day - cheap.usd_per_day
        assert abs(cheap.days_to_pay_back - cheap.training_usd / saving_a_day) < 0.05 * cheap.days_to_pay_back + 0.01
    local = small.fine_tuned[-1]
    assert local.usd_per_day is None and local.cpu_hours_per_day > 0 and "machine is the cost" in local.note


def test_a_high_volume_stands_in_for_the_answer(tmp_path):
    unanswered = Answers(**{**READY.__dict__, "high_volume_narrow": "unknown"})
    busy = decide(unanswered, measure_data(write(tmp_path, format_task(150)), calls_per_day=50_000))
    assert busy.recommendation == "fine_tune" and busy.confidence == decide(READY, measure_data(
        write(tmp_path, format_task(150)))).confidence
    reason = next(r for r in busy.reasons if r.step == "high-volume narrow use")
    assert "a month and pays back its training in" in reason.finding and f"prices as of {price_table()['as_of']}" in reason.evidence


def test_a_low_volume_lowers_the_confidence_and_an_efficiency_goal_is_prompted(tmp_path):
    measured = measure_data(write(tmp_path, format_task(150)), calls_per_day=20)
    quiet = decide(READY, measured)
    assert quiet.recommendation == "fine_tune" and quiet.confidence <= decide(READY, measure_data(
        write(tmp_path, format_task(150)))).confidence - 0.2 + 1e-9
    assert "worth it from $100" in next(r for r in quiet.reasons if r.step == "high-volume narrow use").finding
    efficiency = decide(Answers(**{**READY.__dict__, "goal": "efficiency_at_scale"}), measured)
    assert efficiency.recommendation == "prompt_first"


def test_the_command_prints_the_break_even_with_its_date(tmp_path):
    data = write(tmp_path, format_task(150))
    command = ["advise", "--data", data, "--volume", "5000"]  # in-process, through the real entry point's app
    as_json = run_cli(*command, "--json", input="")
    assert as_json.returncode == 0, as_json.stderr
    measured = json.loads(as_json.stdout)["measurements"]
    assert measured["volume"]["calls_per_day"] == 5000 and measured["volume"]["prices_as_of"] == str(price_table()["as_of"])
    assert measured["training"]["local"]["seconds"] > 0 and measured["training"]["openai"]["usd"] > 0
    shown = run_cli(*command, input="")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.decode()
    assert "5,000 calls a day" in text and f"(prices as of {price_table()['as_of']})" in text
    assert "gpt-4.1-nano fine-tuned at OpenAI" in text and "CPU-hours" in text
    without_data = run_cli("advise", "--volume", "10")
    assert without_data.returncode == 2 and b"--volume needs --data" in without_data.stderr  # a usage error
    assert b"Traceback" not in without_data.stderr
