// Exports: start one (a server task running `tunelab export`), follow its progress, download the result.
import { api, h, replace, showError } from "/static/app.js";
import { listModels } from "/static/models.js";
import { keepListed, taskStatus } from "/static/tasks.js";

const message = document.getElementById("start-message");

function draw(list) {
  replace(document.querySelector("#exports tbody"), list.map((task) => h("tr", { "data-export": task.id },
    h("td", {}, task.id),
    h("td", {}, h("code", {}, task.model)),
    h("td", {}, task.result ? `${task.format} (${task.result.number_format})` : task.format),
    h("td", {}, taskStatus(task), task.result ? h("p", { class: "muted" }, task.result.checks.join("; ")) : null),
    h("td", {}, task.status === "succeeded"
      ? h("a", { href: `/v1/tunelab/exports/${task.id}/content`, download: task.result.download_name },
        `${task.result.download_name} (${(task.result.bytes / 1048576).toFixed(1)} MB)`) : "—"))));
}

const read = keepListed("/tunelab/exports?limit=100", draw);

document.getElementById("start").addEventListener("submit", async (event) => {
  event.preventDefault();
  message.textContent = "";
  const request = { model: document.getElementById("export-model").value, format: document.getElementById("export-format").value };
  const dtype = document.getElementById("export-dtype").value;
  if (dtype) request.dtype = dtype;
  try {
    const task = await api("/tunelab/exports", { method: "POST", json: request });
    message.textContent = `Started ${task.id}.`;
    await read();
  } catch (error) {
    showError(message, new Error(error.param ? `${error.param}: ${error.message}` : error.message));
  }
});

async function load() {
  const fineTunes = (await listModels()).filter((model) => model.owned_by === "user");
  const select = document.getElementById("export-model");
  replace(select, fineTunes.map((model) => h("option", { value: model.id }, model.id)));
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted) select.value = wanted;
  if (!fineTunes.length) message.textContent = "No fine-tuned model yet: a job that succeeds adds one.";
  await read();
}

load().catch((error) => showError(message, error));
