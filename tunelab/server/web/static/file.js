// One file: what it is, the data toolkit's report on it, and its examples with the trained text marked
// (as `tunelab data render` shows them).
import { api, h, replace, showError, when } from "/static/app.js";
import { renderReport } from "/static/report.js";
import { fillBaseModels } from "/static/models.js";

const fileId = document.getElementById("file-id").textContent;
const modelSelect = document.getElementById("model");
const preview = document.getElementById("preview");
const more = document.getElementById("more");
let nextLine = 1;

function example(view) {
  return h("article", { class: "example", "aria-label": `Line ${view.line}` },
    h("p", { class: "muted" }, `Line ${view.line} · ${view.tokens} tokens, ${view.trained_tokens} trained`),
    h("div", {}, view.runs.map((run) => (run.trained ? h("mark", {}, run.text) : h("span", { class: "context" }, run.text)))));
}

async function showPreview(reset) {
  if (reset) { nextLine = 1; replace(preview); }
  try {
    const page = await api(`/files/${fileId}/preview?model=${encodeURIComponent(modelSelect.value)}&limit=3&line=${nextLine}`);
    page.examples.forEach((view) => preview.append(example(view)));
    if (page.examples.length) nextLine = page.examples[page.examples.length - 1].line + 1;
    more.hidden = !page.has_more;
  } catch (error) {
    showError(preview, error);
  }
}

async function check() {
  const report = document.getElementById("report");
  try {
    replace(report, renderReport(await api(`/files/${fileId}/check?model=${encodeURIComponent(modelSelect.value)}`)));
  } catch (error) {
    showError(report, error);
  }
}

async function load() {
  const file = await api(`/files/${fileId}`);
  replace(document.getElementById("about"),
    h("dt", {}, "Name"), h("dd", {}, file.filename), h("dt", {}, "Purpose"), h("dd", {}, file.purpose),
    h("dt", {}, "Size"), h("dd", {}, `${file.bytes.toLocaleString()} bytes`),
    h("dt", {}, "Uploaded"), h("dd", {}, when(file.created_at)),
    h("dt", {}, "Download"), h("dd", {}, h("a", { href: `/v1/files/${file.id}/content`, download: file.filename }, file.filename)));
  if (file.purpose !== "fine-tune") {
    replace(document.getElementById("report"), h("p", { class: "muted" }, "Only fine-tune files are checked."));
    return;
  }
  await fillBaseModels(modelSelect);
  modelSelect.addEventListener("change", () => { check(); showPreview(true); });
  more.addEventListener("click", () => showPreview(false));
  await Promise.all([check(), showPreview(true)]);
}

load().catch((error) => showError(document.getElementById("report"), error));
