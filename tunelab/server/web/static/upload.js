// Choosing a local file: it is checked (nothing stored) and its report shown; the upload button stores it
// only when the check found no errors.
import { api, h, replace, showError } from "/static/app.js";
import { errorsOf, renderReport } from "/static/report.js";

export function uploader({ input, button, reportNode, model = () => "default", epochs = () => null, uploaded }) {
  let checkedFile = null;
  async function check() {
    button.disabled = true;
    checkedFile = null;
    const file = input.files[0];
    if (!file) { replace(reportNode); return; }
    replace(reportNode, h("p", { role: "status" }, `Checking ${file.name}…`));
    const form = new FormData();
    form.append("file", file);
    form.append("model", model());
    try {
      const report = await api("/tunelab/data/check", { method: "POST", form });
      replace(reportNode, renderReport(report, epochs()));
      if (!errorsOf(report).length) { checkedFile = file; button.disabled = false; }
    } catch (error) {
      showError(reportNode, error);
    }
  }
  input.addEventListener("change", check);
  button.addEventListener("click", async () => {
    if (!checkedFile) return;
    button.disabled = true;
    const form = new FormData();
    form.append("file", checkedFile);
    form.append("purpose", "fine-tune");
    try {
      const stored = await api("/files", { method: "POST", form });
      reportNode.append(h("p", { role: "status" }, `Uploaded as ${stored.id}.`));
      input.value = "";
      checkedFile = null;
      uploaded(stored);
    } catch (error) {
      showError(reportNode, error);
    }
  });
  return { recheck: check };
}
