"""Four fine-tunes of one base through `tunelab serve`: one copy of the base answers all of them, requests to
different fine-tunes and to the base share generation steps, and each reply is the one it gets alone."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.server.conftest import API_KEY, httpx, upload
from tests.server.test_jobs import wait_until_finished

pytestmark = pytest.mark.slow  # a server process and four training jobs

BASE = "gpt-4o-mini-2024-07-18"


def test_four_fine_tunes_share_one_base_and_answer_in_one_batch_as_alone(tmp_path, tiny_model_dir,
                                                                       support_conversations):
    import openai

    from tests.server.conftest import Server

    # The four jobs train side by side (their processes' start-up is most of their time).
    tiny_server = Server(tmp_path / "data", "--alias", f"{BASE}={tiny_model_dir}", "--dtype", "fp32", "--max-jobs", "4")
    try:
        _four_fine_tunes(openai.OpenAI(base_url=tiny_server.base_url, api_key=API_KEY, max_retries=0), tiny_server,
                         tmp_path, support_conversations)
    finally:
        tiny_server.stop()


def _four_fine_tunes(client, tiny_server, tmp_path, support_conversations):
    training = upload(client, tmp_path, support_conversations[:12])
    jobs = [client.fine_tuning.jobs.create(training_file=training.id, model=BASE, seed=seed, suffix=f"team-{seed}",
                                           hyperparameters={"n_epochs": 1, "batch_size": 4,
                                                            "learning_rate_multiplier": 10})
            for seed in range(4)]
    models = [wait_until_finished(client, job.id).fine_tuned_model for job in jobs]
    assert all(models), models
    names = [*models, BASE]
    questions = [[{"role": "user", "content": text}] for text in ("Where is my order?", "Can I return a lamp?")]
    requests = [(name, messages) for messages in questions for name in names]

    def ask(request):
        name, messages = request
        return client.chat.completions.create(model=name, messages=messages, temperature=0,
                                              max_tokens=8).choices[0].message.content

    alone = [ask(request) for request in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(ask, requests))
    assert together == alone

    serving = httpx.get(f"{tiny_server.base_url}/tunelab/serving", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    loaded = serving["models"]
    assert len(loaded) == 1, loaded  # one copy of the base, not one per fine-tune
    assert sorted(loaded[0]["fine_tunes_attached"]) == sorted(models)
    assert loaded[0]["steps_with_several_adapters"] > 0, loaded[0]
    assert loaded[0]["caches"]["greedy"]["kv_cache_tokens"] >= 2048


def test_a_model_is_never_closed_under_a_request_when_more_are_asked_for_than_are_kept(tmp_path, tiny_model_dir):
    import shutil

    import openai

    from tests.server.conftest import Server

    shutil.copytree(tiny_model_dir, tmp_path / "tiny-copy")
    server = Server(tmp_path / "data", "--alias", f"first={tiny_model_dir}", "--alias", f"second={tmp_path / 'tiny-copy'}",
                    "--max-models", "1", "--dtype", "fp32")
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
        question = [{"role": "user", "content": "Where is my order?"}]

        def ask(k: int) -> str:  # the two models in turn, plain and streamed: each load must close the other
            model = ("first", "second")[k % 2]
            if k % 3 == 0:
                return "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
                    model=model, messages=question, max_tokens=12, temperature=0, stream=True) if chunk.choices)
            return client.chat.completions.create(model=model, messages=question, max_tokens=12,
                                                  temperature=0).choices[0].message.content

        alone = [ask(k) for k in range(2)]
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(ask, range(12)))
        assert together == [alone[k % 2] for k in range(12)]
        serving = httpx.get(f"{server.base_url}/tunelab/serving", headers={"Authorization": f"Bearer {API_KEY}"}).json()
        assert len(serving["models"]) == 1  # the burst over, one model kept
    finally:
        server.stop()
