"""Heavy use of a running `tunelab serve`, with figures (tests/reliability/test_server_load.py and
bench/server_hostile_load.py):

- `job_burst`: N fine-tuning jobs submitted at once, then all cancelled at once; every job must end
  cancelled (or succeeded, if it finished first), and the job list must hold them all;
- `chat_streams`: N streamed chat completions at once, every `disconnect_every`-th client hanging up after
  its first piece; the others must end with a finish reason and `[DONE]`, and the server must answer a
  plain request promptly afterwards (nothing left generating for clients that left).

Every response's status is counted; a 5xx is a failure.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import httpx2 as httpx


@dataclass
class LoadFigures:
    name: str
    requests: int = 0
    server_errors: int = 0
    other_errors: list[str] = field(default_factory=list)
    latency_s: dict[str, float] = field(default_factory=dict)  # p50, p95, max
    notes: dict = field(default_factory=dict)

    def count(self, response: httpx.Response) -> None:
        self.requests += 1
        if response.status_code >= 500:
            self.server_errors += 1
            self.other_errors.append(f"{response.request.method} {response.request.url.path} → "
                                     f"{response.status_code}: {response.text[:200]}")

    def line(self) -> str:
        return (f"{self.name}: {self.requests} requests, {self.server_errors} server errors, "
                f"{len(self.other_errors) - self.server_errors} other errors, latency s {self.latency_s}, {self.notes}")


def _percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {}
    cut = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {"p50": round(cut[49], 3), "p95": round(cut[94], 3), "max": round(values[-1], 3)}


async def _job_burst(base_url: str, api_key: str, training_file: str, model: str, jobs: int) -> LoadFigures:
    figures = LoadFigures(f"{jobs} jobs submitted and cancelled at once")
    headers = {"Authorization": f"Bearer {api_key}"}
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as client:
        async def call(method: str, path: str, **options) -> httpx.Response:
            started = time.perf_counter()
            response = await client.request(method, path, **options)
            latencies.append(time.perf_counter() - started)
            figures.count(response)
            return response

        body = {"training_file": training_file, "model": model, "hyperparameters": {"n_epochs": 1, "batch_size": 4}}
        created = await asyncio.gather(*(call("POST", "/fine_tuning/jobs", json=body) for _ in range(jobs)))
        ids = [response.json()["id"] for response in created if response.status_code == 200]
        await asyncio.gather(*(call("POST", f"/fine_tuning/jobs/{job_id}/cancel") for job_id in ids))
        deadline, statuses = time.monotonic() + 300, {}
        while time.monotonic() < deadline:
            statuses = {job_id: (await call("GET", f"/fine_tuning/jobs/{job_id}")).json()["status"] for job_id in ids}
            if all(status in ("cancelled", "succeeded", "failed") for status in statuses.values()):
                break
            await asyncio.sleep(0.5)
        listed = (await call("GET", "/fine_tuning/jobs", params={"limit": 100})).json()["data"]
    figures.latency_s = _percentiles(latencies)
    ended = {status: list(statuses.values()).count(status) for status in set(statuses.values())}
    figures.notes = {"created": len(ids), "ended": ended, "listed": len({job["id"] for job in listed} & set(ids))}
    if len(ids) != jobs or set(ended) - {"cancelled", "succeeded"} or figures.notes["listed"] != jobs:
        figures.other_errors.append(f"jobs: {figures.notes}")
    return figures


async def _chat_streams(base_url: str, api_key: str, model: str, streams: int, disconnect_every: int,
                        max_tokens: int) -> LoadFigures:
    figures = LoadFigures(f"{streams} chat streams at once, every {disconnect_every}th hanging up")
    headers = {"Authorization": f"Bearer {api_key}"}
    first_piece: list[float] = []
    whole: list[float] = []
    outcomes = {"completed": 0, "hung_up": 0}

    async def stream(number: int, client: httpx.AsyncClient) -> None:
        body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": f"Where is my order BL-{100000 + number}?"}]}
        started, first = time.perf_counter(), None
        async with client.stream("POST", "/chat/completions", json=body) as response:
            figures.count(response)
            if response.status_code != 200:
                figures.other_errors.append(f"stream {number}: {response.status_code}")
                return
            finish, done = None, False
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                choices = json.loads(line[len("data: "):]).get("choices") or [{}]
                if first is None:  # the first piece (with a tiny model it may carry only the role)
                    first = time.perf_counter() - started
                    first_piece.append(first)
                    if number % disconnect_every == 0:
                        outcomes["hung_up"] += 1
                        return  # leaving the block closes the connection mid-stream
                finish = choices[0].get("finish_reason") or finish
            if not (done and finish):
                figures.other_errors.append(f"stream {number}: ended without a finish reason and [DONE]")
                return
            whole.append(time.perf_counter() - started)
            outcomes["completed"] += 1

    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=600) as client:
        await asyncio.gather(*(stream(number, client) for number in range(streams)))
        after = time.perf_counter()
        response = await client.post("/chat/completions", json={
            "model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}]})
        figures.count(response)
        figures.notes["plain_request_after_s"] = round(time.perf_counter() - after, 2)
    figures.latency_s = {"first_chunk": _percentiles(first_piece), "whole_stream": _percentiles(whole)}
    figures.notes.update(outcomes)
    return figures


def job_burst(base_url: str, api_key: str, training_file: str, model: str, jobs: int = 20) -> LoadFigures:
    return asyncio.run(_job_burst(base_url, api_key, training_file, model, jobs))


def chat_streams(base_url: str, api_key: str, model: str, streams: int = 50, disconnect_every: int = 5,
                 max_tokens: int = 48) -> LoadFigures:
    return asyncio.run(_chat_streams(base_url, api_key, model, streams, disconnect_every, max_tokens))
