"""Training killed with SIGKILL at each kind of moment — any time, mid-checkpoint, mid-final-save, between
the save and the job's last word — then resumed: the same adapter, bit for bit, and the same metrics as an
uninterrupted run, with nothing half-written left (bench/kill_resume.py runs more of them)."""

import pytest

from bench.kill_resume import KINDS, kill_and_resume

pytestmark = [pytest.mark.slow, pytest.mark.reliability, pytest.mark.heavy(seconds=70)]


def test_each_kind_of_kill_resumes_to_the_uninterrupted_result(tmp_path):
    lines = []
    outcomes = kill_and_resume(runs=len(KINDS), seed=19, model=None, epochs=6, scratch=tmp_path, report=lines.append)
    assert [o.kind for o in outcomes] == list(KINDS)
    assert all(o.identical for o in outcomes), "\n".join(lines)
    assert lines[-1] == f"identical: {len(KINDS)}/{len(KINDS)}"
