// Evaluations: start one from the page (a server task running `tunelab eval`), follow its progress, open each
// report, and compare the scores of several evaluations on one table. The comparison's selection is in the
// URL (?compare=a,b), so a refresh keeps it.
import { api, h, replace, showError } from "/static/app.js";
import { listModels } from "/static/models.js";
import { keepListed, taskStatus } from "/static/tasks.js";

const message = document.getElementById("start-message");
const body = document.querySelector("#evaluations tbody");
const compareButton = document.getElementById("compare");
let evaluations = [];
const selected = new Set((new URLSearchParams(location.search).get("compare") || "").split(",").filter(Boolean));

function draw(list) {
  evaluations = list;
  replace(body, list.map((task) => h("tr", { "data-evaluation": task.id },
    h("td", {}, h("input", { type: "checkbox", "aria-label": `Compare ${task.id}`, checked: selected.has(task.id),
      disabled: task.status !== "succeeded", onchange: (event) => toggle(task.id, event.target.checked) })),
    h("td", {}, task.id),
    h("td", {}, h("code", {}, task.model)),
    h("td", {}, task.filename),
    h("td", {}, taskStatus(task)),
    h("td", {}, task.result ? task.result.verdict : "—"),
    h("td", {}, task.status === "succeeded"
      ? h("a", { href: `/v1/tunelab/evaluations/${task.id}/report`, target: "_blank", rel: "noopener" }, "Open report") : ""))));
  compareButton.disabled = selected.size < 2;
  if (selected.size >= 2) drawComparison();
}

function toggle(id, on) {
  if (on) selected.add(id); else selected.delete(id);
  compareButton.disabled = selected.size < 2;
}

// A mean and its 95% interval as the report writes them: fractions out of 100.
export function estimate(score, scorer) {
  if (!score) return "—";
  const [low, high] = score.ci95;
  return scorer.fraction
    ? `${(100 * score.mean).toFixed(1)} (${(100 * low).toFixed(0)}–${(100 * high).toFixed(0)})`
    : `${score.mean.toFixed(1)} (${low.toFixed(1)}–${high.toFixed(1)})`;
}

function drawComparison() {
  const chosen = evaluations.filter((task) => selected.has(task.id) && task.result);
  // Each scorer once, as the report names it (an evaluation recorded before scorers were described: its names).
  const scorers = new Map();
  for (const task of chosen) {
    for (const scorer of task.result.scorers) {
      const described = typeof scorer === "string" ? { name: scorer, label: scorer, fraction: false } : scorer;
      if (!scorers.has(described.name)) scorers.set(described.name, described);
    }
  }
  const rows = chosen.flatMap((task) => Object.entries(task.result.systems).map(([system, facts]) => ({ task, system, facts })));
  replace(document.getElementById("comparison-table"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Evaluation"), h("th", { scope: "col" }, "System"),
      h("th", { scope: "col" }, "Model"),
      [...scorers.values()].map((scorer) => h("th", { scope: "col", class: "number" }, scorer.label)))),
    h("tbody", {}, rows.map(({ task, system, facts }) => h("tr", { "data-system": system },
      h("td", {}, task.id), h("td", {}, system.replace("_", " ")), h("td", {}, h("code", {}, facts.model || task.model)),
      [...scorers.values()].map((scorer) => h("td", { class: "number" }, estimate(facts.scores[scorer.name], scorer)))))));
  document.getElementById("comparison").hidden = false;
}

compareButton.addEventListener("click", () => {
  const url = new URL(location.href);
  url.searchParams.set("compare", [...selected].join(","));
  history.replaceState(null, "", url);
  drawComparison();
});

const read = keepListed("/tunelab/evaluations?limit=100", draw);

document.getElementById("start").addEventListener("submit", async (event) => {
  event.preventDefault();
  message.textContent = "";
  const request = { model: document.getElementById("eval-model").value, file: document.getElementById("eval-file").value,
    forgetting: document.getElementById("eval-forgetting").checked ? "auto" : "off" };
  const limit = document.getElementById("eval-limit").value.trim();
  const tokens = document.getElementById("eval-tokens").value.trim();
  if (limit) request.limit = Number(limit);
  if (tokens) request.max_new_tokens = Number(tokens);
  try {
    const task = await api("/tunelab/evaluations", { method: "POST", json: request });
    message.textContent = `Started ${task.id}.`;
    await read();
  } catch (error) {
    showError(message, new Error(error.param ? `${error.param}: ${error.message}` : error.message));
  }
});

async function load() {
  const [models, files] = await Promise.all([listModels(), api("/files?purpose=fine-tune&limit=1000")]);
  const wanted = new URLSearchParams(location.search).get("model");
  const modelSelect = document.getElementById("eval-model");
  const ordered = [...models.filter((m) => m.owned_by === "user"), ...models.filter((m) => m.owned_by !== "user")];
  replace(modelSelect, ordered.map((model) => h("option", { value: model.id }, model.id)));
  if (wanted) modelSelect.value = wanted;
  replace(document.getElementById("eval-file"), files.data.map((file) => h("option", { value: file.id }, `${file.filename} (${file.id})`)));
  await read();
}

load().catch((error) => showError(message, error));
