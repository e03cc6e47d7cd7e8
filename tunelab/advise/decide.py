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

from collections import Counter
from dataclasses import asdict, dataclass, field

from tunelab.advise.form import FormAndFacts
from tunelab.advise.volume import PAYBACK_DAYS, WORTH_SAVING_USD_PER_MONTH, BreakEven, days_text

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
    warnings: dict[str, int] = field(default_factory=dict)  # the data toolkit's warnings, by code
    form: FormAndFacts | None = None
    prompting: PromptingResult | None = None
    training: dict | None = None  # the data toolkit's estimates: {"local": …, "openai": …}
    volume: BreakEven | None = None
    data: str | None = None  # the file measured, and the model it was counted for: next steps name them
    model: str | None = None

    def as_dict(self) -> dict:
        return {"data": self.data, "model": self.model, "examples": self.examples, "errors": self.errors, "conflicting": self.conflicting,
                "duplicates": self.duplicates, "warnings": self.warnings, "form": self.form.as_dict() if self.form else None,
                "prompting": asdict(self.prompting) if self.prompting else None, "training": self.training,
                "volume": self.volume.as_dict() if self.volume else None}


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
    """The framework's steps in order; the first that fails decides. `fine_tune` only when every step is
    passed on evidence (measured, or answered yes/no); anything still unknown makes the advice to find it out,
    prompting first — the framework's default."""
    reasons: list[Reason] = []
    unknown = [name for name in ("tried_best_model", "optimized_prompt", "rag_would_solve", "high_volume_narrow", "goal")
               if getattr(answers, name) == "unknown" and not (name == "high_volume_narrow" and measured.volume)]
    confidence = max(0.3, 0.9 - 0.1 * len(unknown) - (0.1 if measured.examples is None else 0.0))
    steps = NextSteps(measured)

    def advice(recommendation: str, *next_steps: str) -> Advice:
        return Advice(recommendation, round(max(confidence, 0.3), 2), reasons, list(next_steps))

    # 1. Quality training data
    if measured.examples is not None:
        if measured.errors:
            reasons.append(Reason("quality data", f"{measured.errors} lines cannot be trained on",
                                  "tunelab data validate: errors"))
            return advice("improve_data", f"{steps.validate}  # fix the errors it lists")
        conflicting_share = measured.conflicting / max(measured.examples, 1)
        if conflicting_share >= CONFLICT_SHARE:
            reasons.append(Reason("quality data", "the same prompt has different answers",
                                  f"{measured.conflicting} of {measured.examples} examples "
                                  f"({conflicting_share:.0%}) conflict with another answer"))
            return advice("improve_data", f"{steps.validate}  # lists the conflicting lines",
                          f"decide one answer per prompt, then: {steps.advise}")
        if measured.examples < MINIMUM_EXAMPLES:
            size = "too few to learn anything" if measured.examples < FEW_EXAMPLES else "not enough signal"
            reasons.append(Reason("quality data", f"{measured.examples} examples: {size}",
                                  f"{measured.examples} < {MINIMUM_EXAMPLES}; results show from 100–500"))
            return advice("more_data", f"collect at least {MINIMUM_EXAMPLES} (better {ENOUGH_EXAMPLES}–500) examples",
                          "until then, put a few of them in the prompt as examples")
        size = (f"under {ENOUGH_EXAMPLES}: enough to start, results show from {ENOUGH_EXAMPLES}–500"
                if measured.examples < ENOUGH_EXAMPLES else f"{ENOUGH_EXAMPLES}–500 is where results show"
                if measured.examples <= 500 else "more than the 100–500 where results show")
        other = ", ".join(f"{count} {code}" for code, count in sorted(measured.warnings.items())
                          if code not in ("conflicting_answers", "duplicate_example", "near_duplicate_example"))
        reasons.append(Reason("quality data", f"{measured.examples} examples ({size}), conflicts under {CONFLICT_SHARE:.0%}",
                              f"{measured.conflicting} conflicting, {measured.duplicates} duplicates"
                              + (f"; other warnings: {other}" if other else "")))

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
        return advice("prompt_first", "write a clear system prompt with 3–5 examples, then measure it:",
                      *steps.measure_prompting)
    beats_prompting = False
    if (p := measured.prompting) is not None:
        evidence = (f"{p.scorer}: few-shot {p.fewshot:.3g}, fine-tuned {p.fine_tuned:.3g}, difference "
                    f"95% CI {p.difference_ci[0]:+.3g} to {p.difference_ci[1]:+.3g}")
        if p.prompting_reaches_fine_tune:
            reasons.append(Reason("prompt optimised", "few-shot prompting already reaches the fine-tune",
                                  evidence + " (includes 0)"))
            return advice("prompt_first", "ship the prompted base model; fine-tune when prompting stops being enough")
        reasons.append(Reason("prompt optimised", "the fine-tune beats few-shot prompting", evidence))
        beats_prompting = True
    if answers.goal in BAD_GOALS:
        reasons.append(Reason("good reason", f"{BAD_GOALS[answers.goal]} is not what fine-tuning fixes",
                              f"goal: {answers.goal}"))
        return advice("prompt_first", "solve it in the prompt (or with retrieval for knowledge)")

    # 5. Narrow, high-volume use; a measured break-even stands in for the answer, and one below it is a reason
    # against (decisive when saving money is the point, or no other goal was given).
    below_break_even = False
    if measured.volume is not None:
        volume, best = measured.volume, measured.volume.best_hosted
        costs = (f"{volume.prompted.name} ${volume.prompted.usd_per_day:,.2f}/day" + (
            f" against {best.name} ${best.usd_per_day:,.2f}/day + ${best.training_usd:,.2f} training" if best else "")
            + f" (prices as of {volume.prices_as_of})")
        if volume.worth_it:
            reasons.append(Reason("high-volume narrow use", f"at {volume.calls_per_day:,} calls a day a fine-tune saves "
                                  f"${best.usd_saved_per_month:,.0f} a month and pays back its training in "
                                  f"{days_text(best.days_to_pay_back)}", costs))
        else:
            below_break_even = True
            confidence -= 0.2
            saved = f"saves ${best.usd_saved_per_month:,.0f} a month" if best else "saves nothing"
            reasons.append(Reason("high-volume narrow use", f"against: at {volume.calls_per_day:,} calls a day a "
                                  f"fine-tune {saved} (worth it from ${WORTH_SAVING_USD_PER_MONTH:,.0f}, repaid "
                                  f"within {PAYBACK_DAYS} days)", costs))
            if answers.goal in ("efficiency_at_scale", "unknown"):
                return advice("prompt_first", "keep prompting the large model: at this volume a smaller model saves "
                              "less than it costs to keep", steps.advise_volume)
    elif answers.high_volume_narrow == "no":
        confidence -= 0.2
        reasons.append(Reason("high-volume narrow use", "not high-volume: the cost of training may not pay back",
                              "high_volume_narrow: no"))
    if answers.goal in GOOD_GOALS:
        reasons.append(Reason("good reason", f"fine-tuning serves {GOOD_GOALS[answers.goal]}", f"goal: {answers.goal}"))

    # Every step passed on evidence? What is still unknown is the advice: find it out, prompting first.
    not_known = []  # (step, what is not known, the evidence missing, how to find it out)
    if measured.examples is None:
        not_known.append(("quality data", "your data was not measured", "no --data", steps.advise_with_data))
    if measured.form is None and answers.rag_would_solve != "no":
        not_known.append(("would RAG solve it", "whether the need is knowledge", f"rag_would_solve: "
                          f"{answers.rag_would_solve}, and no data measured", "answer rag_would_solve"))
    if answers.tried_best_model != "yes":
        not_known.append(("best base model tried", "whether a stronger model already does it",
                          f"tried_best_model: {answers.tried_best_model}", "answer tried_best_model"))
    if answers.optimized_prompt != "yes" and not beats_prompting:
        not_known.append(("prompt optimised", "whether prompting already does it",
                          f"optimized_prompt: {answers.optimized_prompt}, and no evaluation with a few-shot baseline",
                          "answer optimized_prompt, or measure prompting (below)"))
    if answers.goal not in GOOD_GOALS:
        not_known.append(("good reason", "a goal fine-tuning serves", f"goal: {answers.goal}", "answer goal"))
    elif answers.goal == "efficiency_at_scale" and measured.volume is None and answers.high_volume_narrow != "yes":
        not_known.append(("high-volume narrow use", "the volume that would repay it",
                          f"high_volume_narrow: {answers.high_volume_narrow}, no --volume", steps.advise_volume))
    if not_known:
        for step, finding, evidence, _ in not_known:
            reasons.append(Reason(step, f"not known yet: {finding}", evidence))
        return advice("prompt_first", "prompt the strongest model you can use first, and find out what is not known: "
                      + "; ".join(dict.fromkeys(how for *_, how in not_known)),
                      steps.answer, *steps.measure_prompting)
    if below_break_even:
        reasons.append(Reason("good reason", f"{GOOD_GOALS[answers.goal]} can justify the cost the volume does not",
                              f"goal: {answers.goal}"))
    return advice("fine_tune", *steps.fine_tune)


class NextSteps:
    """The commands advice points to, written for the user's own file and model so they run as printed."""

    def __init__(self, measured: Measurements):
        self.data = measured.data or "YOUR_DATA.jsonl"
        model = measured.model or "default"
        self.model = "" if model == "default" else f" --model {model}"
        self.validate = f"tunelab data validate {self.data}{self.model}"
        self.advise = f"tunelab advise --data {self.data}{self.model}"
        self.advise_with_data = f"measure it: tunelab advise --data YOUR_DATA.jsonl{self.model}"
        self.advise_volume = f"tunelab advise --data {self.data} --volume CALLS_PER_DAY{self.model}  # when it grows"
        self.answer = (f"{self.advise} --answers answers.yaml  # tried_best_model, optimized_prompt, rag_would_solve, "
                       "high_volume_narrow: yes or no; goal: one of " + ", ".join(GOOD_GOALS))
        split = f"tunelab data split {self.data} --out data/"
        self.measure_prompting = [split, f"tunelab eval {model} --data data/test.jsonl "
                                         f"--fewshot-from data/train.jsonl  # the base model, alone and 3-shot"]
        self.fine_tune = [split, f"tunelab train --data data/train.jsonl --validation-split 0.1{self.model} "
                                 "--out runs/first-fine-tune",
                          "tunelab eval runs/first-fine-tune --data data/test.jsonl  # against the base and 3-shot"]


def measure_data(path: str, model: str = "default", calls_per_day: int | None = None) -> Measurements:
    """What the data toolkit and the form-or-facts measurement find in a chat JSONL file: quality, form or
    facts, what training would take (here on `model`, and at OpenAI), and with `calls_per_day` the break-even."""
    from tunelab.advise.form import form_and_facts
    from tunelab.advise.volume import SMALL_HOSTED_MODELS, break_even
    from tunelab.conversation.reader import read_conversations
    from tunelab.data.cost import openai_cost
    from tunelab.data.tokens import token_counter
    from tunelab.data.validate import validate_file

    counter = token_counter(model)
    report = validate_file(path, counter=counter)
    codes = [finding.code for finding in report.findings]
    measured = Measurements(data=path, model=model, examples=report.examples, errors=len(report.errors),
                            conflicting=codes.count("conflicting_answers"),
                            duplicates=codes.count("duplicate_example") + codes.count("near_duplicate_example"),
                            warnings=dict(Counter(f.code for f in report.findings if f.severity == "warning")))
    if report.errors:
        return measured
    conversations = read_conversations(path)
    measured.form = form_and_facts(conversations)
    messages = [conversation["messages"] for conversation in conversations]
    hosted = SMALL_HOSTED_MODELS[0]
    openai_tokens = [count.total for count in token_counter(target=f"openai:{hosted}").count_batch(messages)]
    measured.training = {"local": report.cost, "openai": openai_cost(hosted, openai_tokens).to_dict()}
    if calls_per_day:
        measured.volume = break_even(calls_per_day, messages, counter.model, counter.parameters,
                                     report.cost["seconds"] if report.cost else None)
    return measured


def prompting_from_results(results: dict) -> PromptingResult | None:
    """The few-shot baseline against the fine-tune on the evaluation's first scorer where higher is better
    (`results.json` of `tunelab eval`); None when it has no few-shot baseline."""
    for scorer in results.get("scorers", []):
        if not scorer.get("higher_is_better"):
            continue
        for comparison in results.get("comparisons", []):
            if comparison["scorer"] != scorer["name"] or {comparison["a"], comparison["b"]} != {"base_fewshot", "fine_tuned"}:
                continue
            sign = 1 if comparison["b"] == "fine_tuned" else -1  # a comparison's difference is b − a
            low, high = sorted(sign * value for value in comparison["ci95"])
            means = {name: results["systems"][name]["scores"][scorer["name"]]["mean"] for name in ("base_fewshot", "fine_tuned")}
            return PromptingResult(scorer["label"], means["base_fewshot"], means["fine_tuned"], (low, high))
    return None


def read_answers(path: str) -> Answers:
    """The framework's answers from a YAML file; an unknown key or value is an error naming it."""
    from tunelab.core.files import read_yaml_file

    given = read_yaml_file(path) or {}
    if not isinstance(given, dict):
        raise ValueError(f"{path}: expected a mapping of answers (tried_best_model: yes, …)")
    answers = Answers()
    for key, value in given.items():
        if isinstance(value, bool) or value is None:  # YAML reads yes/no as booleans, and an empty answer as null
            value = {True: "yes", False: "no", None: "unknown"}[value]
        if key == "goal":
            if value not in (*GOOD_GOALS, *BAD_GOALS, "unknown"):
                raise ValueError(f"{path}: goal: {value!r} is not one of {', '.join((*GOOD_GOALS, *BAD_GOALS, 'unknown'))}")
        elif key in Answers.__dataclass_fields__:
            if value not in ANSWER_VALUES:
                raise ValueError(f"{path}: {key}: {value!r} is not one of yes, no, unknown")
        else:
            raise ValueError(f"{path}: {key!r} is not a question (tried_best_model, optimized_prompt, rag_would_solve, "
                             "high_volume_narrow, goal)")
        setattr(answers, key, value)
    return answers


QUESTIONS = {
    "tried_best_model": "Have you tried the strongest base model you can use, with a good prompt? (A better model "
                        "often makes fine-tuning unnecessary.)",
    "optimized_prompt": "Have you worked on the prompt: clear instructions and a few examples? (Try prompts first, "
                        "always.)",
    "rag_would_solve": "Is the problem missing knowledge that retrieval could put in the prompt? (Fine-tuning teaches "
                       "style and format, not facts.)",
    "high_volume_narrow": "Is it a narrow task you will call many times a day? (That is where a small fine-tuned model "
                          "pays back.)",
}
