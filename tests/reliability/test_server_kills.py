"""`tunelab serve`, its worker and the job's process killed together at each point of a job's life —
upload, validation, training, a checkpoint write, completion — then restarted: the job ends as it would
have, the database intact, no file orphaned (bench/server_kills.py runs more rounds)."""

import pytest

from bench.server_kills import PHASES, server_kills

pytestmark = [pytest.mark.slow, pytest.mark.reliability, pytest.mark.heavy(seconds=90)]


def test_every_phase_of_a_job_survives_a_kill(tmp_path):
    lines = []
    # 20 examples (30 steps) here; the bench trains 40.
    outcomes = server_kills(rounds=1, seed=19, scratch=tmp_path, report=lines.append, examples=20)
    assert [o.phase for o in outcomes] == list(PHASES)
    assert all(o.survived for o in outcomes), "\n".join(lines)
    assert lines[-1] == f"survived: {len(PHASES)}/{len(PHASES)}"
