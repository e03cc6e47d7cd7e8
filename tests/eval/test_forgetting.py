"""The forgetting check's pieces: the bundled material, the probe file format, the instruction checks and the
verdict wording (the whole check runs in test_run.py and test_identity.py on a trained tiny model)."""

import json

import pytest

from tunelab.eval.forgetting import CHECKS, GENERAL_DIR, forgetting_verdict, read_jsonl


def test_the_bundled_material_is_well_formed():
    passages = read_jsonl(GENERAL_DIR / "passages.jsonl", "passage")
    probes = read_jsonl(GENERAL_DIR / "probes.jsonl", "probe")
    assert len(passages) == 24 and all(len(p["text"].split()) >= 50 for p in passages)
    assert sum(p["kind"] == "choice" for p in probes) == 80 and sum(p["kind"] == "instruction" for p in probes) == 30
    assert len({p["id"] for p in probes}) == len(probes)


@pytest.mark.parametrize("line, message", [
    ({"id": "a", "kind": "choice", "context": "x", "choices": [" a"], "answer": 0}, "choices: a choice probe needs"),
    ({"id": "a", "kind": "choice", "context": "x", "choices": [" a", " b"], "answer": 2}, "answer: must be the index"),
    ({"id": "a", "kind": "instruction", "prompt": "x", "checks": {"shout": True}}, "checks.shout: unknown check"),
    ({"id": "a", "kind": "instruction", "prompt": "x", "checks": {"regex": "("}}, "checks.regex: not a valid"),
    ({"id": "a", "kind": "essay"}, 'kind: must be "choice" or "instruction"'),
])
def test_a_bad_probe_is_named_by_file_and_line(tmp_path, line, message):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"id": "ok", "kind": "choice", "context": "x", "choices": [" a", " b"], "answer": 1})
                    + "\n" + json.dumps(line) + "\n")
    with pytest.raises(ValueError, match=rf"mine.jsonl: line 2: {message}"):
        read_jsonl(path, "probe")


@pytest.mark.parametrize("name, value, passing, failing", [
    ("lowercase", True, "all quiet by the sea.", "All quiet by the sea."),
    ("max_words", 3, "blue sky today", "the sky is blue"),
    ("bullets", 3, "- apple\n- pear\n- plum", "- apple\n- pear"),
    ("numbered", 2, "1. boil water\n2. add tea", "boil water, add tea"),
    ("json", True, '{"name": "Ana", "age": 30}', "name: Ana"),
    ("no_commas", True, "tall trees and moss", "tall trees, moss"),
    ("ends_with", "That is all.", "It tells time. That is all.", "It tells time."),
    ("count", ["bright", 2], "A bright lamp, very bright.", "A bright lamp."),
    ("paragraphs", 2, "One.\n\nTwo.", "One. Two."),
    ("regex", "^\\s*8\\.?\\s*$", "8", "eight"),
])
def test_instruction_checks(name, value, passing, failing):
    assert CHECKS[name](passing, value) and not CHECKS[name](failing, value)


def test_the_verdict_says_what_got_worse():
    result = {"general_text": {"relative_change": 0.05, "ci95": [0.03, 0.07]},
              "probes": {"lost": [{"id": "mc-01"}], "gained": [], "total": 80, "detectable": False, "ci95": [-0.04, 0]}}
    assert forgetting_verdict(result).startswith("Something got worse: it predicts general text measurably worse")
    result["general_text"] = {"relative_change": 0.001, "ci95": [-0.01, 0.012]}
    assert forgetting_verdict(result).startswith("No detectable forgetting overall") and "lost probes" in forgetting_verdict(result)
