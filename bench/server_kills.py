"""`tunelab serve` killed at each point of a job's life, then restarted: the job ends as it would have.

    .venv/bin/python bench/server_kills.py [--rounds 2] [--seed 0]

For each phase, a fresh data directory and a real server (the tests' tiny model, built here): the server,
its worker and the job's training process are killed together with SIGKILL — as a power cut or the
out-of-memory killer would — at a moment of that phase:

- `upload`: a training file half sent (the client stalls mid-body);
- `validation`: the job just created, its files being validated;
- `training`: a random step of the training;
- `checkpoint`: one of its three checkpoints, chosen at random, being written: the kernel reports the
  checkpoint's temporary directory as created (inotify), the job's processes are frozen (SIGSTOP), and if
  the directory is still there they are killed mid-write; a write too quick to catch is let go and the next
  one tried (a fresh job on the same server, three at most);
- `completion`: training finished (the run says succeeded) but the job's result not yet recorded;
- `worker`: only the worker and the job's process, at a random step, the server left running.

Then the server is started again on the same data directory (for `worker`, the server starts a new worker
itself). A phase survives when the job ends
`succeeded` with an adapter bit-equal to an uninterrupted job's, the database passes
`PRAGMA integrity_check`, every stored file has its row and every row its file (result files included),
and nothing half-written is left. Prints one line per kill, then `survived: K/N`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tunelab.core.files import TEMPORARY_MARK  # noqa: E402 - after the path it is found on
FINISHED = ("succeeded", "failed", "cancelled")
PHASES = ("upload", "validation", "training", "checkpoint", "completion", "worker")
MODEL = "gpt-4o-mini-2024-07-18"
SETTINGS = dict(seed=11, hyperparameters={"n_epochs": 3, "batch_size": 2})


@dataclass
class Outcome:
    phase: str
    killed_at: str
    survived: bool
    detail: str


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def kill_everything(server) -> int:
    """SIGKILL the server and all it started, at once; how many processes that was."""
    victims = [server.process.pid, *descendants(server.process.pid)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.process.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in victims):
        time.sleep(0.05)
    return len(victims)


def kill_worker(server) -> int:
    """SIGKILL the server's job worker and what it started, leaving the server; how many processes."""
    victims = descendants(server.process.pid)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(victims)


def alive(pid: int) -> bool:
    """Is process `pid` still running (neither gone nor a zombie)?"""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until_finished(client, job_id: str):
    from tests.server.test_jobs import wait_until_finished as wait

    return wait(client, job_id, timeout=600)


def client_for(server):
    import httpx2 as httpx
    import openai

    from tests.serving import API_KEY

    return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, http_client=httpx.Client(timeout=60))


def _temporaries(directory: Path) -> list[str]:
    return [str(path.relative_to(directory)) for path in directory.rglob(f"*{TEMPORARY_MARK}*")] \
        if directory.is_dir() else []


def audit(data_dir: Path) -> str:
    """What is wrong with the data directory after the restart (empty: nothing)."""
    from tests.serving import integrity_check

    if integrity_check(data_dir) != "ok":
        return "integrity_check failed"
    with sqlite3.connect(data_dir / "tunelab.db") as database:
        rows = {row[0] for row in database.execute("SELECT id FROM files")}
        results = [json.loads(row[0]) for row in database.execute("SELECT result_files FROM jobs")]
        jobs = {row[0] for row in database.execute("SELECT id FROM jobs")}
    stored = {path.name for path in (data_dir / "files").iterdir()}
    problems = []
    if stored - rows:
        problems.append(f"files without a row: {sorted(stored - rows)}")
    if rows - stored:
        problems.append(f"rows without a file: {sorted(rows - stored)}")
    missing_results = [file_id for ids in results for file_id in ids if file_id not in rows]
    if missing_results:
        problems.append(f"result files not stored: {missing_results}")
    runs = {path.name for path in (data_dir / "runs").iterdir() if path.is_dir()} if (data_dir / "runs").is_dir() else set()
    if runs - jobs:
        problems.append(f"run directories of no job: {sorted(runs - jobs)}")
    if _temporaries(data_dir):
        problems.append(f"half-written: {_temporaries(data_dir)}")
    return "; ".join(problems)


def _adapter(data_dir: Path, job_id: str) -> dict:
    from safetensors.torch import load_file

    return load_file(data_dir / "runs" / job_id / "adapter" / "adapter_model.safetensors")


def _same(first: dict, second: dict) -> bool:
    import torch

    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def _stalled_upload(server, body: bytes, sent: threading.Event) -> None:
    """Send half the multipart body, then nothing until the server dies."""
    import httpx2 as httpx

    from tests.serving import API_KEY

    head = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="train.jsonl"\r\n\r\n')

    def chunks():
        yield head + body[: len(body) // 2]
        sent.set()
        time.sleep(60)
        yield body[len(body) // 2:] + b"\r\n--b--\r\n"

    try:
        httpx.post(f"{server.base_url}/files", content=chunks(), timeout=120,
                   headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "multipart/form-data; boundary=b"})
    except httpx.TransportError:
        pass  # the server died under it, as intended


def _signal(pids: list[int], signal_number: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal_number)
        except ProcessLookupError:
            pass


def freeze_mid_checkpoint(server, client, run: Path, job_id: str, nth: int) -> str | None:
    """Freeze the server's processes while the job writes its `nth` or a later checkpoint; that checkpoint's
    name, or None once the job has finished with every such write too quick to catch.

    Polling the directory missed all three writes of a job on a busy two-core machine (a tiny model's
    checkpoint is written in milliseconds): the kernel's notice of the temporary directory wakes this process
    at once instead, and SIGSTOP holds the writer while the directory is looked at.
    """
    from inotify_simple import INotify, flags

    checkpoints = run / "checkpoints"
    while not run.is_dir():
        time.sleep(0.005)
    created = 0
    with INotify() as notices:
        notices.add_watch(run, flags.CREATE | flags.ONLYDIR)
        watching = False
        while True:
            if not watching and checkpoints.is_dir():
                notices.add_watch(checkpoints, flags.CREATE | flags.ONLYDIR)
                watching = True  # a checkpoint begun before the watch is counted, not caught
                created = len([p for p in checkpoints.iterdir() if p.name.split(TEMPORARY_MARK)[0].lstrip(".")])
            victims = descendants(server.process.pid)  # read now, so a notice is answered in microseconds
            arrived = notices.read(timeout=1000)
            for notice in arrived:
                if TEMPORARY_MARK not in notice.name:
                    continue
                created += 1
                if created < nth:
                    continue
                _signal(victims, signal.SIGSTOP)
                if (checkpoints / notice.name).is_dir():
                    return notice.name.split(TEMPORARY_MARK)[0].lstrip(".")
                _signal(victims, signal.SIGCONT)
            if not arrived and client.fine_tuning.jobs.retrieve(job_id).status in FINISHED:
                return None


def survive(phase: str, scratch: Path, model_dir: Path, training: Path, reference: dict, rng: random.Random,
            steps: int = 60) -> Outcome:
    from tests.serving import Server

    data_dir = scratch / f"data-{phase}-{rng.randrange(10**6)}"
    alias = f"{MODEL}={model_dir}"
    server = Server(data_dir, "--alias", alias, "--dtype", "fp32")
    client = client_for(server)
    job_id, killed_at = None, ""
    try:
        if phase == "upload":
            sent = threading.Event()
            uploader = threading.Thread(target=_stalled_upload, args=(server, training.read_bytes(), sent), daemon=True)
            uploader.start()
            sent.wait(30)
            time.sleep(0.3)
            killed_at = "half the training file sent"
        else:
            file_id = client.files.create(file=training.open("rb"), purpose="fine-tune").id
            job_id = client.fine_tuning.jobs.create(training_file=file_id, model=MODEL, **SETTINGS).id
            run = data_dir / "runs" / job_id
            target_step, deadline = rng.randint(2, steps - 5), time.monotonic() + 300
            target_checkpoint = rng.randint(1, 3)  # the job writes three, one an epoch
            if phase == "checkpoint":
                for attempt in range(3):
                    if attempt:  # every write of the last job was too quick: a fresh job, its first checkpoint
                        job_id = client.fine_tuning.jobs.create(training_file=file_id, model=MODEL, **SETTINGS).id
                        target_checkpoint = 1
                    caught = freeze_mid_checkpoint(server, client, data_dir / "runs" / job_id, job_id, target_checkpoint)
                    if caught:
                        killed_at = f"writing {caught}" + (f", job {attempt + 1}" if attempt else "")
                        break
                else:
                    return Outcome(phase, "never caught", False, "no checkpoint write of three jobs was caught")
            polls = 0
            while phase != "checkpoint" and time.monotonic() < deadline:
                if phase == "validation":
                    events = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=20).data]
                    if any(m.startswith("Validating training file") for m in events):
                        killed_at = "validating files"
                        break
                elif phase in ("training", "worker"):
                    done = len((run / "metrics.csv").read_text().splitlines()) - 1 if (run / "metrics.csv").is_file() else 0
                    if done >= target_step:
                        killed_at = f"at step {done}"
                        break
                elif phase == "completion":
                    try:
                        finished = json.loads((run / "job.json").read_text())["status"] == "succeeded"
                    except (OSError, ValueError, KeyError):
                        finished = False
                    if finished:
                        killed_at = "run finished, result not yet recorded" if \
                            client.fine_tuning.jobs.retrieve(job_id).status == "running" else "result already recorded"
                        break
                polls += 1
                if phase != "completion" and polls % 50 == 0 \
                        and client.fine_tuning.jobs.retrieve(job_id).status in FINISHED:  # once a second: it costs the job
                    return Outcome(phase, "never reached", False, "the job finished before the phase came")
                time.sleep(0.001 if phase == "completion" else 0.02)
            else:
                if phase != "checkpoint":
                    return Outcome(phase, "never reached", False, "the phase did not come within 300 s")
        if phase == "worker":
            killed = kill_worker(server)
            killed_at += f"; the worker and {killed - 1} job process killed, the server left running"
        else:
            killed = kill_everything(server)
            killed_at += f"; {killed} processes killed"
    finally:
        if server.process.poll() is None and phase != "worker":
            server.stop()

    restarted = server if phase == "worker" else Server(data_dir, "--alias", alias, "--dtype", "fp32")
    try:
        client = client_for(restarted)
        if job_id is None:  # the upload died with the server: the client sends it again
            if [f for f in client.files.list().data if f.filename == "train.jsonl"]:
                return Outcome(phase, killed_at, False, "the half-sent upload was stored")
            file_id = client.files.create(file=training.open("rb"), purpose="fine-tune").id
            job_id = client.fine_tuning.jobs.create(training_file=file_id, model=MODEL, **SETTINGS).id
        job = wait_until_finished(client, job_id)
    finally:
        restarted.stop()
    if job.status != "succeeded":
        return Outcome(phase, killed_at, False, f"job {job.status}: {job.error}")
    if not _same(_adapter(data_dir, job_id), reference):
        return Outcome(phase, killed_at, False, "adapter differs from the uninterrupted job's")
    problem = audit(data_dir)
    return Outcome(phase, killed_at, not problem, problem)


def server_kills(rounds: int, seed: int, scratch: Path, report=print, examples: int = 40) -> list[Outcome]:
    """`examples` of the bundled training file, trained 3 epochs at batch 2 (40: 60 steps)."""
    from tests.conftest import EXAMPLES, build_tiny_model, read_jsonl
    from tests.serving import Server

    conversations = read_jsonl(EXAMPLES / "train.jsonl")
    model_dir = build_tiny_model(scratch / "tiny-model", [m["content"] for c in conversations for m in c["messages"]])
    training = scratch / "train.jsonl"
    training.write_text("".join(json.dumps(c) + "\n" for c in conversations[:examples]))
    steps = 3 * -(-examples // 2)
    reference_dir = scratch / "data-reference"
    server = Server(reference_dir, "--alias", f"{MODEL}={model_dir}", "--dtype", "fp32")
    try:
        client = client_for(server)
        file_id = client.files.create(file=training.open("rb"), purpose="fine-tune").id
        started = time.monotonic()
        job = wait_until_finished(client, client.fine_tuning.jobs.create(training_file=file_id, model=MODEL, **SETTINGS).id)
        report(f"uninterrupted job: {job.status} in {time.monotonic() - started:.1f} s ({steps} steps, 3 checkpoints)")
    finally:
        server.stop()
    reference = _adapter(reference_dir, job.id)
    rng, outcomes = random.Random(seed), []
    for _ in range(rounds):
        for phase in PHASES:
            outcome = survive(phase, scratch, model_dir, training, reference, rng, steps)
            outcomes.append(outcome)
            report(f"killed during {phase} ({outcome.killed_at}) → "
                   + ("job succeeded, same adapter, database and files intact" if outcome.survived else outcome.detail))
    report(f"survived: {sum(o.survived for o in outcomes)}/{len(outcomes)}")
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="kills per phase")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="server-kills-") as scratch:
        server_kills(arguments.rounds, arguments.seed, Path(scratch))


if __name__ == "__main__":
    main()
