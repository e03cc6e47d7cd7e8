// The files list, with an upload that checks first, and a delete per file.
import { api, h, replace, showError, when } from "/static/app.js";
import { uploader } from "/static/upload.js";

const body = document.querySelector("#files tbody");
const message = document.getElementById("files-message");

function size(bytes) {
  return bytes < 1024 ? `${bytes} B` : bytes < 1048576 ? `${(bytes / 1024).toFixed(1)} KB` : `${(bytes / 1048576).toFixed(1)} MB`;
}

async function load() {
  const list = await api("/files?limit=1000");
  replace(body, list.data.map((file) => h("tr", { "data-file": file.id },
    h("td", {}, h("a", { href: `/files/${file.id}` }, file.id)),
    h("td", {}, file.filename),
    h("td", {}, file.purpose),
    h("td", { class: "number" }, size(file.bytes)),
    h("td", {}, when(file.created_at)),
    h("td", {}, h("button", { type: "button", class: "danger", "aria-label": `Delete ${file.filename} (${file.id})`,
      onclick: () => remove(file) }, "Delete")))));
  if (!list.data.length) message.textContent = "No files yet.";
}

async function remove(file) {
  if (!confirm(`Delete ${file.filename}? Jobs that used it keep their runs.`)) return;
  try {
    await api(`/files/${file.id}`, { method: "DELETE" });
    message.textContent = `Deleted ${file.filename}.`;
    await load();
  } catch (error) {
    showError(message, error);
  }
}

uploader({
  input: document.getElementById("upload-file"), button: document.getElementById("upload"),
  reportNode: document.getElementById("upload-report"), uploaded: () => load(),
});
load().catch((error) => showError(message, error));
