// A job's page: its status and timeline, live charts of loss, token accuracy and learning rate, its settings,
// checkpoints and events, and the buttons that cancel, pause and resume it. Everything comes from the job's
// event stream, which replays the whole job on opening (so a refresh or a reopened page shows the same
// curves) and what was missed after a dropped connection.
import { api, duration, follow, h, jobDuration, number, replace, showError, statusBadge, when } from "/static/app.js";

const jobId = document.getElementById("job-id").textContent;
const live = document.getElementById("live");
const message = document.getElementById("action-message");
const steps = new Map(); // step → its metrics (a resumed job trains some steps again: the last one counts)
const events = [];
let job = null;
let totalSteps = null;
let memoryPlan = null; // the run's own "Memory plan: …" event: what it chose for this device

// --- charts ---------------------------------------------------------------------------------------------
const charts = {
  loss: chart("loss-chart", "Loss", [
    { label: "training loss", stroke: "#9dbbe0", width: 1 },
    { label: "smoothed", stroke: "#0b5cad", width: 2 },
    { label: "validation loss", stroke: "#c2410c", width: 2, spanGaps: true, points: { show: true, size: 6 } },
  ]),
  accuracy: chart("accuracy-chart", "Token accuracy", [
    { label: "training", stroke: "#0b5cad", width: 2 },
    { label: "validation", stroke: "#c2410c", width: 2, spanGaps: true, points: { show: true, size: 6 } },
  ]),
  rate: chart("rate-chart", "Learning rate", [{ label: "learning rate", stroke: "#1a6b2f", width: 2 }],
    (values) => values.map((v) => (v === 0 ? "0" : v.toExponential(1)))),
};

function chart(id, title, series, tickLabels) {
  const box = document.getElementById(id);
  const options = {
    title, width: Math.max(280, box.clientWidth), height: 220,
    scales: { x: { time: false } },
    legend: { live: false }, // names only: the captions say the latest values, the events every step's
    axes: [{ label: "step" }, tickLabels ? { size: 60, values: (plot, values) => tickLabels(values) } : {}],
    series: [{ label: "step" }, ...series],
  };
  const plot = new uPlot(options, [[], ...series.map(() => [])], box);
  new ResizeObserver(() => plot.setSize({ width: Math.max(280, box.clientWidth), height: 220 })).observe(box);
  return { box, plot };
}

// A step's loss is noisy at small batches: the bold line is its exponential moving average, debiased at the
// start as TensorBoard's smoothing is (weight 0.8).
const SMOOTHING = 0.8;
function smoothed(values) {
  let average = 0;
  let weight = 0;
  return values.map((value) => {
    if (value === null || !Number.isFinite(value)) return null;
    average = SMOOTHING * average + (1 - SMOOTHING) * value;
    weight = SMOOTHING * weight + (1 - SMOOTHING);
    return average / weight;
  });
}

let drawPending = false;
function drawCharts() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    const rows = [...steps.values()].sort((a, b) => a.step - b.step);
    const x = rows.map((r) => r.step);
    const pick = (name) => rows.map((r) => (r[name] === undefined ? null : r[name]));
    charts.loss.plot.setData([x, pick("train_loss"), smoothed(pick("train_loss")), pick("valid_loss")]);
    charts.accuracy.plot.setData([x, pick("train_mean_token_accuracy"), pick("valid_mean_token_accuracy")]);
    charts.rate.plot.setData([x, pick("learning_rate")]);
    for (const { box } of Object.values(charts)) box.dataset.points = String(rows.length);
    const last = rows[rows.length - 1];
    if (!last) return;
    const validated = rows.filter((r) => r.valid_loss !== undefined && r.valid_loss !== null);
    const lastValid = validated[validated.length - 1];
    const of = totalSteps ? ` of ${totalSteps}` : "";
    document.getElementById("loss-caption").textContent =
      `Loss by step, ${rows.length} steps${of}: training loss ${number(last.train_loss)} at step ${last.step}` +
      (lastValid ? `, validation loss ${number(lastValid.valid_loss)} at step ${lastValid.step}.` : ".");
    document.getElementById("accuracy-caption").textContent =
      `Token accuracy by step: training ${(100 * last.train_mean_token_accuracy).toFixed(1)}% at step ${last.step}` +
      (lastValid ? `, validation ${(100 * lastValid.valid_mean_token_accuracy).toFixed(1)}%.` : ".");
    document.getElementById("rate-caption").textContent = last.learning_rate === undefined
      ? "Learning rate by step: not recorded by this run."
      : `Learning rate by step: ${Number(last.learning_rate).toExponential(2)} at step ${last.step}.`;
    document.getElementById("progress-text").textContent = `Step ${last.step}${of}`;
  });
}

// --- the job ----------------------------------------------------------------------------------------------
function fact(term, ...value) {
  return [h("dt", {}, term), h("dd", {}, ...value)];
}

let validationShown = true;
function drawJob() {
  if (validationShown && !job.validation_file) { // nothing to draw: its legend entry is shown struck through
    validationShown = false;
    charts.loss.plot.setSeries(3, { show: false });
    charts.accuracy.plot.setSeries(2, { show: false });
  }
  replace(document.getElementById("job-status"), statusBadge(job.status));
  document.getElementById("cancel").disabled = ["succeeded", "failed", "cancelled"].includes(job.status);
  document.getElementById("pause").disabled = !["queued", "running"].includes(job.status);
  document.getElementById("resume").disabled = job.status !== "paused";
  const file = (id) => (id ? h("a", { href: `/files/${id}` }, id) : "—");
  replace(document.getElementById("overview"),
    fact("Base model", job.model),
    fact("Fine-tuned model", job.fine_tuned_model
      ? [h("code", {}, job.fine_tuned_model), " ",
        h("a", { href: `/playground?models=${encodeURIComponent(`${job.fine_tuned_model},${job.model}`)}` }, "Chat with it"), " · ",
        h("a", { href: `/evaluations?model=${encodeURIComponent(job.fine_tuned_model)}` }, "Evaluate"), " · ",
        h("a", { href: `/exports?model=${encodeURIComponent(job.fine_tuned_model)}` }, "Export")]
      : "— (named when the job succeeds)"),
    fact("Suffix", job.suffix || "—"),
    fact("Created", when(job.created_at)),
    fact("Finished", when(job.finished_at)),
    fact("Duration", duration(jobDuration(job))),
    fact("Estimated finish", job.estimated_finish ? when(job.estimated_finish) : "—"),
    fact("Trained tokens", job.trained_tokens === null ? "—" : job.trained_tokens.toLocaleString()),
    fact("Training file", file(job.training_file)),
    fact("Validation file", file(job.validation_file)),
    job.error && job.error.message ? fact("Error", h("span", { class: "error" }, `${job.error.message} (${job.error.code})`)) : null);
  const method = job.method && job.method.type ? job.method.type : "supervised";
  const hyper = job.hyperparameters || {};
  const extension = job.tunelab || {};
  replace(document.getElementById("settings"),
    fact("Method", method),
    Object.entries(hyper).map(([name, value]) => fact(name, String(value))),
    fact("Seed", String(job.seed)),
    fact("Memory plan", memoryPlan || "— (written when the run loads the model)"),
    fact("Preset", extension.preset || "— (tunelab's defaults)"),
    Object.entries(extension).filter(([name]) => name !== "preset").map(([name, value]) => fact(name, String(value))));
}

function drawEvents() {
  const shown = [...events].sort((a, b) => b.created_at - a.created_at || b.order - a.order);
  replace(document.getElementById("events"), shown.slice(0, 500).map((event) =>
    h("li", { class: `level-${event.level}` }, h("time", {}, when(event.created_at)), " — ", event.message)));
  replace(document.getElementById("timeline"), shown.filter((e) => e.data && e.data.by === "server").reverse()
    .map((event) => h("li", {}, h("strong", {}, when(event.created_at)), " ", event.message)));
}

async function loadCheckpoints() {
  const list = await api(`/fine_tuning/jobs/${jobId}/checkpoints?limit=100`);
  document.getElementById("checkpoints-empty").hidden = list.data.length > 0;
  replace(document.querySelector("#checkpoints tbody"), list.data.map((checkpoint) => {
    const name = checkpoint.fine_tuned_model_checkpoint;
    return h("tr", { "data-step": checkpoint.step_number },
      h("td", { class: "number" }, checkpoint.step_number),
      h("td", { class: "number" }, number(checkpoint.metrics.train_loss)),
      h("td", { class: "number" }, number(checkpoint.metrics.valid_loss)),
      h("td", {}, h("code", {}, name), " ",
        h("a", { href: `/playground?models=${encodeURIComponent([name, job ? job.model : ""].filter(Boolean).join(","))}`,
          "aria-label": `Chat with the checkpoint at step ${checkpoint.step_number}, beside the base model` }, "Chat with")));
  }));
}

let checkpointsDue = null;
function checkpointsSoon() {
  if (checkpointsDue) return;
  checkpointsDue = setTimeout(() => { checkpointsDue = null; loadCheckpoints().catch(() => {}); }, 1500);
}

let order = 0;
function onEvent(event) {
  event.order = order++;
  events.push(event);
  if (event.type === "metrics" && event.data && event.data.step !== undefined) {
    if (event.data.total_steps) totalSteps = event.data.total_steps;
    steps.set(event.data.step, event.data);
    drawCharts();
  }
  if (/^Checkpoint saved|completed/.test(event.message)) checkpointsSoon(); // not per step: 20 open pages add up
  if (event.message.startsWith("Memory plan: ")) {
    memoryPlan = event.message.slice("Memory plan: ".length);
    if (job) drawJob();
  }
  drawEventsSoon();
}

let eventsPending = false;
function drawEventsSoon() {
  if (eventsPending) return;
  eventsPending = true;
  setTimeout(() => { eventsPending = false; drawEvents(); }, 250);
}

async function act(action) {
  message.textContent = "";
  try {
    job = await api(`/fine_tuning/jobs/${jobId}/${action}`, { method: "POST" });
    drawJob();
    message.textContent = { cancel: "Cancelled.", pause: "Paused: resume continues from the last checkpoint.",
      resume: "Resumed: the job is queued and continues from its last checkpoint." }[action];
  } catch (error) {
    showError(message, error);
  }
}
for (const action of ["cancel", "pause", "resume"]) {
  document.getElementById(action).addEventListener("click", () => act(action));
}

// A running job's duration grows and its estimated finish moves without a status change: the job is read
// again now and then (one small request per page every 20 s).
setInterval(async () => {
  if (!job || !["running", "queued", "validating_files"].includes(job.status) || document.hidden) return;
  try { job = await api(`/fine_tuning/jobs/${jobId}`); drawJob(); } catch { /* the stream reports a lost server */ }
}, 20000);

follow(`/fine_tuning/jobs/${jobId}/events/stream`, {
  job: (data) => {
    const first = job === null;
    job = data;
    drawJob();
    if (first) loadCheckpoints().catch((error) => showError(message, error)); // its links name the base model
    else checkpointsSoon();
  },
  job_event: onEvent,
}, live);
