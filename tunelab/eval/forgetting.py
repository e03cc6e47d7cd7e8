"""The forgetting check: is the fine-tuned model worse than its base at anything outside the task?

Offline, on material bundled with tunelab (`tunelab/eval/general/`, written for the project):

(a) general-text loss — the mean per-token loss of base and fine-tuned on 24 short passages of everyday
    prose (science, history, cooking, how-to), and the relative change with its paired-bootstrap interval;
(b) drift — the KL divergence of the fine-tuned model's next-token distributions from the base's on the
    same passages, per token (0 for an unchanged model);
(c) probes — 80 multiple-choice items scored by log-likelihood (the choice the model finds likeliest after
    the context; this works for base and chat models alike), and 30 instruction-following items checked
    by rule (IFEval-style: word counts, case, JSON, bullets…), run only when the base model behaves as a
    chat model (it ended its own turn on most held-out prompts): a pretrained-only model follows no
    instruction, so those probes would measure nothing. The report lists probes the base passed and the
    fine-tuned model failed.

`--forgetting FILE` adds the user's own probes in the same JSONL format: `{"id", "kind": "choice",
"context", "choices": [...], "answer": INDEX}` or `{"id", "kind": "instruction", "prompt", "checks": {...}}`
(the check names are the keys of `CHECKS`).
"""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.core.events import NO_EVENTS, Events
from tunelab.eval.scorers import is_json
from tunelab.eval.stats import compare, mean_with_interval, relative_change
from tunelab.models.generate import LoadedModel, adapter_state, generate_replies

GENERAL_DIR = Path(__file__).resolve().parent / "general"
INSTRUCTION_MAX_TOKENS = 160
CHOICE_BATCH = 128


@dataclass
class Side:
    """One side of the comparison: a loaded model, with its adapter on or off."""

    loaded: LoadedModel
    use_adapter: bool

    def context(self):
        """The adapter switched off for the base side; the fine-tuned side runs as loaded (merged or not)."""
        return adapter_state(self.loaded, False) if self.loaded.has_adapter and not self.use_adapter else nullcontext()


def read_jsonl(path: Path, what: str) -> list[dict]:
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {number}: not JSON ({error.msg})") from None
        problem = _probe_problem(record) if what == "probe" else None
        if problem:
            raise ValueError(f"{path}: line {number}: {problem}")
        records.append(record)
    return records


def _probe_problem(record) -> str | None:
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        return "a probe is an object with a string `id`"
    if record.get("kind") == "choice":
        choices = record.get("choices")
        if not isinstance(record.get("context"), str) or not isinstance(choices, list) or len(choices) < 2 \
                or not all(isinstance(c, str) and c for c in choices):
            return "choices: a choice probe needs a `context` and at least two non-empty `choices`"
        answer = record.get("answer")
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            return f"answer: must be the index of the right choice (0 to {len(choices) - 1})"
        return None
    if record.get("kind") == "instruction":
        checks = record.get("checks")
        if not isinstance(record.get("prompt"), str) or not isinstance(checks, dict) or not checks:
            return "checks: an instruction probe needs a `prompt` and a `checks` object"
        unknown = [k for k in checks if k not in CHECKS]
        if unknown:
            return f"checks.{unknown[0]}: unknown check (known: {', '.join(CHECKS)})"
        if "regex" in checks:
            try:
                re.compile(checks["regex"])
            except (re.error, TypeError) as error:
                return f"checks.regex: not a valid regular expression ({error})"
        return None
    return "kind: must be \"choice\" or \"instruction\""


# --- (a) and (b): loss and drift on general text ---------------------------------------------------------

PASSAGE_BATCH = 4  # passages per forward pass: the output layer's weights are read once for all of them


@torch.no_grad()
def text_losses_and_drift(base: Side, tuned: Side, passages: list[str]) -> tuple[list[float], list[float], list[float]]:
    """Per passage: base mean token loss, fine-tuned mean token loss, mean KL(base ‖ fine-tuned) per token."""
    tokenizer = base.loaded.tokenizer
    base_losses, tuned_losses, drifts = [], [], []
    for start in range(0, len(passages), PASSAGE_BATCH):
        rows = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in passages[start:start + PASSAGE_BATCH]]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):  # right padding: positions line up with each passage's own tokens
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
        with base.context():
            base_logp = _log_probs(base.loaded.model, ids, mask)
        with tuned.context():
            tuned_logp = _log_probs(tuned.loaded.model, ids, mask).to(base_logp.device)
        targets = ids[:, 1:].to(base_logp.device)
        base_nll = -base_logp.gather(-1, targets[..., None])[..., 0]
        tuned_nll = -tuned_logp.gather(-1, targets[..., None])[..., 0]
        kl = torch.nn.functional.kl_div(tuned_logp, base_logp, reduction="none", log_target=True).sum(-1).clamp_min(0)
        for r, row in enumerate(rows):
            n = len(row) - 1
            base_losses.append(float(base_nll[r, :n].mean()))
            tuned_losses.append(float(tuned_nll[r, :n].mean()))
            drifts.append(float(kl[r, :n].mean()))
        del base_logp, tuned_logp, kl
    return base_losses, tuned_losses, drifts


def _log_probs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(next token) at every position but the last: [rows, length − 1, vocabulary], in fp32."""
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
    return torch.log_softmax(logits, dim=-1)


# --- (c) probes ------------------------------------------------------------------------------------------

@torch.no_grad()
def choice_passes(side: Side, probes: list[dict]) -> list[bool]:
    """Whether the model's likeliest choice (summed log-probability of its tokens) is the right one."""
    tokenizer, model = side.loaded.tokenizer, side.loaded.model
    device = next(model.parameters()).device
    rows = []  # (probe index, choice index, context ids, choice ids)
    for p, probe in enumerate(probes):
        context = tokenizer(probe["context"], add_special_tokens=True)["input_ids"]
        for c, choice in enumerate(probe["choices"]):
            rows.append((p, c, context, tokenizer(choice, add_special_tokens=False)["input_ids"]))
    totals: dict[tuple[int, int], float] = {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with side.context():
        for start in range(0, len(rows), CHOICE_BATCH):
            batch = rows[start:start + CHOICE_BATCH]
            width = max(len(ctx) + len(ch) for _, _, ctx, ch in batch)
            keep = max(len(ch) for _, _, _, ch in batch) + 1
            # Left padding puts every choice at the end, so only the last `keep` positions need logits.
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (_, _, ctx, ch) in enumerate(batch):
                row = ctx + ch
                ids[r, width - len(row):] = torch.tensor(row)
                mask[r, width - len(row):] = 1
            # Positions as an index tensor, not a count: a count slices the hidden states into a strided view,
            # which the output layer multiplies as a batched matmul reading its 670 MB once per row (7× slower).
            positions = torch.arange(width - keep, width, device=device)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=positions).logits.float()
            log_probs = torch.log_softmax(logits, dim=-1)
            for r, (p, c, _, ch) in enumerate(batch):
                # logits position j (of the kept `keep`) predicts the token at width − keep + j + 1.
                positions = range(keep - 1 - len(ch), keep - 1)
                totals[(p, c)] = sum(float(log_probs[r, j, token]) for j, token in zip(positions, ch))
    return [max(range(len(probe["choices"])), key=lambda c: totals[(p, c)]) == probe["answer"]
            for p, probe in enumerate(probes)]


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'’-]+", text)


CHECKS = {
    "lowercase": lambda t, v: (t == t.lower()) == v and any(c.isalpha() for c in t),
    "uppercase": lambda t, v: (t == t.upper()) == v and any(c.isalpha() for c in t),
    "max_words": lambda t, v: len(_words(t)) <= v,
    "min_words": lambda t, v: len(_words(t)) >= v,
    "max_chars": lambda t, v: len(t.strip()) <= v,
    "max_sentences": lambda t, v: 0 < len(re.findall(r"[.!?](?:\s|$)", t.strip() + " ")) <= v,
    "bullets": lambda t, v: len([l for l in t.splitlines() if re.match(r"\s*[-*•] ", l)]) == v,
    "numbered": lambda t, v: len([l for l in t.splitlines() if re.match(r"\s*\d+[.)] ", l)]) == v,
    "paragraphs": lambda t, v: len([p for p in re.split(r"\n\s*\n", t.strip()) if p.strip()]) == v,
    "lines": lambda t, v: len([l for l in t.strip().splitlines() if l.strip()]) == v,
    "json": lambda t, v: is_json(t) == v,
    "no_commas": lambda t, v: ("," not in t) == v,
    "contains": lambda t, v: v.lower() in t.lower(),
    "not_contains": lambda t, v: v.lower() not in t.lower(),
    "not_contains_letter": lambda t, v: v.lower() not in t.lower(),
    "count": lambda t, v: t.lower().count(v[0].lower()) >= v[1],
    "starts_with": lambda t, v: t.strip().startswith(v),
    "ends_with": lambda t, v: t.strip().endswith(v),
    "regex": lambda t, v: re.search(v, t) is not None,
}


def instruction_passes(side: Side, probes: list[dict]) -> tuple[list[bool], list[str]]:
    """Whether each reply meets all of its probe's checks, and the replies."""
    replies = generate_replies(side.loaded, [[{"role": "user", "content": p["prompt"]}] for p in probes],
                               max_new_tokens=INSTRUCTION_MAX_TOKENS, use_adapter=side.use_adapter)
    passed = [r.finish_reason != "length" and all(CHECKS[name](r.text, value) for name, value in p["checks"].items())
              for p, r in zip(probes, replies)]
    return passed, [r.text for r in replies]


# --- the check as a whole --------------------------------------------------------------------------------

def forgetting_check(base: Side, tuned: Side, base_is_chat: bool, extra_probes: str | None = None,
                     events: Events = NO_EVENTS) -> dict:
    """The three measurements and a plain verdict, as results.json's `forgetting` section."""
    passages = [p["text"] for p in read_jsonl(GENERAL_DIR / "passages.jsonl", "passage")]
    probes = read_jsonl(GENERAL_DIR / "probes.jsonl", "probe")
    user_probes = read_jsonl(Path(extra_probes), "probe") if extra_probes else []
    for probe in user_probes:
        probe["source"] = str(extra_probes)
    probes += user_probes
    skipped = None
    if not base_is_chat:
        skipped = ("the base model is not a chat model (it rarely ended its own turn on the held-out prompts), "
                   "so instruction-following probes would measure nothing")
        probes = [p for p in probes if p["kind"] == "choice" or p.get("source")]

    with events.progress("forgetting", total=3, description="forgetting check") as bar:
        base_losses, tuned_losses, drifts = text_losses_and_drift(base, tuned, passages)
        bar.advance()
        choice = [p for p in probes if p["kind"] == "choice"]
        base_pass = dict(zip((p["id"] for p in choice), choice_passes(base, choice)))
        tuned_pass = dict(zip((p["id"] for p in choice), choice_passes(tuned, choice)))
        bar.advance()
        instruction = [p for p in probes if p["kind"] == "instruction"]
        replies: dict[str, dict[str, str]] = {}
        if instruction:
            for name, side, passes in (("base", base, base_pass), ("fine_tuned", tuned, tuned_pass)):
                passed, texts = instruction_passes(side, instruction)
                passes.update(zip((p["id"] for p in instruction), passed))
                for probe, text in zip(instruction, texts):
                    replies.setdefault(probe["id"], {})[name] = text
        bar.advance()

    loss_change = relative_change(base_losses, tuned_losses)
    drift = mean_with_interval(drifts)
    ids = [p["id"] for p in probes]
    probe_comparison = compare("base", "fine_tuned", "probes", [float(base_pass[i]) for i in ids],
                               [float(tuned_pass[i]) for i in ids], binary=True)
    by_id = {p["id"]: p for p in probes}
    lost = [_probe_entry(by_id[i], replies.get(i)) for i in ids if base_pass[i] and not tuned_pass[i]]
    gained = [i for i in ids if tuned_pass[i] and not base_pass[i]]
    result = {
        "general_text": {"passages": len(passages), "base_loss": sum(base_losses) / len(base_losses),
                         "fine_tuned_loss": sum(tuned_losses) / len(tuned_losses),
                         "relative_change": loss_change.mean, "ci95": [loss_change.low, loss_change.high]},
        "drift": {"kl_per_token": drift.mean, "ci95": [drift.low, drift.high]},
        "probes": {"total": len(ids), "choice": len(choice), "instruction": len(instruction),
                   "instruction_skipped": skipped, "base_passed": sum(base_pass[i] for i in ids),
                   "fine_tuned_passed": sum(tuned_pass[i] for i in ids), "lost": lost, "gained": gained,
                   "p_value": probe_comparison.p_value, "ci95": [probe_comparison.low, probe_comparison.high],
                   "detectable": probe_comparison.detectable},
    }
    result["verdict"] = forgetting_verdict(result)
    return result


def _probe_entry(probe: dict, replies: dict | None) -> dict:
    entry = {"id": probe["id"], "kind": probe["kind"], "text": probe.get("context") or probe.get("prompt")}
    if probe["kind"] == "choice":
        entry["answer"] = probe["choices"][probe["answer"]].strip()
    if replies:
        entry["replies"] = replies
    return entry


def forgetting_verdict(result: dict) -> str:
    """One sentence saying whether anything got worse, from the numbers alone."""
    text, probes = result["general_text"], result["probes"]
    low, high = text["ci95"]
    change = f"general-text loss {100 * text['relative_change']:+.1f}% (95% CI {100 * low:+.1f}% to {100 * high:+.1f}%)"
    lost = f"{len(probes['lost'])} of {probes['total']} probes lost, {len(probes['gained'])} gained"
    worse = []
    if low > 0:
        worse.append("it predicts general text measurably worse than the base model")
    if probes["detectable"] and probes["ci95"][1] < 0:
        worse.append("it fails significantly more general-ability probes")
    if worse:
        return f"Something got worse: {' and '.join(worse)} ({change}; {lost})."
    if probes["lost"]:
        return (f"No detectable forgetting overall ({change}; {lost}, a difference within chance), "
                f"but look at the lost probes listed.")
    return f"No detectable forgetting: {change}; {lost}."
