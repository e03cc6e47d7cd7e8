"""The evaluation report: one self-contained HTML file (charts inlined) a person can open or mail.

Order: the verdict; scores per system with their intervals (a chart and a table); every pair of systems
compared (paired difference, interval, p-value, wins/ties/losses); slices; the forgetting check; the run's
training loss; what each scorer measures (the judge's prompt included); then every held-out example side by
side, the fine-tune's worst regressions against the base first.

`verdict_text` is the only place numbers become a sentence, and it reads them from results.json's own
fields, so the summary printed, the report and the JSON cannot disagree.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from jinja2 import Environment, select_autoescape

from tunelab.core.files import write_text_atomically
from tunelab.eval.stats import Comparison, verdict_word

# The scorer a verdict leads with: the most task-specific one the evaluation has.
PRIMARY_ORDER = ("grader", "rubric", "json_schema", "tool_call", "exact_match", "judge", "json_valid", "semantic_similarity",
                 "rouge_l", "chrf", "ended_turn")
COLOURS = {"base": "#9e9e9e", "base_fewshot": "#d9a441", "fine_tuned": "#4c72b0"}

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunelab evaluation — {{ r.model }}</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#222}
h1{font-size:1.5rem} h2{margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f5f5f5} .num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.verdict{background:#f0f7ee;border-left:4px solid #4c9a3a;padding:.6rem 1rem}
.example{border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:.6rem}
.cols{display:grid;grid-template-columns:repeat({{ 1 + names|length }},1fr);gap:.6rem}
pre{white-space:pre-wrap;background:#fafafa;border:1px solid #eee;padding:.5rem;margin:.2rem 0;font-size:13px}
.meta{color:#666;font-size:12px} .worse{color:#b3261e} .better{color:#2e7d32} img{max-width:100%}
</style></head><body>
<h1>Evaluation: {{ r.model }}</h1>
<p class="meta">{{ r.examples_count }} held-out examples from <code>{{ r.data }}</code> · {{ r.decoding }} decoding, at most
{{ r.max_new_tokens }} new tokens{% if r.fewshot %} · few-shot: {{ r.fewshot.k }} examples from <code>{{ r.fewshot.from }}</code>{% endif %} · {{ r.seconds }} s</p>
<section id="verdict"><h2>Verdict</h2><p class="verdict">{{ r.verdict }}</p></section>

<section id="scores"><h2>Scores</h2>
<img alt="scores per system with 95% intervals" src="data:image/png;base64,{{ chart }}">
<table><tr><th>system</th><th>model</th>{% for s in r.scorers %}<th>{{ s.label }}</th>{% endfor %}</tr>
{% for name, system in r.systems.items() %}<tr><td>{{ name }}</td><td><code>{{ system.model }}</code></td>
{% for s in r.scorers %}<td class="num">{% if s.name in system.scores %}{{ est(system.scores[s.name], s) }}{% else %}n/a{% endif %}</td>{% endfor %}</tr>{% endfor %}
</table><p class="meta">Mean over the examples each scorer applies to, with its 95% bootstrap interval.
Fractions are shown out of 100.</p></section>

<section id="comparisons"><h2>Comparisons</h2>
<table><tr><th>b vs a</th><th>scorer</th><th>mean difference (b − a)</th><th>95% CI</th><th>p</th><th>wins / ties / losses (b)</th><th>reading</th></tr>
{% for c in r.comparisons %}{% set s = scorer(c.scorer) %}<tr><td>{{ c.b }} vs {{ c.a }}</td><td>{{ s.label }}</td>
<td class="num">{{ diff(c.mean_diff, s) }}</td><td class="num">{{ diff(c.ci95[0], s) }} to {{ diff(c.ci95[1], s) }}</td>
<td class="num">{{ "%.3g"|format(c.p_value) }} ({{ c.test }})</td><td class="num">{{ c.wins }} / {{ c.ties }} / {{ c.losses }}</td>
<td class="{{ word_class(c, s) }}">{{ word(c, s) }}</td></tr>{% endfor %}
</table><p class="meta">Paired on the same examples; intervals by the paired bootstrap; p from McNemar's exact test for
pass/fail scores, the sign test otherwise. A difference is read as one only when its interval excludes zero and
p &lt; 0.05; otherwise it is "no detectable difference".
{% if r.pairwise_prompt %}Pairwise: the judge compared each pair twice with the order swapped; a system wins only when both agree.{% endif %}</p></section>

{% if r.slices %}<section id="slices"><h2>Slices</h2>
<table><tr><th>slice</th><th>n</th>{% for name in names %}<th>{{ name }}: {{ primary.label }}</th>{% endfor %}<th>{{ names[-1] }} vs {{ names[0] }}</th></tr>
{% for tag, sl in r.slices.items() %}<tr><td>{{ tag }}</td><td class="num">{{ sl.n }}</td>
{% for name in names %}<td class="num">{% if primary.name in sl.systems[name] %}{{ est(sl.systems[name][primary.name], primary) }}{% else %}n/a{% endif %}</td>{% endfor %}
{% set found = slice_comparison(sl) %}<td class="{{ word_class(found, primary) if found else '' }}">{% if found %}{{ diff(found.mean_diff, primary) }} ({{ word(found, primary) }}){% endif %}</td></tr>{% endfor %}
</table></section>{% endif %}

{% if r.preference and not r.preference.skipped %}<section id="preference"><h2>Preference pairs</h2>
{% set p = r.preference %}<table><tr><th>system</th><th>prefers the preferred output (per-token log-probability, 95% CI)</th></tr>
{% for name, figures in p.systems.items() %}{% set e = figures.likelihood_preference %}<tr><td>{{ r.systems[name].model }}</td>
<td class="num">{{ "%.0f"|format(100 * e.mean) }}% ({{ "%.0f"|format(100 * e.ci95[0]) }}% to {{ "%.0f"|format(100 * e.ci95[1]) }}%)</td></tr>{% endfor %}
</table>{% if p.reward %}<p>Reward accuracy of the fine-tune against {{ r.systems[p.reward.reference].model }} (β {{ p.reward.beta }}):
<strong>{{ "%.0f"|format(100 * p.reward.accuracy.mean) }}%</strong> of {{ p.reward.accuracy.n }} pairs
(95% CI {{ "%.0f"|format(100 * p.reward.accuracy.ci95[0]) }}% to {{ "%.0f"|format(100 * p.reward.accuracy.ci95[1]) }}%),
mean margin {{ "%.3f"|format(p.reward.margin.mean) }} ({{ "%.3f"|format(p.reward.margin.ci95[0]) }} to {{ "%.3f"|format(p.reward.margin.ci95[1]) }}).
50% means the fine-tune prefers neither output more than its reference does.</p>{% endif %}</section>{% endif %}

<section id="forgetting"><h2>Forgetting check</h2>
{% set f = r.forgetting %}{% if f.skipped %}<p>Not run: {{ f.skipped }}.</p>{% else %}
<p class="verdict">{{ f.verdict }}</p>
<table><tr><th>measure</th><th>base</th><th>fine-tuned</th><th>change (95% CI)</th></tr>
<tr><td>loss on {{ f.general_text.passages }} general-text passages (nats/token)</td><td class="num">{{ "%.3f"|format(f.general_text.base_loss) }}</td>
<td class="num">{{ "%.3f"|format(f.general_text.fine_tuned_loss) }}</td><td class="num">{{ "%+.1f"|format(100 * f.general_text.relative_change) }}%
({{ "%+.1f"|format(100 * f.general_text.ci95[0]) }}% to {{ "%+.1f"|format(100 * f.general_text.ci95[1]) }}%)</td></tr>
<tr><td>drift: KL(base ‖ fine-tuned) per token</td><td class="num">0</td><td class="num">{{ "%.4f"|format(f.drift.kl_per_token) }}</td>
<td class="num">{{ "%.4f"|format(f.drift.ci95[0]) }} to {{ "%.4f"|format(f.drift.ci95[1]) }}</td></tr>
<tr><td>general-ability probes passed ({{ f.probes.choice }} multiple-choice, {{ f.probes.instruction }} instruction)</td>
<td class="num">{{ f.probes.base_passed }} / {{ f.probes.total }}</td><td class="num">{{ f.probes.fine_tuned_passed }} / {{ f.probes.total }}</td>
<td class="num">p = {{ "%.3g"|format(f.probes.p_value) }}</td></tr></table>
{% if f.probes.instruction_skipped %}<p class="meta">Instruction-following probes not run: {{ f.probes.instruction_skipped }}.</p>{% endif %}
<h3>Probes the base passed and the fine-tuned model failed ({{ f.probes.lost|length }})</h3>
{% if f.probes.lost %}<table><tr><th>probe</th><th>item</th><th>right answer / replies</th></tr>
{% for p in f.probes.lost %}<tr><td>{{ p.id }}</td><td>{{ p.text }}</td><td>{% if p.answer %}{{ p.answer }}{% endif %}
{% if p.replies %}{% for who, text in p.replies.items() %}<pre><i>{{ who }}:</i> {{ text }}</pre>{% endfor %}{% endif %}</td></tr>{% endfor %}</table>
{% else %}<p>None.</p>{% endif %}{% endif %}</section>

{% if loss_curve %}<section id="training"><h2>Training loss</h2><img alt="loss curve" src="data:image/png;base64,{{ loss_curve }}"></section>{% endif %}

<section id="scorers"><h2>Scorers</h2><ul>
{% for s in r.scorers %}<li><b>{{ s.label }}</b> (<code>{{ s.name }}</code>){% if s.higher_is_better is none %}: no better direction{% elif not s.higher_is_better %}: lower is better{% endif %}
{% if s.checks %}<ul>{% for c in s.checks %}<li>{{ c.description }}</li>{% endfor %}</ul>{% endif %}
{% if s.source %} — schema {{ s.source }}<pre>{{ s.schema|tojson(indent=1) }}</pre>{% endif %}
{% if s.prompt %} — judge <code>{{ s.judge }}</code>, asked:<pre>{{ s.prompt }}</pre>{% endif %}</li>{% endfor %}
</ul>{% if r.pairwise_prompt %}<p>Pairwise prompt:</p><pre>{{ r.pairwise_prompt }}</pre>{% endif %}</section>

<section id="examples"><h2>Examples{% if names|length > 1 %}, the fine-tune's worst regressions first{% endif %}</h2>
{% for e in examples %}<div class="example"><div class="meta">line {{ e.line }}{% if e.tags %} · {{ e.tags|join(', ') }}{% endif %}</div>
<div class="cols"><div><b>prompt</b>{% for m in e.prompt %}{% if m.role != 'system' %}<pre><i>{{ m.role }}:</i> {{ m.content }}</pre>{% endif %}{% endfor %}
<b>reference</b><pre>{{ e.reference }}</pre></div>
{% for name in names %}{% set o = e.outputs[name] %}<div><b>{{ name }}</b>
<span class="meta">{% for s in r.scorers %}{% if s.name in o.scores %}{{ s.name }} {{ value(o.scores[s.name], s) }} · {% endif %}{% endfor %}
{% if o.finish_reason == 'length' %}<span class="worse">hit token limit</span>{% else %}<span class="better">ended turn</span>{% endif %}</span>
<pre>{{ o.text }}</pre>{% if o.details.rubric %}<span class="meta">{% for id, ok in o.details.rubric.checks.items() %}<span class="{{ 'better' if ok else 'worse' }}">{{ '✓' if ok else '✗' }} {{ id }}</span> {% endfor %}</span>{% endif %}
{% if o.details.judge %}<pre class="meta">judge: {{ o.details.judge.judge }}</pre>{% endif %}</div>
{% endfor %}</div></div>{% endfor %}</section>
</body></html>
"""


def _scorer(results: dict, name: str) -> dict:
    if name == "pairwise":
        return {"name": "pairwise", "label": "pairwise judge (b wins = +1)", "fraction": False, "higher_is_better": True,
                "binary": False}
    return next(s for s in results["scorers"] if s["name"] == name)


def _value(value: float, scorer: dict) -> str:
    return f"{100 * value:.0f}" if scorer["fraction"] else f"{value:.1f}"


def _diff(value: float, scorer: dict) -> str:
    return f"{100 * value:+.1f}" if scorer["fraction"] else f"{value:+.2f}"


def _estimate(estimate: dict, scorer: dict) -> str:
    low, high = estimate["ci95"]
    if scorer["fraction"]:
        return f"{100 * estimate['mean']:.1f} ({100 * low:.0f}–{100 * high:.0f})"
    return f"{estimate['mean']:.1f} ({low:.1f}–{high:.1f})"


def _comparison(found: dict) -> Comparison:
    return Comparison(found["a"], found["b"], found["scorer"], found["mean_diff"], found["ci95"][0], found["ci95"][1],
                      found["p_value"], found["test"], found["wins"], found["ties"], found["losses"], found["n"])


def _word(found: dict, scorer: dict) -> str:
    return verdict_word(_comparison(found), scorer["higher_is_better"])


def primary_scorer(results: dict) -> dict:
    """The scorer the verdict leads with: the most task-specific one that scored the base model."""
    scored = results["systems"][next(iter(results["systems"]))]["scores"]
    names = [s["name"] for s in results["scorers"] if s["name"] in scored] or [s["name"] for s in results["scorers"]]
    chosen = next((n for n in PRIMARY_ORDER if n in names), names[0])
    return _scorer(results, chosen)


def _find(results: dict, a: str, b: str, scorer: str) -> dict | None:
    return next((c for c in results["comparisons"] if c["a"] == a and c["b"] == b and c["scorer"] == scorer), None)


def verdict_text(results: dict) -> str:
    """The evaluation in a few sentences, every figure taken from `results`."""
    systems, primary = results["systems"], primary_scorer(results)
    name, label = primary["name"], primary["label"]

    def mean(system: str) -> str:
        return _value(systems[system]["scores"][name]["mean"], primary)

    sentences = []
    found = _find(results, "base", "fine_tuned", name)
    if found:
        word = _word(found, primary)
        interval = f"95% CI {_diff(found['ci95'][0], primary)} to {_diff(found['ci95'][1], primary)}"
        if word == "better":
            sentences.append(f"Fine-tuning raised {label} from {mean('base')} to {mean('fine_tuned')} "
                             f"({_diff(found['mean_diff'], primary)}, {interval}) on {found['n']} held-out examples.")
        elif word == "worse":
            sentences.append(f"Fine-tuning lowered {label} from {mean('base')} to {mean('fine_tuned')} "
                             f"({_diff(found['mean_diff'], primary)}, {interval}) on {found['n']} held-out examples.")
        else:
            sentences.append(f"Fine-tuning made no detectable difference to {label}: {mean('base')} for the base model, "
                             f"{mean('fine_tuned')} fine-tuned ({interval}) on {found['n']} held-out examples.")
    elif name in systems["base"]["scores"]:
        sentences.append(f"{systems['base']['model']} scored {mean('base')} on {label} "
                         f"over {results['examples_count']} held-out examples.")
    if "base_fewshot" in systems:
        k = results["fewshot"]["k"]
        against = _find(results, "base_fewshot", "fine_tuned", name)
        if against is None and name in systems["base_fewshot"]["scores"]:
            sentences.append(f"{k}-shot prompting reached {mean('base_fewshot')}.")
        elif against is not None:
            word = _word(against, primary)
            reading = {"better": "the fine-tune beats prompting", "worse": "prompting beats the fine-tune",
                       }.get(word, "no detectable difference from the fine-tune: try prompting first")
            sentences.append(f"{k}-shot prompting of the base model reached {mean('base_fewshot')} ({reading}).")
    for other in systems:
        if systems[other].get("kind") == "endpoint" and "fine_tuned" in systems:
            found = _find(results, other, "fine_tuned", name)
            if found:
                sentences.append(f"{other} scored {mean(other)}: the fine-tune is {_word(found, primary)} "
                                 f"({_diff(found['mean_diff'], primary)}, 95% CI {_diff(found['ci95'][0], primary)} to "
                                 f"{_diff(found['ci95'][1], primary)}).".replace("is no detectable", "shows no detectable"))
    if name != "ended_turn" and all("ended_turn" in s["scores"] for s in systems.values()):
        ended = ", ".join(f"{n} {100 * s['scores']['ended_turn']['mean']:.0f}%" for n, s in systems.items())
        sentences.append(f"Ended its turn by itself: {ended}.")
    reward = (results.get("preference") or {}).get("reward")
    if reward:
        accuracy = reward["accuracy"]
        sentences.append(f"On {accuracy['n']} held-out preference pairs the fine-tune's reward (β {reward['beta']:g}, "
                         f"against {systems[reward['reference']]['model']}) favours the preferred output in "
                         f"{100 * accuracy['mean']:.0f}% (95% CI {100 * accuracy['ci95'][0]:.0f}% to "
                         f"{100 * accuracy['ci95'][1]:.0f}%; 50%: no preference learned).")
    forgetting = results.get("forgetting") or {}
    if forgetting.get("verdict"):
        sentences.append("Forgetting check: " + forgetting["verdict"])
    return " ".join(sentences)


def _png_base64(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def score_chart(results: dict) -> str:
    """Bars per scorer (the fraction scorers, 0–100), one per system, with 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scorers = [s for s in results["scorers"] if s["fraction"]]
    systems = results["systems"]
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(scorers) + 2), 3.4), dpi=110)
    width = 0.8 / max(len(systems), 1)
    for k, (name, system) in enumerate(systems.items()):
        xs, heights, errors = [], [], [[], []]
        for i, scorer in enumerate(scorers):
            estimate = system["scores"].get(scorer["name"])
            if estimate is None:
                continue
            xs.append(i + k * width)
            heights.append(100 * estimate["mean"])
            errors[0].append(100 * (estimate["mean"] - estimate["ci95"][0]))
            errors[1].append(100 * (estimate["ci95"][1] - estimate["mean"]))
        bars = axis.bar(xs, heights, width, yerr=errors, capsize=3, label=name, color=COLOURS.get(name, "#55a868"))
        axis.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
    axis.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(scorers))],
                    [s["label"] for s in scorers], fontsize=8)
    axis.set_ylim(0, 115)
    axis.set_ylabel("score (0–100)")
    axis.legend(loc="upper left", fontsize=7, ncols=min(4, len(systems)))
    figure.tight_layout()
    encoded = _png_base64(figure)
    plt.close(figure)
    return encoded


def _ordered_examples(results: dict) -> list[dict]:
    """Worst regressions of the fine-tune against the base (on the primary scorer) first."""
    systems, name = results["systems"], primary_scorer(results)["name"]
    if "fine_tuned" not in systems or "base" not in systems:
        return results["examples"]

    def change(example: dict) -> float:
        tuned, base = example["outputs"]["fine_tuned"]["scores"], example["outputs"]["base"]["scores"]
        return tuned.get(name, 0) - base.get(name, 0)

    return sorted(results["examples"], key=change)


def write_report(results: dict, path: Path, loss_curve: Path | None = None) -> Path:
    """report.html for `results`, with the run's loss curve (a PNG) embedded when given."""
    curve = base64.b64encode(loss_curve.read_bytes()).decode() if loss_curve and loss_curve.is_file() else None
    names = list(results["systems"])
    primary = primary_scorer(results)
    environment = Environment(autoescape=select_autoescape(default=True))
    html = environment.from_string(TEMPLATE).render(
        r=results, names=names, primary=primary, chart=score_chart(results), loss_curve=curve,
        examples=_ordered_examples(results), scorer=lambda n: _scorer(results, n), est=_estimate, value=_value,
        diff=_diff, word=_word, word_class=lambda c, s: {"better": "better", "worse": "worse"}.get(_word(c, s), ""),
        slice_comparison=lambda sl: next((c for c in sl["comparisons"] if c["a"] == names[0]
                                          and c["scorer"] == primary["name"]), None),
    )
    write_text_atomically(path, html)
    return path
