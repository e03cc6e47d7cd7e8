// Creating a job: choose or upload the data (checked first), the base model and method, the settings with
// their defaults shown; the job is created with the same request an OpenAI client sends.
import { api, h, replace, showError } from "/static/app.js";
import { renderReport, setEpochs } from "/static/report.js";
import { fillBaseModels } from "/static/models.js";
import { uploader } from "/static/upload.js";

const training = document.getElementById("training-file");
const validation = document.getElementById("validation-file");
const model = document.getElementById("model");
const report = document.getElementById("data-report");
const message = document.getElementById("create-message");
const epochsField = document.getElementById("setting-n_epochs");

// The epochs asked for, when a whole number: the report's time and cost follow them.
function epochsWanted() {
  const value = Number(epochsField.value.trim());
  return Number.isInteger(value) && value > 0 ? value : null;
}
epochsField.addEventListener("input", () => setEpochs(report, epochsWanted()));

async function fillFiles(selected) {
  const files = (await api("/files?purpose=fine-tune&limit=1000")).data;
  const options = (first) => [first, ...files.map((file) => h("option", { value: file.id }, `${file.filename} (${file.id})`))];
  const keepValidation = validation.value;
  replace(training, options(h("option", { value: "" }, "Choose an uploaded file…")));
  replace(validation, options(h("option", { value: "" }, "None")));
  training.value = selected || "";
  validation.value = keepValidation;
}

async function checkChosen() {
  if (!training.value) { replace(report); return; }
  replace(report, h("p", { role: "status" }, "Checking…"));
  try {
    replace(report, renderReport(await api(`/files/${training.value}/check?model=${encodeURIComponent(model.value)}`), epochsWanted()));
  } catch (error) {
    showError(report, error);
  }
}

const upload = uploader({
  input: document.getElementById("upload-file"), button: document.getElementById("upload"), reportNode: report,
  model: () => model.value, epochs: epochsWanted, uploaded: async (file) => { await fillFiles(file.id); },
});
training.addEventListener("change", checkChosen);
model.addEventListener("change", () => (document.getElementById("upload-file").files.length ? upload.recheck() : checkChosen()));

function settingValue(text) {
  if (text === "auto") return text;
  if (text !== "" && !Number.isNaN(Number(text))) return Number(text);
  return text;
}

document.getElementById("new-job").addEventListener("submit", async (event) => {
  event.preventDefault();
  message.textContent = "";
  if (!training.value) { showError(message, new Error("Choose or upload a training file first.")); training.focus(); return; }
  const request = { model: model.value, training_file: training.value };
  if (validation.value) request.validation_file = validation.value;
  const suffix = document.getElementById("suffix").value.trim();
  if (suffix) request.suffix = suffix;
  const seed = document.getElementById("seed").value.trim();
  if (seed) request.seed = Number(seed);
  const hyperparameters = {};
  const extension = {};
  for (const field of document.querySelectorAll("[data-setting]")) {
    const value = field.value.trim();
    if (value === "") continue;
    (field.dataset.openai === "true" ? hyperparameters : extension)[field.dataset.setting] = settingValue(value);
  }
  request.method = { type: "supervised", supervised: { hyperparameters } };
  if (Object.keys(extension).length) request.tunelab = extension;
  document.getElementById("create").disabled = true;
  try {
    const job = await api("/fine_tuning/jobs", { method: "POST", json: request });
    location.assign(`/jobs/${job.id}`);
  } catch (error) {
    document.getElementById("create").disabled = false;
    showError(message, new Error(error.param ? `${error.param}: ${error.message}` : error.message));
    const field = error.param && document.querySelector(`[data-setting="${CSS.escape(error.param.split(".").pop())}"]`);
    if (field) field.focus();
  }
});

Promise.all([fillFiles(new URLSearchParams(location.search).get("file")), fillBaseModels(model)])
  .then(checkChosen)
  .catch((error) => showError(message, error));
