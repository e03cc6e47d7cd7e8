// The playground: one conversation sent to up to three models side by side — a base, fine-tunes, checkpoints —
// each reply streamed as it is generated (chat completions with stream: true, read as server-sent chunks).
// Each model keeps its own replies in its history; the user's turns are shared. The conversation and the
// choices live in this tab's sessionStorage, so a refresh keeps them.
import { ApiError, h, replace, showError } from "/static/app.js";
import { listModels } from "/static/models.js";

const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
const selects = [...document.querySelectorAll(".model-choice")];
const columns = document.getElementById("columns");
const status = document.getElementById("chat-message");
const saved = JSON.parse(sessionStorage.getItem("tunelab.playground") || "null");
let state = saved || { turns: [] }; // turns: [{user, replies: {model: text}}]
let stopping = null;

function chosen() {
  return [...new Set(selects.map((select) => select.value).filter(Boolean))];
}

function save() {
  state.models = chosen();
  state.system = document.getElementById("system").value;
  sessionStorage.setItem("tunelab.playground", JSON.stringify(state));
}

function column(model) {
  return h("section", { class: "card", "data-model": model, "aria-label": `Conversation with ${model}` },
    h("h2", {}, h("code", {}, model)),
    h("ol", { class: "events transcript", "aria-live": "polite" }, state.turns.map((turn, index) => [
      h("li", {}, h("strong", {}, "You: "), turn.user),
      h("li", { class: "reply", "data-turn": index }, h("strong", {}, "Reply: "),
        h("span", { class: "reply-text" }, (turn.replies[model] || ""))),
    ])));
}

function draw() {
  replace(columns, chosen().map(column));
}

function history(model, upTo) {
  const messages = [];
  const system = document.getElementById("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  state.turns.slice(0, upTo).forEach((turn) => {
    messages.push({ role: "user", content: turn.user });
    if (turn.replies[model] !== undefined) messages.push({ role: "assistant", content: turn.replies[model] });
  });
  messages.push({ role: "user", content: state.turns[upTo].user });
  return messages;
}

// One model's reply to the latest turn, streamed into its column.
async function streamReply(model, index, signal) {
  const node = columns.querySelector(`section[data-model="${CSS.escape(model)}"] li[data-turn="${index}"] .reply-text`);
  const response = await fetch("/v1/chat/completions", {
    method: "POST", signal, credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken },
    body: JSON.stringify({
      model, messages: history(model, index), stream: true,
      temperature: Number(document.getElementById("temperature").value),
      max_tokens: Number(document.getElementById("max-tokens").value),
    }),
  });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let chunks = 0;
  state.turns[index].replies[model] = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        const text = (chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content) || "";
        if (!text) continue;
        state.turns[index].replies[model] += text;
        node.textContent = state.turns[index].replies[model];
        chunks += 1;
        node.closest("li").dataset.chunks = String(chunks);
      }
    }
  }
  node.closest("li").dataset.done = "true";
}

document.getElementById("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = document.getElementById("message").value.trim();
  const models = chosen();
  if (!text || !models.length) { showError(status, new Error("Choose a model and write a message.")); return; }
  state.turns.push({ user: text, replies: {} });
  const index = state.turns.length - 1;
  document.getElementById("message").value = "";
  draw();
  stopping = new AbortController();
  document.getElementById("send").disabled = true;
  document.getElementById("stop").disabled = false;
  status.textContent = `Generating ${models.length} repl${models.length > 1 ? "ies" : "y"}…`;
  const results = await Promise.allSettled(models.map((model) => streamReply(model, index, stopping.signal)));
  const failed = results.map((result, i) => [models[i], result]).filter(([, result]) => result.status === "rejected");
  document.getElementById("send").disabled = false;
  document.getElementById("stop").disabled = true;
  save();
  if (failed.length) showError(status, new Error(failed.map(([model, result]) => `${model}: ${result.reason.message}`).join("; ")));
  else status.textContent = "Done.";
});
document.getElementById("stop").addEventListener("click", () => stopping && stopping.abort());
document.getElementById("clear").addEventListener("click", () => { state.turns = []; save(); draw(); });
for (const select of selects) select.addEventListener("change", () => { save(); draw(); });

async function load() {
  const models = await listModels();
  const wanted = new URLSearchParams(location.search).get("models");
  const picks = wanted ? wanted.split(",").filter(Boolean) : (state.models || []);
  const names = [...new Set([...models.map((model) => model.id), ...picks])];
  selects.forEach((select, n) => {
    replace(select, n ? h("option", { value: "" }, "None") : null, names.map((name) => h("option", { value: name }, name)));
    select.value = picks[n] || (n ? "" : names[0]);
  });
  document.getElementById("system").value = state.system || "";
  draw();
}

load().catch((error) => showError(status, error));
