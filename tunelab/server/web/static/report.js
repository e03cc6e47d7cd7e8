// A data check's report (POST /v1/tunelab/data/check, GET /v1/files/{id}/check) as the pages show it: every
// error and warning with its line and field, the token counts, and what training on it would take.
import { duration, h } from "/static/app.js";

function finding(problem) {
  const where = problem.line ? `line ${problem.line}` : "the file";
  return h("li", { "data-line": problem.line },
    h("span", { class: `severity-${problem.severity}` }, problem.severity === "error" ? "Error" : "Warning"),
    ` ${where}${problem.path ? `, ${problem.path}` : ""}: ${problem.message} `,
    h("code", {}, problem.code));
}

export function errorsOf(report) {
  return report.findings.filter((problem) => problem.severity === "error");
}

// What training on it takes, for the epochs asked for (null: the file's auto epochs, as the server counted).
function localEstimate(cost, epochs) {
  const n = epochs || cost.n_epochs;
  return `about ${duration(cost.tokens_per_epoch * n / cost.tokens_per_second)} for ${n} epochs${epochs ? "" : " (auto)"} ` +
    `× ${cost.tokens_per_epoch.toLocaleString()} tokens at ~${Math.round(cost.tokens_per_second)} tokens/s ` +
    `(${cost.throughput_source}; a GPU is far faster)`;
}

function openaiEstimate(cost, epochs) {
  const billed = cost.tokens_per_epoch * (epochs || cost.n_epochs);
  return `≈ $${(billed * cost.usd_per_million_tokens / 1e6).toFixed(2)} for ${billed.toLocaleString()} billed tokens ` +
    `on ${cost.model} (prices as of ${cost.prices_as_of}; tokens counted with the local tokenizer)`;
}

// The estimates of reports shown under `node`, again for another number of epochs.
export function setEpochs(node, epochs) {
  for (const facts of node.querySelectorAll("dl.facts")) {
    const local = facts.querySelector("[data-estimate='local']");
    const openai = facts.querySelector("[data-estimate='openai']");
    if (local && facts.report.cost) local.textContent = localEstimate(facts.report.cost, epochs);
    if (openai && facts.report.openai_cost) openai.textContent = openaiEstimate(facts.report.openai_cost, epochs);
  }
}

export function renderReport(report, epochs = null) {
  const errors = errorsOf(report);
  const warnings = report.findings.filter((problem) => problem.severity === "warning");
  const tokens = report.stats.tokens;
  const cost = report.cost;
  const parts = [
    h("p", { class: errors.length ? "error" : "", role: errors.length ? "alert" : null },
      errors.length
        ? `${report.file}: ${errors.length} error(s) — a job cannot train on this file until they are fixed.`
        : `${report.file}: no errors, ${report.examples} examples${warnings.length ? `, ${warnings.length} warning(s)` : ""}.`),
  ];
  if (report.findings.length) {
    parts.push(h("ul", { class: "findings" }, report.findings.slice(0, 200).map(finding)));
    if (report.findings.length > 200) parts.push(h("p", { class: "muted" }, `…and ${report.findings.length - 200} more.`));
  }
  if (tokens) {
    const facts = h("dl", { class: "facts" },
      h("dt", {}, "Examples"), h("dd", {}, `${report.stats.valid_examples} valid of ${report.examples}`),
      h("dt", {}, "Tokens"), h("dd", {}, `${tokens.total.toLocaleString()} in all, ${tokens.trained.toLocaleString()} trained`),
      h("dt", {}, "Per example"), h("dd", {}, tokens.per_example.count
        ? `median ${tokens.per_example.p50}, longest ${tokens.per_example.max} (cut at ${tokens.limit})` : "—"),
      h("dt", {}, "Counted with"), h("dd", {}, tokens.counted_with),
      cost ? [h("dt", {}, "Training here"), h("dd", { "data-estimate": "local" }, localEstimate(cost, epochs))] : null,
      report.openai_cost ? [h("dt", {}, "At OpenAI"),
        h("dd", { "data-estimate": "openai" }, openaiEstimate(report.openai_cost, epochs))] : null);
    facts.report = report;
    parts.push(facts);
  }
  return parts;
}
