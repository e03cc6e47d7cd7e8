"""The evaluation report: one self-contained HTML file (images inlined) a person can open or mail.

It shows the verdict first, then scores per system (a bar chart and a table), the rubric check by
check, the loss curve of the run, and every held-out example side by side.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from jinja2 import Environment, select_autoescape

from tunelab.core.files import write_text_atomically

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunelab evaluation — {{ title }}</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#222}
h1{font-size:1.5rem} h2{margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f5f5f5} .num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{background:#f0f7ee;border-left:4px solid #4c9a3a;padding:.6rem 1rem}
.example{border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:.6rem}
.cols{display:grid;grid-template-columns:repeat({{ 1 + systems|length }},1fr);gap:.6rem}
pre{white-space:pre-wrap;background:#fafafa;border:1px solid #eee;padding:.5rem;margin:.2rem 0;font-size:13px}
.meta{color:#666;font-size:12px} .fail{color:#b3261e} .pass{color:#2e7d32} img{max-width:100%}
</style></head><body>
<h1>Evaluation: {{ title }}</h1>
<p class="meta">{{ results.examples_count }} held-out examples from <code>{{ results.data }}</code> ·
greedy decoding, at most {{ results.max_new_tokens }} new tokens · {{ results.seconds }} s</p>
<p class="verdict">{{ verdict }}</p>

<h2>Scores</h2>
<img alt="scores per system" src="data:image/png;base64,{{ score_chart }}">
<table><tr><th>system</th><th>model</th>{% if results.rubric %}<th>rubric (0–100)</th>{% endif %}
<th>similarity to reference (0–100)</th><th>ended its turn</th><th>mean reply tokens</th></tr>
{% for name, s in systems.items() %}<tr><td>{{ name }}</td><td><code>{{ s.model }}</code></td>
{% if results.rubric %}<td class="num">{{ "%.1f"|format(s.rubric) }}</td>{% endif %}
<td class="num">{{ "%.1f"|format(s.similarity) }}</td><td class="num">{{ "%.0f"|format(100 * s.ended_turn_rate) }}%</td>
<td class="num">{{ s.mean_completion_tokens }}</td></tr>{% endfor %}</table>

{% if results.rubric %}<h2>Rubric: {{ results.rubric.name }}</h2>
<table><tr><th>check</th>{% for name in systems %}<th>{{ name }}: passed</th>{% endfor %}</tr>
{% for check in results.rubric.checks %}<tr><td>{{ check.description }}</td>
{% for name, s in systems.items() %}<td class="num">{% if check.id in s.rubric_checks %}{{ "%.0f"|format(100 * s.rubric_checks[check.id]) }}%{% else %}n/a{% endif %}</td>{% endfor %}</tr>{% endfor %}
</table>{% endif %}

{% if loss_curve %}<h2>Training loss</h2><img alt="loss curve" src="data:image/png;base64,{{ loss_curve }}">{% endif %}

<h2>Examples</h2>
{% for example in results.examples %}<div class="example"><div class="meta">#{{ loop.index }}</div>
<div class="cols"><div><b>prompt</b>{% for m in example.prompt %}{% if m.role != 'system' %}<pre><i>{{ m.role }}:</i> {{ m.content }}</pre>{% endif %}{% endfor %}
<b>reference</b><pre>{{ example.reference }}</pre></div>
{% for name in systems %}{% set o = example.outputs[name] %}<div><b>{{ name }}</b>
<span class="meta">{% if results.rubric %}rubric {{ "%.0f"|format(o.rubric) }} · {% endif %}similarity {{ "%.0f"|format(o.similarity) }} ·
{% if o.finish_reason != 'length' %}<span class="pass">ended turn</span>{% else %}<span class="fail">hit token limit</span>{% endif %}</span>
<pre>{{ o.text }}</pre>{% if o.rubric_checks %}<span class="meta">{% for id, ok in o.rubric_checks.items() %}<span class="{{ 'pass' if ok else 'fail' }}">{{ '✓' if ok else '✗' }} {{ id }}</span> {% endfor %}</span>{% endif %}</div>
{% endfor %}</div></div>{% endfor %}
</body></html>
"""


def verdict_text(results: dict) -> str:
    """One paragraph saying what the numbers mean."""
    systems = results["systems"]
    if "fine-tuned" not in systems:
        s = systems["base"]
        return (f"{s['model']} alone: similarity {s['similarity']:.1f}, ended its turn on "
                f"{100 * s['ended_turn_rate']:.0f}% of prompts.")
    base, tuned = systems["base"], systems["fine-tuned"]
    parts = [f"On {results['examples_count']} held-out examples, the fine-tuned model ({tuned['model']})"]
    if results.get("rubric"):
        delta = tuned["rubric"] - base["rubric"]
        parts.append(f"scores {tuned['rubric']:.1f}/100 on the {results['rubric']['name']} rubric against "
                     f"{base['rubric']:.1f} for the base model ({delta:+.1f} points)")
    parts.append(f"similarity to the reference replies {tuned['similarity']:.1f} vs {base['similarity']:.1f}, "
                 f"and it ended its turn by itself on {100 * tuned['ended_turn_rate']:.0f}% of prompts "
                 f"(base: {100 * base['ended_turn_rate']:.0f}%).")
    return " ".join(parts[:1]) + " " + ", ".join(parts[1:])


def _png_base64(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def score_chart(results: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("rubric", "house-style rubric")] if results.get("rubric") else []
    metrics += [("similarity", "similarity to reference"), ("ended_turn_rate", "ended its turn (%)")]
    systems = results["systems"]
    figure, axis = plt.subplots(figsize=(7, 3.2), dpi=110)
    width = 0.8 / len(systems)
    colours = {"base": "#9e9e9e", "fine-tuned": "#4c72b0"}
    for k, (name, s) in enumerate(systems.items()):
        values = [s[m] * (100 if m == "ended_turn_rate" else 1) for m, _ in metrics]
        bars = axis.bar([i + k * width for i in range(len(metrics))], values, width, label=name,
                        color=colours.get(name, "#4c72b0"))
        axis.bar_label(bars, fmt="%.0f", fontsize=8)
    axis.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(metrics))], [l for _, l in metrics])
    axis.set_ylim(0, 110)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    encoded = _png_base64(figure)
    plt.close(figure)
    return encoded


def write_report(results: dict, path: Path, loss_curve: Path | None = None) -> Path:
    """report.html for `results`, with the run's loss curve (a PNG) embedded when given."""
    curve = base64.b64encode(loss_curve.read_bytes()).decode() if loss_curve and loss_curve.is_file() else None
    environment = Environment(autoescape=select_autoescape(default=True))
    html = environment.from_string(TEMPLATE).render(
        results=results, systems=results["systems"], title=results["model"], verdict=verdict_text(results),
        score_chart=score_chart(results), loss_curve=curve,
    )
    write_text_atomically(path, html)
    return path
