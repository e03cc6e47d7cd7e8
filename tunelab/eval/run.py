"""Evaluate base vs fine-tuned on held-out conversations, score them, and write results.json + report.html.

    tunelab eval --model runs/ftjob-… --data tunelab/examples/support/test.jsonl --rubric tunelab/examples/support/rubric.yaml

Each held-out conversation's last assistant message is the reference; everything before it is the prompt.
Both systems generate greedily from the same prompt with the same token limit. Scores per reply:
the rubric (if given), similarity to the reference, and whether the reply ended its turn by itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from statistics import mean

from tunelab.conversation.reader import read_conversations, split_prompt_and_reply
from tunelab.core.events import NO_EVENTS, Events
from tunelab.core.files import check_output_directory, write_json_atomically
from tunelab.eval.report import write_report
from tunelab.eval.scorers import RubricScorer, SimilarityScorer
from tunelab.models.generate import generate_replies, load_for_generation
from tunelab.runs.rundir import RunDir

BASE, FINE_TUNED = "base", "fine-tuned"


def evaluate(model_or_run: str, data: str, out_dir: str | None = None, rubric: str | None = None,
             max_new_tokens: int = 200, batch_size: int = 64, limit: int | None = None,
             events: Events = NO_EVENTS) -> Path:
    """Generate, score and report. Returns the directory holding results.json and report.html."""
    started = time.time()
    run = RunDir(model_or_run) if RunDir(model_or_run).is_finished() else None
    out = Path(out_dir) if out_dir else (run.eval_dir if run else Path("runs") / f"eval-{int(started)}")
    check_output_directory(out)  # now, not after hours of generation
    conversations = read_conversations(data)[:limit]
    prompts, references = zip(*(split_prompt_and_reply(c) for c in conversations))
    tools = [c.get("tools") for c in conversations]
    rubric_scorer = RubricScorer.from_yaml(rubric) if rubric else None
    loaded = load_for_generation(model_or_run)
    systems = [BASE, FINE_TUNED] if loaded.has_adapter else [BASE]
    model_names = {BASE: loaded.base_name, FINE_TUNED: loaded.fine_tuned_name}

    generations = {}
    for system in systems:
        with events.progress(f"generate-{system}", total=len(prompts), description=f"generate ({system})") as bar:
            generations[system] = generate_replies(
                loaded, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size,
                use_adapter=system == FINE_TUNED, on_batch=bar.advance, tools=tools,
            )
        events.message(f"generated {len(prompts)} replies with {system} ({model_names[system]})")

    similarity = SimilarityScorer()
    examples = [{"prompt": list(p), "reference": r, "outputs": {}} for p, r in zip(prompts, references)]
    summary = {}
    for system in systems:
        replies = [g.text for g in generations[system]]
        similarities = similarity.score_many(replies, list(references))
        rubric_scores = [rubric_scorer.score(p, r) for p, r in zip(prompts, replies)] if rubric_scorer else []
        for index, generation in enumerate(generations[system]):
            output = {"text": generation.text, "finish_reason": generation.finish_reason,
                      "completion_tokens": generation.completion_tokens, "similarity": similarities[index]}
            if rubric_scorer:
                output["rubric"] = round(rubric_scores[index].score, 2)
                output["rubric_checks"] = rubric_scores[index].checks
            examples[index]["outputs"][system] = output
        summary[system] = {
            "model": model_names[system],
            "similarity": round(mean(similarities), 2),
            "ended_turn_rate": round(mean(g.finish_reason != "length" for g in generations[system]), 4),
            "mean_completion_tokens": round(mean(g.completion_tokens for g in generations[system]), 1),
        }
        if rubric_scorer:
            summary[system]["rubric"] = round(mean(s.score for s in rubric_scores), 2)
            summary[system]["rubric_checks"] = {
                check.id: round(mean(s.checks[check.id] for s in rubric_scores if check.id in s.checks), 4)
                for check in rubric_scorer.checks if any(check.id in s.checks for s in rubric_scores)
            }

    results = {
        "object": "tunelab.eval",
        "created_at": int(started),
        "seconds": round(time.time() - started, 1),
        "model": str(model_or_run),
        "data": str(data),
        "examples_count": len(examples),
        "max_new_tokens": max_new_tokens,
        "rubric": None if not rubric_scorer else {
            "name": rubric_scorer.title, "path": str(rubric),
            "checks": [{"id": c.id, "description": c.description} for c in rubric_scorer.checks],
        },
        "systems": summary,
        "examples": examples,
    }
    write_json_atomically(out / "results.json", results)
    write_report(results, out / "report.html", loss_curve=run.loss_curve_file if run else None)
    return out
