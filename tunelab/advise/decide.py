"""The decision: fine-tune, or something cheaper first — the origin documents' framework as rules over the
user's answers and what their data and evaluation measure.

    advice = decide(Answers(tried_best_model="yes", optimized_prompt="yes", rag_would_solve="no",
                            high_volume_narrow="yes", goal="format_reliability"), measurements)
    advice.recommendation   # fine_tune | prompt_first | use_rag | more_data | improve_data | try_better_model

The framework, in its order: is the data good enough to learn from (enough examples, few conflicting
answers)? Does it teach form, or facts that belong in retrieval? Was the best base model tried, and the
prompt optimised — and does prompting already reach the fine-tune? Is the use narrow and high-volume, and
is the goal one fine-tuning serves (style, terminology, format, efficiency at scale) rather than one it
does not (adding knowledge, a one-off task, a prompt that is too long, following hype)? The first step that
fails decides; every step's finding is reported with the measurement behind it. "unknown" answers are
allowed and lower the confidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.advise.form import FormAndFacts

ANSWER_VALUES = ("yes", "no", "unknown")
GOOD_GOALS = {"style_consistency": "consistent style and tone", "domain_terminology": "domain terminology",
              "format_reliability": "a reliable output format", "efficiency_at_scale": "a smaller, cheaper model at scale"}
BAD_GOALS = {"adding_knowledge": "adding knowledge", "one_off_task": "a one-off task",
             "prompt_too_long": "a prompt that is too long", "hype": "following the hype"}
MINIMUM_EXAMPLES, ENOUGH_EXAMPLES = 50, 100  # below 50: not enough signal; 100–500 is where results show
FEW_EXAMPLES = 10
CONFLICT_SHARE = 0.05  # of examples whose prompt has another, different answer
FACT_SHARE = 0.15  # of reply words that are facts the prompt did not hold


@dataclass
class Answers:
    tried_best_model: str = "unknown"
    optimized_prompt: str = "unknown"
    rag_would_solve: str = "unknown"
    high_volume_narrow: str = "unknown"
    goal: str = "unknown"


@dataclass
class PromptingResult:
    """From an evaluation: the prompted baseline against the fine-tune on its main scorer."""

    scorer: str
    fewshot: float
    fine_tuned: float
    difference_ci: tuple[float, float]  # fine-tuned − few-shot, 95%

    @property
    def prompting_reaches_fine_tune(self) -> bool:
        return self.difference_ci[0] <= 0


@dataclass
class Measurements:
    examples: int | None = None
    errors: int = 0
    conflicting: int = 0
    duplicates: int = 0
    form: FormAndFacts | None = None
    prompting: PromptingResult | None = None


@dataclass
class Reason:
    step: str
    finding: str
    evidence: str


@dataclass
class Advice:
    recommendation: str
    confidence: float
    reasons: list[Reason] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)


def decide(answers: Answers, measured: Measurements) -> Advice:
    reasons: list[Reason] = []
    unknown = [name for name in ("tried_best_model", "optimized_prompt", "rag_would_solve", "high_volume_narrow", "goal")
               if getattr(answers, name) == "unknown"]
    confidence = max(0.3, 0.9 - 0.1 * len(unknown) - (0.1 if measured.examples is None else 0.0))

    def advice(recommendation: str, *next_steps: str) -> Advice:
        return Advice(recommendation, round(confidence, 2), reasons, list(next_steps))

    # 1. Quality training data
    if measured.examples is not None:
        if measured.errors:
            reasons.append(Reason("quality data", f"{measured.errors} lines cannot be trained on",
                                  "tunelab data validate: errors"))
            return advice("improve_data", "tunelab data validate FILE  # fix the errors it lists")
        conflicting_share = measured.conflicting / max(measured.examples, 1)
        if conflicting_share >= CONFLICT_SHARE:
            reasons.append(Reason("quality data", "the same prompt has different answers",
                                  f"{measured.conflicting} of {measured.examples} examples "
                                  f"({conflicting_share:.0%}) conflict with another answer"))
            return advice("improve_data", "tunelab data validate FILE  # lists the conflicting lines",
                          "decide one answer per prompt, then: tunelab advise --data FILE")
        if measured.examples < MINIMUM_EXAMPLES:
            size = "too few to learn anything" if measured.examples < FEW_EXAMPLES else "not enough signal"
            reasons.append(Reason("quality data", f"{measured.examples} examples: {size}",
                                  f"{measured.examples} < {MINIMUM_EXAMPLES}; results show from 100–500"))
            return advice("more_data", f"collect at least {MINIMUM_EXAMPLES} (better {ENOUGH_EXAMPLES}–500) examples",
                          "until then, put a few of them in the prompt as examples")
        reasons.append(Reason("quality data", f"{measured.examples} examples, conflicts under {CONFLICT_SHARE:.0%}",
                              f"{measured.conflicting} conflicting, {measured.duplicates} duplicates"))

    # 2. Form or facts — would retrieval solve it?
    if measured.form is not None and measured.form.new_fact_share >= FACT_SHARE:
        reasons.append(Reason("would RAG solve it", "the replies are mostly facts the prompts do not hold",
                              f"{measured.form.new_fact_share:.0%} of reply words are new names, numbers or dates "
                              f"(threshold {FACT_SHARE:.0%})"))
        return advice("use_rag", "put the facts in a store and retrieve them into the prompt",
                      "fine-tune later only for the style of the answers")
    if answers.rag_would_solve == "yes" or answers.goal == "adding_knowledge":
        reasons.append(Reason("would RAG solve it", "you said the need is knowledge", f"rag_would_solve: "
                              f"{answers.rag_would_solve}, goal: {answers.goal}"))
        return advice("use_rag", "put the knowledge in a store and retrieve it into the prompt")
    if measured.form is not None:
        reasons.append(Reason("would RAG solve it", "the data teaches form",
                              f"new facts {measured.form.new_fact_share:.0%} of reply words; opening "
                              f"'{measured.form.shared_opening}' in {measured.form.shared_opening_share:.0%}, "
                              f"JSON {measured.form.json_share:.0%}"))

    # 3. The best base model
    if answers.tried_best_model == "no":
        reasons.append(Reason("best base model tried", "not yet", "tried_best_model: no"))
        return advice("try_better_model", "try the strongest model you can use, with a good prompt, first")

    # 4. Prompting
    if answers.optimized_prompt == "no":
        reasons.append(Reason("prompt optimised", "not yet", "optimized_prompt: no"))
        return advice("prompt_first", "write a clear system prompt with 3–5 examples, then measure it: "
                      "tunelab eval --model BASE --data test.jsonl --fewshot 3")
    if measured.prompting is not None and measured.prompting.prompting_reaches_fine_tune:
        p = measured.prompting
        reasons.append(Reason("prompt optimised", "few-shot prompting already reaches the fine-tune",
                              f"{p.scorer}: few-shot {p.fewshot:.3g}, fine-tuned {p.fine_tuned:.3g}, difference "
                              f"95% CI {p.difference_ci[0]:+.3g} to {p.difference_ci[1]:+.3g} (includes 0)"))
        return advice("prompt_first", "ship the prompted base model; fine-tune when prompting stops being enough")
    if answers.goal in BAD_GOALS:
        reasons.append(Reason("good reason", f"{BAD_GOALS[answers.goal]} is not what fine-tuning fixes",
                              f"goal: {answers.goal}"))
        return advice("prompt_first", "solve it in the prompt (or with retrieval for knowledge)")

    # 5. Narrow, high-volume use and a good goal
    if answers.high_volume_narrow == "no":
        confidence -= 0.2
        reasons.append(Reason("high-volume narrow use", "not high-volume: the cost of training may not pay back",
                              "high_volume_narrow: no"))
    if answers.goal in GOOD_GOALS:
        reasons.append(Reason("good reason", f"fine-tuning serves {GOOD_GOALS[answers.goal]}", f"goal: {answers.goal}"))
    return advice("fine_tune", "tunelab data split FILE --out data/", "tunelab train --data data/train.jsonl",
                  "tunelab eval --model runs/NAME --data data/test.jsonl")


def measure_data(path: str) -> Measurements:
    """What the data toolkit and the form-or-facts measurement find in a chat JSONL file."""
    from tunelab.advise.form import form_and_facts
    from tunelab.conversation.reader import read_conversations
    from tunelab.data.validate import validate_file

    report = validate_file(path)
    codes = [finding.code for finding in report.findings]
    form = form_and_facts(read_conversations(path)) if not report.errors else None
    return Measurements(examples=report.examples, errors=len(report.errors),
                        conflicting=codes.count("conflicting_answers"),
                        duplicates=codes.count("duplicate_example") + codes.count("near_duplicate_example"), form=form)
