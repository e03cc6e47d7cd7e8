// The models: fine-tunes (chat with, export, evaluate, delete) and base models (chat with).
import { api, h, replace, showError, when } from "/static/app.js";
import { listModels } from "/static/models.js";

const message = document.getElementById("models-message");
const link = (href, text, label) => h("a", { class: "button secondary", href, "aria-label": label }, text);

async function load() {
  const models = await listModels();
  const fineTunes = models.filter((model) => model.owned_by === "user");
  const bases = models.filter((model) => model.owned_by !== "user");
  document.getElementById("fine-tunes-empty").hidden = fineTunes.length > 0;
  replace(document.querySelector("#fine-tunes tbody"), fineTunes.map((model) => {
    const name = encodeURIComponent(model.id);
    return h("tr", { "data-model": model.id },
      h("td", {}, h("code", {}, model.id)),
      h("td", {}, model.base_model || "—"),
      h("td", {}, when(model.created)),
      h("td", { class: "row" },
        link(`/playground?models=${name}`, "Chat", `Chat with ${model.id}`),
        link(`/evaluations?model=${name}`, "Evaluate", `Evaluate ${model.id}`),
        link(`/exports?model=${name}`, "Export", `Export ${model.id}`),
        h("button", { type: "button", class: "danger", "aria-label": `Delete ${model.id}`, onclick: () => remove(model.id) }, "Delete")));
  }));
  replace(document.querySelector("#bases tbody"), bases.map((model) => h("tr", {},
    h("td", {}, h("code", {}, model.id)),
    h("td", {}, model.base_model || model.id),
    h("td", {}, link(`/playground?models=${encodeURIComponent(model.id)}`, "Chat", `Chat with ${model.id}`)))));
}

async function remove(name) {
  if (!confirm(`Delete ${name}? It stops being served; its job and run stay.`)) return;
  try {
    await api(`/models/${encodeURIComponent(name)}`, { method: "DELETE" });
    message.textContent = `Deleted ${name}.`;
    await load();
  } catch (error) {
    showError(message, error);
  }
}

load().catch((error) => showError(message, error));
