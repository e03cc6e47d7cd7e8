// The models a server offers, for the pages' model choices.
import { api, h, replace } from "/static/app.js";

export async function listModels() {
  return (await api("/models")).data;
}

// Base models (a server's own names and aliases) as the options of a <select>; the OpenAI-style alias first.
export async function fillBaseModels(select, models) {
  const bases = (models || (await listModels())).filter((model) => model.owned_by !== "user");
  const ordered = [...bases.filter((m) => m.base_model), ...bases.filter((m) => !m.base_model)];
  replace(select, ordered.map((model) => h("option", { value: model.id },
    model.base_model ? `${model.id} → ${model.base_model}` : model.id)));
  return ordered;
}
