"""`/v1/fine_tuning/jobs` through the official openai client: a job trains in the server's worker process."""

import re
import csv
import time

import openai
import pytest

import torch

from tunelab.models.generate import generate_replies, load_for_generation
from tunelab.runs.archive import unpack_run

from tests.server.conftest import API_KEY, Server, upload

# A server process and a worker that trains the tiny model: the first four tests are the fast tier's HTTP route
# tests (seconds each); the others kill, pause or run jobs side by side.


def wait_until_finished(client, job_id, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"{job_id} still {job.status} after {timeout} s")


def test_a_job_trains_and_reports_as_openai_does(tiny_client, recorder, tmp_path, support_conversations):
    client = tiny_client
    training = upload(client, tmp_path, support_conversations[:16])
    job = client.fine_tuning.jobs.create(training_file=training.id, model="gpt-4o-mini-2024-07-18",
                                         hyperparameters={"n_epochs": 2}, suffix="support", seed=7,
                                         metadata={"team": "support"})
    assert job.status == "validating_files" and job.model == "gpt-4o-mini-2024-07-18" and job.seed == 7
    done = wait_until_finished(client, job.id)
    assert done.status == "succeeded", done.error
    # OpenAI's five fields, starting with the model as the client named it; the real base stays visible
    assert re.fullmatch(rf"ft:gpt-4o-mini-2024-07-18:tunelab:support:{job.id.removeprefix('ftjob-')[:8]}",
                        done.fine_tuned_model), done.fine_tuned_model
    assert done.model == "gpt-4o-mini-2024-07-18" and done.to_dict()["base_model"].startswith("tiny-model")
    assert done.trained_tokens > 0 and done.finished_at >= done.created_at and done.error is None
    assert done.hyperparameters.n_epochs == 2 and done.hyperparameters.batch_size == 1  # auto, resolved
    results = client.files.content(done.result_files[0]).read().decode()
    assert results.splitlines()[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert len(results.splitlines()) == 1 + 32  # 16 examples / batch 1 × 2 epochs

    # The second result file is the run itself: unpacked here, it generates as the server's model does.
    assert len(done.result_files) == 2
    run_file = client.files.retrieve(done.result_files[1])
    assert run_file.purpose == "fine-tune-results" and run_file.filename == f"{job.id}-run.tar"
    (tmp_path / "run.tar").write_bytes(client.files.content(run_file.id).read())
    run = unpack_run(tmp_path / "run.tar", tmp_path / "run")
    assert run.job()["fine_tuned_model"] == done.fine_tuned_model and not run.checkpoints_dir.exists()
    question = [{"role": "user", "content": "Where is my order?"}]
    local = generate_replies(load_for_generation(str(run.path), dtype=torch.float32), [question], max_new_tokens=6)[0]
    served = client.chat.completions.create(model=done.fine_tuned_model, messages=question, max_tokens=6,
                                            temperature=0).choices[0].message.content
    assert local.text == served

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = [e for e in events if e.type == "metrics"]
    assert len(metrics) == 32 and metrics[0].data["step"] == 32  # newest first
    assert set(metrics[0].data) >= {"step", "total_steps", "train_loss", "train_mean_token_accuracy"}
    assert metrics[0].message.startswith("Step 32/32: training loss=")
    messages = [e.message for e in events]
    assert messages[-1] == f"Created fine-tuning job: {job.id}" and "Files validated, moving job to queued state" in messages
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "support"}).data] == [job.id]
    assert client.fine_tuning.jobs.list(metadata={"team": "other"}).data == []
    assert recorder.check_all() > 5


def test_bad_jobs_are_refused_or_fail_as_openai_says(tiny_client, recorder, tmp_path, support_conversations):
    client = tiny_client
    small = upload(client, tmp_path, support_conversations[:3], "small.jsonl")
    failed = wait_until_finished(client, client.fine_tuning.jobs.create(training_file=small.id,
                                                                        model="gpt-4o-mini-2024-07-18").id)
    assert failed.status == "failed"
    assert (failed.error.code, failed.error.param) == ("invalid_n_examples", "training_file")
    assert failed.error.message == "Training file has 3 example(s), but must have at least 10 examples"

    training = upload(client, tmp_path, support_conversations[:12])
    with pytest.raises(openai.NotFoundError) as caught:
        client.fine_tuning.jobs.create(training_file=training.id, model="gpt-5")
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="n_epochs: must be a whole number ≥ 1 or 'auto'"):
        client.fine_tuning.jobs.create(training_file=training.id, model="gpt-4o-mini-2024-07-18",
                                       hyperparameters={"n_epochs": 0})
    with pytest.raises(openai.BadRequestError, match="method.reinforcement.grader.type: must be one of") as caught:
        client.fine_tuning.jobs.create(training_file=training.id, model="gpt-4o-mini-2024-07-18",
                                       method={"type": "reinforcement", "reinforcement": {"grader": {}}})
    assert caught.value.body["param"] == "method.reinforcement.grader.type"
    with pytest.raises(openai.BadRequestError, match="beta") as caught:
        client.fine_tuning.jobs.create(training_file=training.id, model="gpt-4o-mini-2024-07-18",
                                       method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}})
    assert caught.value.body["param"].endswith("beta")
    with pytest.raises(openai.BadRequestError, match="not a fine-tune file"):
        client.fine_tuning.jobs.create(training_file="file-doesnotexist", model="gpt-4o-mini-2024-07-18")

    # Preference pairs upload as OpenAI takes them (a malformed pair is a 400 naming its line), and a supervised
    # job on them fails saying what the file holds.
    pairs = [{"input": {"messages": c["messages"][:-1]}, "preferred_output": c["messages"][-1:],
              "non_preferred_output": [{"role": "assistant", "content": "No idea."}]} for c in support_conversations[:12]]
    bad = [*pairs[:4], dict(pairs[4], non_preferred_output="No idea."), *pairs[5:]]
    with pytest.raises(openai.BadRequestError) as caught:
        upload(client, tmp_path, bad, "bad-pairs.jsonl")
    assert "bad-pairs.jsonl, line 5: non_preferred_output: must be a list of exactly one assistant message" in \
        caught.value.body["message"]
    preference = upload(client, tmp_path, pairs, "pairs.jsonl")
    refused = wait_until_finished(client, client.fine_tuning.jobs.create(training_file=preference.id,
                                                                         model="gpt-4o-mini-2024-07-18").id)
    assert (refused.status, refused.error.code, refused.error.param) == ("failed", "invalid_training_file", "training_file")
    assert "holds preference pairs" in refused.error.message
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nothere")
    recorder.check_all()


def test_a_dpo_job_from_a_supervised_fine_tune_trains_and_answers(tiny_client, recorder, tmp_path,
                                                                  support_conversations):
    """OpenAI's recipe: supervised first, then DPO from the supervised model, named by its `ft:` name."""
    client = tiny_client
    training = upload(client, tmp_path, support_conversations[:16])
    supervised = wait_until_finished(client, client.fine_tuning.jobs.create(
        training_file=training.id, model="gpt-4o-mini-2024-07-18", hyperparameters={"n_epochs": 1}, suffix="sft").id)
    assert supervised.status == "succeeded", supervised.error
    pairs = [{"input": {"messages": c["messages"][:-1]}, "preferred_output": c["messages"][-1:],
              "non_preferred_output": [{"role": "assistant", "content": c["messages"][-1]["content"][:12]}]}
             for c in support_conversations[:16]]
    preference = upload(client, tmp_path, pairs, "pairs.jsonl")
    job = client.fine_tuning.jobs.create(training_file=preference.id, model=supervised.fine_tuned_model, suffix="dpo",
                                         method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1,
                                                                                            "n_epochs": 2}}})
    done = wait_until_finished(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.model == supervised.fine_tuned_model and done.method.type == "dpo"
    assert done.method.dpo.hyperparameters.beta == 0.1 and done.method.dpo.hyperparameters.n_epochs == 2
    # Named after the base as the client first named it, as OpenAI names a fine-tune of a fine-tune.
    assert done.fine_tuned_model.startswith("ft:gpt-4o-mini-2024-07-18:tunelab:dpo:"), done.fine_tuned_model
    results = client.files.content(done.result_files[0]).read().decode().splitlines()
    assert results[0].endswith("train_reward_margin,train_reward_accuracy,valid_reward_margin,valid_reward_accuracy")
    first_loss = float(results[1].split(",")[1])
    assert abs(first_loss - 0.693147) < 0.01  # the supervised model is the reference, and the start
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    assert metrics and "train_reward_accuracy" in metrics[0] and "train_loss" in metrics[0]
    answer = client.chat.completions.create(model=done.fine_tuned_model, max_tokens=6, temperature=0,
                                            messages=[{"role": "user", "content": "Where is my order?"}])
    assert answer.model == done.fine_tuned_model and answer.usage.completion_tokens > 0

    chat_as_pairs = wait_until_finished(client, client.fine_tuning.jobs.create(
        training_file=training.id, model="gpt-4o-mini-2024-07-18", method={"type": "dpo"}).id)
    assert (chat_as_pairs.status, chat_as_pairs.error.code) == ("failed", "invalid_training_file")
    assert "holds chat examples (messages), not preference pairs" in chat_as_pairs.error.message
    recorder.check_all()


def test_a_reinforcement_job_trains_with_openais_graders(tiny_client, recorder, tmp_path, support_conversations):
    """`method: reinforcement` with a multi grader over a python grader (sandboxed) through the official SDK:
    OpenAI's hyperparameters taken (compute_multiplier → replies per prompt), the grader kept in the job, the
    reward figures in the result file and the metrics events. (The multi grader is spelled as OpenAI's schema
    has it, one sub-grader, so every answer can be checked against the schema; the job echoes the grader as
    sent, and the other two spellings train alike: tests/graders.)"""
    client = tiny_client
    tasks = [{"messages": c["messages"][:-1], "reference": c["messages"][-1]["content"][:40]}
             for c in support_conversations[:12]]
    training = upload(client, tmp_path, tasks, "tasks.jsonl")
    grader = {"type": "multi", "name": "reply", "calculate_output": "0.5 * length + 0.5",
              "graders": {"type": "python", "name": "length",
                          "source": "def grade(sample, item):\n    return min(1.0, len(sample['output_text']) / 40)\n"}}
    mentions = {"type": "string_check", "name": "mentions", "input": "{{sample.output_text}}", "reference": "order",
                "operation": "ilike"}
    job = client.fine_tuning.jobs.create(
        training_file=training.id, model="gpt-4o-mini-2024-07-18", suffix="rft",
        method={"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": {
            "n_epochs": 1, "batch_size": 4, "compute_multiplier": 0.25, "eval_interval": 2, "eval_samples": 2}}},
        extra_body={"tunelab": {"max_completion_tokens": 8, "validation_split": 0.2}})
    done = wait_until_finished(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.method.type == "reinforcement" and done.method.reinforcement.grader.to_dict() == grader
    assert done.method.reinforcement.hyperparameters.compute_multiplier == 0.25
    assert done.to_dict()["tunelab"]["max_completion_tokens"] == 8
    results = list(csv.DictReader(client.files.content(done.result_files[0]).read().decode().splitlines()))
    assert len(results) == 3  # 10 tasks for training (2 held out), in batches of 4
    # compute_multiplier 0.25: 2 replies per prompt (of the usual 8), each at most 8 tokens
    assert sum(round(float(r["sampled_tokens"]) / float(r["train_completion_tokens"])) for r in results) == 10 * 2
    assert all(float(r["train_completion_tokens"]) <= 8 for r in results)
    assert [r["valid_reward_mean"] != "" for r in results] == [False, True, True]  # eval_interval 2, and the end
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    assert metrics and all(0.5 <= m["train_reward_mean"] <= 1 for m in metrics)
    answer = client.chat.completions.create(model=done.fine_tuned_model, max_tokens=6, temperature=0,
                                            messages=[{"role": "user", "content": "Where is my order?"}])
    assert answer.usage.completion_tokens > 0

    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(training_file=training.id, model="gpt-4o-mini-2024-07-18", method={
            "type": "reinforcement", "reinforcement": {"grader": {**grader, "calculate_output": "length + size"}}})
    assert refused.value.body["param"] == "method.reinforcement.grader.calculate_output"
    with pytest.raises(openai.NotFoundError) as refused:
        client.fine_tuning.jobs.create(training_file=training.id, model="gpt-4o-mini-2024-07-18", method={
            "type": "reinforcement", "reinforcement": {"grader": {
                "type": "score_model", "name": "judge", "model": "gpt-5-judge", "input": [{"role": "user", "content": "x"}]}}})
    assert refused.value.body["param"] == "method.reinforcement.grader.model"
    chat = upload(client, tmp_path, support_conversations[:12], "chat.jsonl")
    chat_as_tasks = wait_until_finished(client, client.fine_tuning.jobs.create(
        training_file=chat.id, model="gpt-4o-mini-2024-07-18",
        method={"type": "reinforcement", "reinforcement": {"grader": mentions}}).id)
    assert (chat_as_tasks.status, chat_as_tasks.error.code) == ("failed", "invalid_training_file")
    assert "holds chat examples (each ending with the assistant's reply), not reinforcement tasks" in \
        chat_as_tasks.error.message
    recorder.check_all()


@pytest.mark.slow
def test_a_running_job_is_cancelled_within_seconds(tiny_client, recorder, tmp_path, support_conversations):
    client = tiny_client
    training = upload(client, tmp_path, support_conversations[:40])
    job = client.fine_tuning.jobs.create(training_file=training.id, model="gpt-4o-mini-2024-07-18",
                                         hyperparameters={"n_epochs": 25, "batch_size": 1})
    deadline = time.monotonic() + 120
    while client.fine_tuning.jobs.retrieve(job.id).status != "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    asked = time.monotonic()
    client.fine_tuning.jobs.cancel(job.id)
    ended = wait_until_finished(client, job.id, timeout=60)
    assert ended.status == "cancelled" and time.monotonic() - asked < 15
    with pytest.raises(openai.BadRequestError, match="already cancelled"):
        client.fine_tuning.jobs.cancel(job.id)
    recorder.check_all()


def test_the_fine_tuned_model_answers_streams_and_can_be_deleted(tiny_client, recorder, tmp_path,
                                                                   support_conversations):
    client = tiny_client
    training = upload(client, tmp_path, support_conversations[:12])
    job = wait_until_finished(client, client.fine_tuning.jobs.create(
        training_file=training.id, model="gpt-4o-mini-2024-07-18", hyperparameters={"n_epochs": 1}).id)
    name = job.fine_tuned_model
    assert name.startswith("ft:gpt-4o-mini-2024-07-18:tunelab::") and len(name.split(":")) == 5
    assert name in [m.id for m in client.models.list().data] and client.models.retrieve(name).owned_by == "user"
    question = [{"role": "system", "content": "You are Brightlane's support agent."},
                {"role": "user", "content": [{"type": "text", "text": "Where is my order?"}]}]
    answer = client.chat.completions.create(model=name, messages=question, temperature=0, max_tokens=12)
    choice = answer.choices[0]
    assert answer.object == "chat.completion" and answer.model == name and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens <= 12 and answer.usage.total_tokens == \
        answer.usage.prompt_tokens + answer.usage.completion_tokens
    again = client.chat.completions.create(model=name, messages=question, temperature=0, max_tokens=12)
    assert again.choices[0].message.content == choice.message.content  # greedy is deterministic
    base = client.chat.completions.create(model="gpt-4o-mini-2024-07-18", messages=question, max_tokens=5, n=2,
                                          temperature=1.0, seed=3)
    assert len(base.choices) == 2

    pieces, usage = [], None
    for chunk in client.chat.completions.create(model=name, messages=question, temperature=0, max_tokens=12,
                                                stream=True, stream_options={"include_usage": True}):
        pieces += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    assert "".join(pieces) == choice.message.content and usage.completion_tokens == answer.usage.completion_tokens

    assert client.models.delete(name).deleted
    with pytest.raises(openai.NotFoundError, match="model_not_found|does not exist"):
        client.chat.completions.create(model=name, messages=question)
    recorder.check_all()


@pytest.mark.slow
def test_a_paused_job_stops_and_resumes_to_the_end(tiny_client, recorder, tmp_path, support_conversations):
    client = tiny_client
    training = upload(client, tmp_path, support_conversations[:24])
    job = client.fine_tuning.jobs.create(training_file=training.id, model="gpt-4o-mini-2024-07-18",
                                         hyperparameters={"n_epochs": 4, "batch_size": 2})  # 48 steps
    deadline = time.monotonic() + 120
    while not [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"] \
            and time.monotonic() < deadline:  # a few steps in
        time.sleep(0.2)
    with pytest.raises(openai.BadRequestError, match="is running; only a paused job can be resumed"):
        client.fine_tuning.jobs.resume(job.id)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    time.sleep(3)  # the worker stops after its current step, then leaves the job alone
    steps_when_paused = len([e for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data
                             if e.type == "metrics"])
    time.sleep(2)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    assert len([e for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data
                if e.type == "metrics"]) == steps_when_paused < 48
    with pytest.raises(openai.BadRequestError, match="only a queued or running job can be paused"):
        client.fine_tuning.jobs.pause(job.id)
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_until_finished(client, job.id)
    assert done.status == "succeeded", done.error
    results = client.files.content(done.result_files[0]).read().decode().splitlines()
    assert [int(line.split(",")[0]) for line in results[1:]] == list(range(1, 49))  # every step once, in order
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
    assert "Job paused" in messages and "Job resumed" in messages
    assert messages.count("The job has successfully completed") == 1  # the server's event, not the run's too
    with pytest.raises(openai.BadRequestError, match="has already succeeded; a finished job cannot be paused"):
        client.fine_tuning.jobs.pause(job.id)
    recorder.check_all()


def test_checkpoints_are_listed_and_answer_as_models(tiny_client, recorder, tmp_path, support_conversations):
    client = tiny_client
    training = upload(client, tmp_path, support_conversations[:12])
    job = wait_until_finished(client, client.fine_tuning.jobs.create(
        training_file=training.id, model="gpt-4o-mini-2024-07-18",
        hyperparameters={"n_epochs": 2, "batch_size": 2}).id)  # 6 steps an epoch: checkpoints at 6 and 12
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [12, 6]  # newest first
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-12"
    assert checkpoints[0].metrics.train_loss > 0 and checkpoints[0].fine_tuning_job_id == job.id
    question = [{"role": "user", "content": "My parcel is late."}]
    final = client.chat.completions.create(model=job.fine_tuned_model, messages=question, temperature=0, max_tokens=10)
    last = client.chat.completions.create(model=checkpoints[0].fine_tuned_model_checkpoint, messages=question,
                                          temperature=0, max_tokens=10)
    earlier = client.chat.completions.create(model=checkpoints[1].fine_tuned_model_checkpoint, messages=question,
                                             temperature=0, max_tokens=10)
    # The last checkpoint holds the final weights: the same greedy answer as the fine-tuned model.
    assert last.choices[0].message.content == final.choices[0].message.content
    assert isinstance(earlier.choices[0].message.content, str)
    recorder.check_all()


@pytest.mark.slow
def test_jobs_run_side_by_side_each_under_the_launcher(tmp_path, tiny_model_dir, support_conversations):
    """`--max-jobs 2` trains two jobs at once; `--launcher` starts each under accelerate, in two processes."""
    import sys

    from tests.server.conftest import httpx

    launcher = (f"{sys.executable} -m accelerate.commands.launch --num_processes 2 --num_machines 1 "
                "--mixed_precision no --dynamo_backend no --multi_gpu --main_process_port 0")
    server = Server(tmp_path / "data", "--alias", f"gpt-4o-mini-2024-07-18={tiny_model_dir}", "--max-jobs", "2",
                    "--launcher", launcher)
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, http_client=httpx.Client())
        training = upload(client, tmp_path, support_conversations[:12])
        jobs = [client.fine_tuning.jobs.create(training_file=training.id, model="gpt-4o-mini-2024-07-18",
                                               hyperparameters={"n_epochs": 2, "batch_size": 2}) for _ in range(2)]
        side_by_side, deadline = False, time.monotonic() + 300
        while time.monotonic() < deadline:
            statuses = [client.fine_tuning.jobs.retrieve(job.id).status for job in jobs]
            side_by_side |= statuses == ["running", "running"]
            if all(status in ("succeeded", "failed", "cancelled") for status in statuses):
                break
            time.sleep(0.2)
        assert statuses == ["succeeded", "succeeded"] and side_by_side, statuses
        for job in jobs:
            messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
            assert "Training in 2 processes (data-parallel)" in messages
    finally:
        server.stop()
