"""`/v1/fine_tuning/alpha/graders/run` and `/validate` through the official SDK: OpenAI's shapes, graded errors as
200s with their flags, a 400 naming the field only for a grader that does not fit its schema."""

from __future__ import annotations

import openai
import pytest

EMAIL = {"type": "string_check", "name": "email", "input": "{{sample.output_json.email}}", "reference": "{{item.email}}",
         "operation": "eq"}
NAME = {"type": "text_similarity", "name": "name", "input": "{{sample.output_json.name}}", "reference": "{{item.name}}",
        "evaluation_metric": "fuzzy_match"}


def test_validate_answers_the_grader_and_takes_the_three_multi_spellings(tiny_client):
    for graders in ({"email": EMAIL, "name": NAME}, [EMAIL, NAME], EMAIL):
        grader = {"type": "multi", "name": "contact", "graders": graders, "calculate_output": "email"}
        answer = tiny_client.fine_tuning.alpha.graders.with_raw_response.validate(grader=grader)
        assert answer.http_response.json() == {"grader": grader}  # read back as sent
        assert answer.parse().grader.calculate_output == "email"


def test_validate_refuses_a_grader_naming_its_field(tiny_client):
    with pytest.raises(openai.BadRequestError) as refused:
        tiny_client.fine_tuning.alpha.graders.validate(grader={**EMAIL, "operation": "equals"})
    assert refused.value.body["param"] == "grader.operation"
    with pytest.raises(openai.BadRequestError) as refused:
        tiny_client.fine_tuning.alpha.graders.validate(grader={"type": "multi", "name": "m", "graders": [EMAIL],
                                                               "calculate_output": "email + phone"})
    assert refused.value.body["param"] == "grader.calculate_output" and "phone" in refused.value.body["message"]


def test_run_answers_in_openais_shape(tiny_client):
    grader = {"type": "multi", "name": "contact", "graders": {"email": EMAIL, "name": NAME},
              "calculate_output": "0.5 * email + 0.5 * name"}
    item = {"email": "robin@brightlane.example", "name": "Robin Vale"}
    answer = tiny_client.fine_tuning.alpha.graders.run(
        grader=grader, model_sample='{"email": "robin@brightlane.example", "name": "Robin Vale"}', item=item)
    assert answer.reward == 1.0 and answer.sub_rewards == {"email": 1.0, "name": 1.0}
    assert answer.metadata.name == "contact" and answer.metadata.type == "multi"
    assert not any(value for key, value in answer.metadata.errors.to_dict().items() if not key.endswith(("details", "type")))
    assert answer.metadata.execution_time >= 0

    not_json = tiny_client.fine_tuning.alpha.graders.run(grader=grader, model_sample="Robin Vale", item=item)
    assert not_json.reward == 0.0 and not_json.metadata.errors.sample_parse_error


def test_a_missing_variable_is_a_graded_error_not_a_500(tiny_client):
    answer = tiny_client.fine_tuning.alpha.graders.run(
        grader={**EMAIL, "input": "{{sample.output_text}}", "reference": "{{item.nope}}"}, model_sample="x", item={})
    assert answer.reward == 0.0 and answer.metadata.errors.invalid_variable_error


def test_a_python_grader_runs_sandboxed_and_cannot_see_the_servers_data(tiny_client, tiny_server):
    source = ("def grade(sample, item):\n    return float(sample['output_text'].strip() == item['answer'])\n")
    answer = tiny_client.fine_tuning.alpha.graders.run(grader={"type": "python", "name": "exact", "source": source},
                                                       model_sample="42", item={"answer": "42"})
    assert answer.reward == 1.0
    spy = ("def grade(sample, item):\n    return float(len(open(item['db'], 'rb').read()) > 0)\n")
    answer = tiny_client.fine_tuning.alpha.graders.run(
        grader={"type": "python", "name": "spy", "source": spy}, model_sample="x",
        item={"db": str(tiny_server.data_dir / "tunelab.db")})
    assert answer.reward == 0.0 and answer.metadata.errors.python_grader_runtime_error
    assert "FileNotFoundError" in answer.metadata.errors.python_grader_runtime_error_details


def test_a_score_model_grader_asks_the_servers_own_models(tiny_client):
    grader = {"type": "score_model", "name": "judge", "model": "gpt-4o-mini-2024-07-18", "range": [0, 10],
              "input": [{"role": "developer", "content": "Score the reply from 0 to 10."},
                        {"role": "user", "content": "Reference: {{item.reference}}\nReply: {{sample.output_text}}"}],
              "sampling_params": {"temperature": 0, "max_completions_tokens": 8}}
    answer = tiny_client.fine_tuning.alpha.graders.run(grader=grader, model_sample="It shipped.",
                                                       item={"reference": "Your order shipped."})
    # The tests' tiny model answers noise: a number in range is the reward, anything else a parse error.
    assert answer.metadata.errors.model_grader_parse_error or 0 <= answer.reward <= 10
    usage = answer.model_grader_token_usage_per_model["gpt-4o-mini-2024-07-18"]
    assert usage["prompt_tokens"] > 10 and 0 < usage["completion_tokens"] <= 8
    assert answer.metadata.token_usage == usage["total_tokens"]

    unknown = tiny_client.fine_tuning.alpha.graders.run(grader={**grader, "model": "no-such-model"}, model_sample="x",
                                                        item={"reference": "y"})
    assert unknown.reward == 0.0 and unknown.metadata.errors.model_grader_server_error
    assert "no-such-model" in unknown.metadata.errors.model_grader_server_error_details
