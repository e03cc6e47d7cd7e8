"""The break-even of `tunelab advise --volume`: what a day of calls costs on a large hosted model prompted
with examples, against a small fine-tuned model hosted at OpenAI or run on this machine, and how many days
of savings pay for the training.

    costs = break_even(calls_per_day=5000, conversations=read_conversations("train.jsonl"))
    costs.prompted.usd_per_day, [(o.name, o.usd_per_day, o.days_to_pay_back) for o in costs.fine_tuned]

Each example counts as one call: its reply tokens are the output, everything before them the input
(counted with OpenAI's tokenizer and per-message overhead). The large model gets `FEWSHOT_EXAMPLES` whole
examples in its prompt — the prompting a fine-tune replaces, as in `tunelab eval`'s few-shot baseline; the
fine-tuned models get the prompt alone. Prices come from the dated table in `tunelab/data/openai_prices.yaml`
and the date travels with every figure. A local model has no per-token price: its cost is the machine, so
it is given in CPU-hours a day at the generation speed measured below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tunelab.data.cost import DEFAULT_MODEL_PARAMETERS, openai_cost, openai_model, price_table

FEWSHOT_EXAMPLES = 3
LARGE_MODEL = "gpt-4.1"  # the large hosted model a small fine-tune competes with
SMALL_HOSTED_MODELS = ("gpt-4.1-mini", "gpt-4.1-nano")
PAYBACK_DAYS = 90  # savings that repay the training within a quarter make the volume worth fine-tuning for
# Training on a small file costs cents, so compute alone pays back at almost any volume; what does not is the
# people's time a fine-tune takes to keep (data, evaluation, retraining). Below this saving a month, prompting
# the large model is the cheaper thing to run.
WORTH_SAVING_USD_PER_MONTH = 100.0
OPENAI_CLOSES = "2027-01-06"  # OpenAI takes no new fine-tuning jobs from this date

# llama.cpp (llama-cpp-python 0.3.36) on the default model's Q4_K_M GGUF, one prompt at a time on two threads
# of a 2-core AMD EPYC: prefill 670–690 tokens/s, decode 92 tokens/s with AVX-512 (2026-12-03); DESIGN §2
# records 48 tokens/s decoding on a machine of this kind. The slower figures are used: an estimate that
# promises less is the one to plan with. Other models scale by parameter count.
LOCAL_PREFILL_TOKENS_PER_SECOND = 600.0
LOCAL_DECODE_TOKENS_PER_SECOND = 48.0
LOCAL_SPEED_SOURCE = "llama.cpp on Gemma 3 270M (Q4_K_M), 2 CPU threads: prefill 600, decode 48 tokens/s"


def days_text(days: float) -> str:
    return f"{days * 24:.1f} hours" if days < 1 else f"{days:.1f} days"


@dataclass
class CallTokens:
    """Mean tokens per call, from the examples (OpenAI's o200k_base)."""

    input: float
    output: float
    fewshot: float  # what FEWSHOT_EXAMPLES whole examples add to the large model's prompt


@dataclass
class Option:
    name: str
    usd_per_day: float | None  # None: no per-token price (a local model)
    training_usd: float | None = None
    days_to_pay_back: float | None = None  # None: the savings never repay the training
    usd_saved_per_month: float | None = None  # against the prompted large model, 30 days
    cpu_hours_per_day: float | None = None
    training_seconds: float | None = None  # training here, for a local model
    note: str = ""


@dataclass
class BreakEven:
    calls_per_day: int
    tokens: CallTokens
    prompted: Option
    fine_tuned: list[Option] = field(default_factory=list)
    prices_as_of: str = ""

    @property
    def best_hosted(self) -> Option | None:
        """The hosted fine-tune that saves the most against the prompted large model, if any saves."""
        saving = [option for option in self.fine_tuned if (option.usd_saved_per_month or 0) > 0]
        return max(saving, key=lambda option: option.usd_saved_per_month) if saving else None

    @property
    def worth_it(self) -> bool:
        best = self.best_hosted
        return (best is not None and best.days_to_pay_back <= PAYBACK_DAYS
                and best.usd_saved_per_month >= WORTH_SAVING_USD_PER_MONTH)

    def as_dict(self) -> dict:
        return asdict(self)


def break_even(calls_per_day: int, conversations: list[list[dict]], local_model: str = "default",
               local_parameters: int | None = None, local_training_seconds: float | None = None) -> BreakEven:
    from tunelab.data.tokens import token_counter

    counts = token_counter(target=f"openai:{LARGE_MODEL}").count_batch(conversations)
    training_counts = [count.total for count in counts]
    mean = lambda values: sum(values) / max(len(values), 1)  # noqa: E731 - a one-line helper
    tokens = CallTokens(input=mean([c.total - c.trained for c in counts]), output=mean([c.trained for c in counts]),
                        fewshot=FEWSHOT_EXAMPLES * mean(training_counts))
    large_name, large = openai_model(LARGE_MODEL)
    prompted_usd = calls_per_day * ((tokens.input + tokens.fewshot) * large["input"] + tokens.output * large["output"]) / 1e6
    prompted = Option(f"{LARGE_MODEL}, {FEWSHOT_EXAMPLES}-shot prompt", round(prompted_usd, 2),
                      note=f"{large_name}; {tokens.fewshot:.0f} more prompt tokens per call for the examples")

    fine_tuned = []
    for model in SMALL_HOSTED_MODELS:
        name, prices = openai_model(model)
        usd = calls_per_day * (tokens.input * prices["ft_input"] + tokens.output * prices["ft_output"]) / 1e6
        training = openai_cost(model, training_counts).usd
        saving = prompted_usd - usd
        fine_tuned.append(Option(f"{model} fine-tuned at OpenAI", round(usd, 2), training,
                                 round(training / saving, 3) if saving > 0 else None, round(30 * saving, 2),
                                 note=f"{name}; OpenAI takes no new fine-tuning jobs from {OPENAI_CLOSES}"))
    scale = (local_parameters or DEFAULT_MODEL_PARAMETERS) / DEFAULT_MODEL_PARAMETERS
    seconds_per_call = scale * (tokens.input / LOCAL_PREFILL_TOKENS_PER_SECOND + tokens.output / LOCAL_DECODE_TOKENS_PER_SECOND)
    fine_tuned.append(Option(f"{local_model} fine-tuned, run here", None, None, None,
                             cpu_hours_per_day=round(calls_per_day * seconds_per_call / 3600, 1),
                             training_seconds=local_training_seconds,
                             note=f"no per-token price, the machine is the cost; {LOCAL_SPEED_SOURCE}"))
    return BreakEven(calls_per_day, tokens, prompted, fine_tuned, str(price_table()["as_of"]))
