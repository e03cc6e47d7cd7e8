// The jobs list: every job of the project, newest first, kept current by the project's event stream (each
// new event names a job; that job is fetched again). The status filter lives in the URL, so a refresh keeps it.
import { api, duration, follow, h, jobDuration, replace, showError, statusBadge, when } from "/static/app.js";

const body = document.querySelector("#jobs tbody");
const filter = document.getElementById("status-filter");
const empty = document.getElementById("jobs-empty");
const jobs = new Map();

filter.value = new URLSearchParams(location.search).get("status") || "";
filter.addEventListener("change", () => {
  const url = new URL(location.href);
  if (filter.value) url.searchParams.set("status", filter.value); else url.searchParams.delete("status");
  history.replaceState(null, "", url);
  draw();
});

function row(job) {
  return h("tr", { "data-job": job.id },
    h("td", {}, h("a", { href: `/jobs/${job.id}` }, job.id)),
    h("td", {}, statusBadge(job.status)),
    h("td", {}, job.model),
    h("td", {}, job.suffix || "—"),
    h("td", {}, when(job.created_at)),
    h("td", { class: "number" }, duration(jobDuration(job))),
    h("td", { class: "number" }, job.trained_tokens === null ? "—" : job.trained_tokens.toLocaleString()));
}

function draw() {
  const shown = [...jobs.values()]
    .filter((job) => !filter.value || job.status === filter.value)
    .sort((a, b) => b.created_at - a.created_at || (b.id < a.id ? -1 : 1));
  replace(body, shown.map(row));
  empty.hidden = jobs.size > 0;
}

async function load() {
  let after = null;
  jobs.clear();
  do {
    const page = await api(`/fine_tuning/jobs?limit=100${after ? `&after=${after}` : ""}`);
    page.data.forEach((job) => jobs.set(job.id, job));
    after = page.has_more ? page.data[page.data.length - 1].id : null;
  } while (after);
  draw();
}

// One job fetched again; its row alone is replaced (keyboard focus elsewhere in the table stays where it is).
async function refresh(jobId) {
  try {
    const job = await api(`/fine_tuning/jobs/${jobId}`);
    const known = jobs.has(jobId);
    jobs.set(jobId, job);
    const shownRow = body.querySelector(`tr[data-job="${CSS.escape(jobId)}"]`);
    if (known && shownRow && (!filter.value || job.status === filter.value)) shownRow.replaceWith(row(job));
    else draw();
  } catch (error) {
    if (error.status === 404) { jobs.delete(jobId); draw(); }
  }
}

// The stream first, then the list once the stream says where it starts: a job that changes in between is
// fetched twice rather than missed.
let loaded = null;
function start() {
  loaded = load().then(() => {
    // Durations of unfinished jobs grow without events.
    setInterval(() => body.querySelectorAll("tr").forEach((tr) => {
      tr.children[5].textContent = duration(jobDuration(jobs.get(tr.dataset.job)));
    }), 30000);
  }).catch((error) => showError(document.getElementById("live"), error));
}
follow("/fine_tuning/jobs/events/stream", {
  ready: () => { if (!loaded) start(); },
  job_event: (event) => refresh(event.job_id),
}, document.getElementById("live"));
