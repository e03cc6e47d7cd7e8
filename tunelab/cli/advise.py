"""`tunelab advise`'s terminal side: ask the framework's questions in order, and print the advice."""

from __future__ import annotations

from tunelab.advise.decide import BAD_GOALS, GOOD_GOALS, QUESTIONS, Advice, Answers


def ask(console) -> Answers:
    """The framework's questions on the terminal; Enter alone (or anything but yes/no) is "unknown"."""
    answers = Answers()
    for key, question in QUESTIONS.items():
        console.print(question, markup=False, highlight=False)
        reply = input("  [yes/no/unknown] ").strip().lower()
        setattr(answers, key, {"y": "yes", "yes": "yes", "n": "no", "no": "no"}.get(reply, "unknown"))
    goals = list(GOOD_GOALS) + list(BAD_GOALS)
    console.print("What do you want fine-tuning to give you?")
    for number, goal in enumerate(goals, 1):
        console.print(f"  {number}. {({**GOOD_GOALS, **BAD_GOALS})[goal]}", markup=False)
    reply = input(f"  [1-{len(goals)}, Enter: unknown] ").strip()
    answers.goal = goals[int(reply) - 1] if reply.isdigit() and 1 <= int(reply) <= len(goals) else "unknown"
    return answers


def show(console, advice: Advice) -> None:
    console.print(f"\nRecommendation: [bold]{advice.recommendation}[/] (confidence {advice.confidence:.0%})")
    for reason in advice.reasons:
        console.print(f"  {reason.step}: {reason.finding} — {reason.evidence}", markup=False, highlight=False)
    console.print("Next:")
    for step in advice.next_steps:
        console.print(f"  {step}", markup=False, highlight=False)
