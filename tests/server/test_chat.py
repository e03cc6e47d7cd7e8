"""`/v1/chat/completions` under concurrency: requests batched together answer as they would alone, and
streams deliver text as it is generated, through the official openai client."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.server.conftest import API_KEY, httpx

pytestmark = pytest.mark.slow  # a server process

MODEL = "gpt-4o-mini-2024-07-18"  # aliased to the embedded default model: the tiny one only repeats itself


QUESTIONS = ["Where is my order?", "Can I return a lamp?", "Do you ship to Canada?", "My towel arrived torn.",
             "How do I change my address?", "Why was I charged twice?"]


def question(k: int) -> list[dict]:
    return [{"role": "user", "content": QUESTIONS[k % len(QUESTIONS)]}]


def ask(client, k: int, max_tokens: int = 12) -> tuple[str, float]:
    started = time.perf_counter()
    reply = client.chat.completions.create(model=MODEL, messages=question(k), temperature=0, max_tokens=max_tokens)
    return reply.choices[0].message.content, time.perf_counter() - started


def test_concurrent_requests_share_generation_steps_and_answer_as_alone(client, recorder):
    ask(client, 0, max_tokens=2)  # the model loaded
    started = time.perf_counter()
    alone = [ask(client, k)[0] for k in range(5)]
    sequential = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(5) as pool:
        together = [text for text, _ in pool.map(lambda k: ask(client, k), range(5))]
    concurrent = time.perf_counter() - started
    assert together == alone  # greedy: batching does not change a reply
    assert len(set(alone)) > 1  # the prompts differ, and so do the replies: rows were not mixed up
    # Five requests in shared steps take well under the time of five in turn (measured in this run).
    assert concurrent < 0.7 * sequential, (concurrent, sequential)
    recorder.check_all()


def test_a_stream_sends_text_as_it_is_generated(client, server, recorder):
    import openai

    whole = client.chat.completions.create(model=MODEL, messages=question(1), temperature=0, max_tokens=32)
    arrivals, pieces, finish = [], [], None
    # A client without the recorder, which reads each stream whole before the SDK sees it.
    unrecorded = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    started = time.perf_counter()
    for chunk in unrecorded.chat.completions.create(model=MODEL, messages=question(1), temperature=0, max_tokens=32,
                                                     stream=True):
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
                arrivals.append(time.perf_counter() - started)
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content and finish == whole.choices[0].finish_reason
    assert len(pieces) >= 8  # piece by piece, not the whole reply in one chunk
    assert arrivals[0] < 0.8 * arrivals[-1]  # the first piece came well before the last was made
    recorder.check_all()


def test_a_stop_string_ends_the_reply_before_it(client, recorder):
    reply = client.chat.completions.create(model=MODEL, messages=question(2), temperature=0, max_tokens=40)
    text = reply.choices[0].message.content
    stop = text[len(text) // 2:len(text) // 2 + 3]
    cut = client.chat.completions.create(model=MODEL, messages=question(2), temperature=0, max_tokens=40,
                                              stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)].lstrip()
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=question(2), temperature=0, max_tokens=40, stop=stop, stream=True) if c.choices)
    assert streamed == cut.choices[0].message.content
    recorder.check_all()


def test_n_choices_and_sampling_settings(client, recorder):
    reply = client.chat.completions.create(model=MODEL, messages=question(3), n=3, temperature=1.2, top_p=0.9,
                                                max_tokens=12)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    contents = [c.message.content for c in reply.choices]
    assert len(set(contents)) > 1  # three samples, not one reply three times
    assert 3 <= reply.usage.completion_tokens <= 36  # every choice counted, each at most max_tokens
    recorder.check_all()


def test_a_client_that_goes_away_mid_stream_leaves_the_server_answering(server, client):
    with httpx.Client(timeout=60) as raw:
        with raw.stream("POST", f"{server.base_url}/chat/completions",
                        headers={"Authorization": f"Bearer {API_KEY}"},
                        json={"model": MODEL, "messages": question(4), "max_tokens": 400, "stream": True,
                              "temperature": 0}) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")  # then the connection is dropped
    text, seconds = ask(client, 5, max_tokens=8)
    assert text is not None and seconds < 30
