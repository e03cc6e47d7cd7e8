// What the evaluations and exports pages share: a task's status with its progress, and a list that is read
// again while any task is unfinished.
import { api, h, statusBadge } from "/static/app.js";

export function taskStatus(task) {
  const progress = task.progress;
  if (task.status === "running" && progress && progress.total && progress.completed < progress.total) {
    const label = `${task.progress.stage}: ${task.progress.completed} of ${task.progress.total}`;
    return h("span", {}, statusBadge(task.status), " ",
      h("progress", { max: task.progress.total, value: task.progress.completed, "aria-label": label }), " ",
      h("span", { class: "muted" }, label));
  }
  if (task.status === "running" && task.messages && task.messages.length) { // a stage without a count
    return h("span", {}, statusBadge(task.status), " ", h("span", { class: "muted" }, task.messages[task.messages.length - 1]));
  }
  if (task.status === "failed" && task.error) return h("span", {}, statusBadge(task.status), " ", h("span", { class: "error" }, task.error.message));
  return statusBadge(task.status);
}

// Read `path` (a list of tasks) and draw it; again every second while a task in it is unfinished.
export function keepListed(path, draw) {
  let timer = null;
  async function read() {
    const list = await api(path);
    draw(list.data);
    clearTimeout(timer);
    if (list.data.some((task) => task.status === "queued" || task.status === "running")) timer = setTimeout(read, 1000);
  }
  return read;
}
