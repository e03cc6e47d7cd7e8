"""`tunelab eval`: better than the base model, better than prompting, nothing broken — with statistics.

    tunelab eval --model runs/ftjob-… --data test.jsonl --rubric rubric.yaml
    tunelab eval --model merged/ --base default --data test.jsonl --compare ft:gpt-4o-mini:acme::abc@https://api.openai.com/v1

1. read the held-out file (items.py) and choose the scorers (scorers.py, judge.py): every option is
   checked here, before any model is loaded;
2. set up the systems on the same prompts (systems.py): `base`, `base_fewshot`, `fine_tuned`, and the
   `--compare` endpoints, and generate (cached in the output folder);
3. score every system, then the statistics (stats.py): means with bootstrap intervals, every pair of systems
   compared on the same examples, per slice too;
4. on held-out preference pairs, the pairs themselves scored (preference.py): each model's preferred output,
   and the fine-tune's reward accuracy against its base;
5. the forgetting check (forgetting.py) when base and fine-tuned are both local;
6. write `results.json` (schema in docs/reference/eval-results.md) and `report.html` (report.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from tunelab.conversation.reader import is_preference_file, is_task_file
from tunelab.core.events import NO_EVENTS, Events
from tunelab.core.files import check_output_directory, write_json_atomically
from tunelab.eval.forgetting import Side, forgetting_check, read_jsonl
from tunelab.eval.items import Item, few_shot_turns, read_items, slices
from tunelab.eval.judge import PAIRWISE_PROMPT, Judge, pairwise
from tunelab.eval.preference import preference_results
from tunelab.eval.report import verdict_text, write_report
from tunelab.eval.scorers import Scorer, Scores, choose_scorers
from tunelab.eval.stats import compare, mean_with_interval
from tunelab.eval.systems import BASE, BASE_FEWSHOT, FINE_TUNED, System, generate_for, weights_fingerprint
from tunelab.models.endpoint import Decoding, Endpoint
from tunelab.models.generate import Generation, load_for_generation
from tunelab.models.precision import dtype_name, requested_dtype
from tunelab.runs.rundir import RunDir

RESULTS_SCHEMA_VERSION = 2
DEFAULT_SHOTS = 3
CHAT_MODEL_ENDED_TURN = 0.5  # a base that ends its own turn this often behaves as a chat model


@dataclass
class EvalConfig:
    model: str  # a run directory, or a model spec (default, a path, a hub id)
    data: str  # held-out chat JSONL, or preference pairs
    base: str | None = None  # the base model, when `model` is not a run that names its own
    fewshot: int | None = None  # shots for base_fewshot; None: 3 when a training file is known, else none
    fewshot_from: str | None = None  # where shots come from; default: the run's training file
    scorers: list[str] | None = None  # None: inferred from the data and options
    rubric: str | None = None
    schema: str | None = None
    judge: str | None = None  # MODEL[@URL]: adds the judge scorer and pairwise comparisons
    grader: str | None = None  # a JSON file of OpenAI's grader: adds its reward as a scorer
    grader_url: str | None = None  # where a model grader's plain model name is asked
    compare: list[str] = field(default_factory=list)  # MODEL@URL endpoints to compare with
    forgetting: str = "auto"  # auto | off | FILE of extra probes
    slice_by: str | None = None
    out: str | None = None
    max_new_tokens: int | None = None  # None: 1.5 × the longest reference reply, at least 64
    limit: int | None = None
    dtype: str = "auto"  # auto | fp32 | bf16: the local models' number format (auto: models/precision.py)
    temperature: float = 0.0  # 0: greedy; above, sampled with `seed` (and nucleus `top_p`)
    top_p: float = 1.0
    seed: int = 0
    # How the report names the paths it was given (a server names its files and fine-tunes by their API
    # ids: its own folders are not its clients' business); a path not named here is shown as it is.
    labels: dict[str, str] = field(default_factory=dict)


def evaluate(config: EvalConfig, events: Events = NO_EVENTS) -> Path:
    """Generate, score, compare and report. Returns the folder holding results.json and report.html."""
    started = time.time()
    run = RunDir(config.model)
    run = run if run.is_finished() else None
    out = Path(config.out) if config.out else (run.eval_dir if run else Path("runs") / f"eval-{int(started)}")
    check_output_directory(out)  # now, not after an hour of generation

    decoding = _decoding(config)
    requested_dtype(config.dtype)  # a wrong name is refused now, before any model is loaded
    items = read_items(config.data, config.slice_by, config.limit)
    scorers = choose_scorers(config.scorers, items, config.data, config.rubric, config.schema, config.grader,
                             config.grader_url)
    judge = Judge(config.judge) if config.judge else None
    endpoints = [Endpoint(spec) for spec in config.compare]
    shots_file, shots = _few_shot_source(config, run)
    if config.forgetting not in ("auto", "off"):
        if not Path(config.forgetting).is_file():
            raise ValueError(f"--forgetting {config.forgetting}: no such file (auto, off, or a JSONL file of probes)")
        read_jsonl(Path(config.forgetting), "probe")  # every line checked now, not after an hour of generation

    systems = _model_systems(config, run, events)
    if shots and BASE in systems:
        base = systems[BASE]
        turns = few_shot_turns(shots_file, shots)
        systems[BASE_FEWSHOT] = System(BASE_FEWSHOT, f"{base.model}, {shots}-shot", base.fingerprint + f":shots={shots}",
                                       base.loaded, base.use_adapter, turns, base.endpoint)
    for endpoint in endpoints:
        systems[endpoint.model] = System(endpoint.model, endpoint.model, f"{endpoint.model}@{endpoint.url}",
                                         endpoint=endpoint)
    order = [n for n in (BASE, BASE_FEWSHOT) if n in systems] + [e.model for e in endpoints] \
        + ([FINE_TUNED] if FINE_TUNED in systems else [])
    local = next((s.loaded for s in systems.values() if s.loaded), None)
    max_new_tokens = config.max_new_tokens or _default_max_new_tokens(local and local.tokenizer, items)

    timings: dict[str, float] = {}
    replies = {}
    for name in order:
        began = time.monotonic()
        replies[name] = generate_for(systems[name], items, max_new_tokens, out / "generations", events, decoding)
        timings[f"generate_{name}"] = round(time.monotonic() - began, 1)

    all_scorers: list[Scorer] = scorers + ([judge] if judge else [])
    scored: dict[str, dict[str, Scores]] = {name: {} for name in order}
    with events.progress("score", total=len(all_scorers) * len(order), description="score") as bar:
        for scorer in all_scorers:
            for name in order:
                scored[name][scorer.name] = scorer.score(items, replies[name])
                bar.advance()

    results = {
        "object": "tunelab.eval", "schema_version": RESULTS_SCHEMA_VERSION, "created_at": int(started),
        "model": _label(config, config.model), "data": _label(config, config.data), "examples_count": len(items),
        "max_new_tokens": max_new_tokens, "decoding": decoding.describe(),
        "scorers": [s.describe() for s in all_scorers],
        "systems": {name: {**systems[name].describe(), "scores": _summaries(all_scorers, scored[name], range(len(items)))}
                    for name in order},
        "comparisons": _comparisons(all_scorers, scored, order, range(len(items))),
        "slices": _slices(all_scorers, scored, order, items),
    }
    if judge:
        results["judge_unreadable"] = {name: sum(v is None for v in scored[name][judge.name].values) for name in order}
    if judge and FINE_TUNED in order:
        results["comparisons"] += _pairwise(judge, items, replies, order)
        results["pairwise_prompt"] = PAIRWISE_PROMPT
    if shots:
        results["fewshot"] = {"k": shots, "from": _label(config, shots_file)}
    if is_preference_file(config.data):
        began = time.monotonic()
        beta = run.settings().get("beta") if run is not None else None
        results["preference"] = preference_results(config.data, systems, order,
                                                   beta if isinstance(beta, (int, float)) else None, events)
        timings["preference"] = round(time.monotonic() - began, 1)
    began = time.monotonic()
    results["forgetting"] = _forgetting(config, systems, replies, events)
    timings["forgetting"] = round(time.monotonic() - began, 1)
    results["timings"] = timings
    results["examples"] = _examples(items, order, replies, scored)
    results["verdict"] = verdict_text(results)
    results["seconds"] = round(time.time() - started, 1)
    write_json_atomically(out / "results.json", results)
    write_report(results, out / "report.html", loss_curve=run.loss_curve_file if run else None)
    return out


def _label(config: EvalConfig, path) -> str:
    return config.labels.get(str(path), str(path))


def _few_shot_source(config: EvalConfig, run: RunDir | None) -> tuple[str | None, int]:
    """(training file, K) for the few-shot baseline; K = 0 when there is none."""
    source = config.fewshot_from
    if source is None and run is not None:
        data = run.settings().get("data")
        # A reinforcement run's tasks hold no replies to show: its few-shot baseline needs --fewshot-from.
        source = data if data and Path(data).is_file() and not is_task_file(data) else None
    shots = config.fewshot if config.fewshot is not None else (DEFAULT_SHOTS if source else 0)
    if shots < 0:
        raise ValueError("--fewshot: must be 0 or more")
    if shots and not source:
        raise ValueError("--fewshot: name the training examples to draw shots from with --fewshot-from FILE "
                         "(the run's own training file is not available)")
    if shots and not Path(source).is_file():
        raise ValueError(f"--fewshot-from {source}: no such file")
    return source, shots


def is_endpoint(spec: str | None) -> bool:
    """`MODEL@URL` or an OpenAI fine-tune name (`ft:…`) that is not a local path: a model to ask over HTTP."""
    return bool(spec) and not Path(spec).exists() and ("@" in spec or spec.startswith("ft:"))


def _model_systems(config: EvalConfig, run: RunDir | None, events: Events) -> dict[str, System]:
    """base and fine_tuned, sharing one copy of the weights when the model is a LoRA run; either may be an
    endpoint (`--model ft:…@URL --base MODEL@URL`)."""
    if is_endpoint(config.model):
        endpoint = Endpoint(config.model)
        tuned = System(FINE_TUNED, endpoint.model, f"{endpoint.model}@{endpoint.url}", endpoint=endpoint)
        loaded = None
    else:
        events.message(f"loading {config.model}")
        loaded = load_for_generation(config.model, dtype=requested_dtype(config.dtype))
        # The number format is part of a cached reply's key: bf16 and fp32 can pick different tokens.
        precision = dtype_name(next(loaded.model.parameters()).dtype)
        if run is not None:
            weights = run.model_dir if loaded.fully_fine_tuned else run.adapter_dir
            tuned = System(FINE_TUNED, loaded.fine_tuned_name,
                           f"{run.path.resolve()}:{weights_fingerprint(weights)}:{precision}", loaded, use_adapter=True)
        else:
            tuned = System(FINE_TUNED, loaded.base_name, f"{config.model}:{weights_fingerprint(config.model)}:{precision}",
                           loaded)
    # A run continued from another (`--from`, as DPO after supervised) is compared with the model it started from.
    start = run.settings().get("from_run") if run is not None else None
    if start and not RunDir(start).is_finished():
        events.warning(f"{run.path} started from {start}, which is no longer there: compared with its base model "
                       "instead (give --base to choose)")
        start = None
    base_spec = config.base or start or (run.settings().get("model") if run is not None and not loaded.has_adapter else None)
    if loaded is not None and loaded.has_adapter and not config.base and not start:
        base = System(BASE, loaded.base_name, f"{loaded.base_name}:base:{precision}", loaded, use_adapter=False)
    elif is_endpoint(base_spec):
        endpoint = Endpoint(base_spec)
        base = System(BASE, endpoint.model, f"{endpoint.model}@{endpoint.url}", endpoint=endpoint)
    elif base_spec:
        events.message(f"loading the base model {base_spec}")
        base_loaded = load_for_generation(base_spec, dtype=requested_dtype(config.dtype))
        base_precision = dtype_name(next(base_loaded.model.parameters()).dtype)
        # a run given as the base answers as its fine-tune does (its adapter on)
        base = System(BASE, base_loaded.fine_tuned_name or base_loaded.base_name,
                      f"{base_spec}:{weights_fingerprint(base_spec)}:{base_precision}", base_loaded,
                      use_adapter=base_loaded.has_adapter)
    else:  # a model on its own: evaluated as it is, with its prompted baseline
        return {BASE: System(BASE, tuned.model, tuned.fingerprint, tuned.loaded, endpoint=tuned.endpoint)}
    return {BASE: base, FINE_TUNED: tuned}


def _decoding(config: EvalConfig) -> Decoding:
    if not 0 <= config.temperature <= 2:
        raise ValueError(f"--temperature: {config.temperature} is outside 0 to 2 (0 is greedy)")
    if not 0 < config.top_p <= 1:
        raise ValueError(f"--top-p: {config.top_p} is outside (0, 1]")
    return Decoding(config.temperature, config.top_p, config.seed)


def _default_max_new_tokens(tokenizer, items: list[Item]) -> int:
    """1.5 × the longest reference reply, at least 64: a reply half again as long as the longest reference has
    missed the target anyway, and a rambling base model costs generation time up to this limit."""
    if tokenizer is None:  # only endpoints: count as OpenAI's current models do
        from bpe_openai import get_encoding

        encoding = get_encoding("o200k_base")
        longest = max(len(encoding.encode(i.reference)) for i in items)
    else:
        longest = max(len(tokenizer(i.reference, add_special_tokens=False)["input_ids"]) for i in items)
    return max(64, math.ceil(1.5 * longest) + 1)


def _applicable(values: list[float | None], indices) -> list[float]:
    return [values[i] for i in indices if values[i] is not None]


def _summaries(scorers: list[Scorer], scored: dict[str, Scores], indices) -> dict:
    summaries = {}
    for scorer in scorers:
        values = _applicable(scored[scorer.name].values, indices)
        if values:
            summaries[scorer.name] = mean_with_interval(values).as_dict()
    return summaries


def _comparisons(scorers: list[Scorer], scored: dict, order: list[str], indices) -> list[dict]:
    """Every pair of systems (b − a, the later system in the report's order against the earlier) per scorer."""
    found = []
    for a, b in combinations(order, 2):
        for scorer in scorers:
            a_values, b_values = scored[a][scorer.name].values, scored[b][scorer.name].values
            both = [i for i in indices if a_values[i] is not None and b_values[i] is not None]
            if both:
                found.append(compare(a, b, scorer.name, [a_values[i] for i in both], [b_values[i] for i in both],
                                     scorer.binary, scorer.higher_is_better).as_dict())
    return found


def _slices(scorers, scored, order, items) -> dict:
    result = {}
    for tag, indices in sorted(slices(items).items()):
        result[tag] = {"n": len(indices),
                       "systems": {name: _summaries(scorers, scored[name], indices) for name in order},
                       "comparisons": [c for c in _comparisons(scorers, scored, order, indices) if c["b"] == order[-1]]}
    return result


def _pairwise(judge: Judge, items: list[Item], replies: dict[str, list[Generation]], order: list[str]) -> list[dict]:
    found = []
    for other in order[:-1]:
        values, details = pairwise(judge.endpoint, items, replies[other], replies[FINE_TUNED])
        decided = [v for v in values if v is not None]
        if decided:
            comparison = compare(other, FINE_TUNED, "pairwise", [0.0] * len(decided), decided, binary=False).as_dict()
            comparison["undecided"] = len(values) - len(decided)
            comparison["judge"] = judge.spec
            found.append(comparison)
    return found


def _forgetting(config: EvalConfig, systems: dict[str, System], replies: dict[str, list[Generation]],
                events: Events) -> dict | None:
    if config.forgetting == "off":
        return {"skipped": "--forgetting off"}
    if BASE not in systems or FINE_TUNED not in systems:
        return {"skipped": "there is no base model to compare with (give --base)"}
    base, tuned = systems[BASE], systems[FINE_TUNED]
    if base.endpoint or tuned.endpoint:
        return {"skipped": "the forgetting check needs both models' weights here; one of them is an endpoint"}
    ended = [reply.finish_reason != "length" for reply in replies[BASE]]
    base_is_chat = bool(ended) and sum(ended) / len(ended) >= CHAT_MODEL_ENDED_TURN
    return forgetting_check(Side(base.loaded, base.use_adapter), Side(tuned.loaded, tuned.use_adapter), base_is_chat,
                            None if config.forgetting == "auto" else config.forgetting, events)


def _examples(items: list[Item], order: list[str], replies: dict, scored: dict) -> list[dict]:
    examples = []
    for index, item in enumerate(items):
        outputs = {}
        for name in order:
            reply = replies[name][index]
            outputs[name] = {
                "text": reply.text, "finish_reason": reply.finish_reason, "completion_tokens": reply.completion_tokens,
                "scores": {s: v.values[index] for s, v in scored[name].items() if v.values[index] is not None},
                "details": {s: v.details[index] for s, v in scored[name].items()
                            if v.details and v.details[index] is not None},
            }
        examples.append({"line": item.line, "prompt": item.prompt, "reference": item.reference, "tags": item.tags,
                         "outputs": outputs})
    return examples
