// "Try a model": one form per serving route, built from GET /v1/tasks.
//
// Key rule: no task is named here. A route's renderer comes from its `ui` hint (the gateway
// reads it from the route's schemas): texts, rows (a row editor from the model's features),
// chat (tokens streamed as they arrive), similarity (cosine of two texts' vectors), or a
// form generated from the request schema. Every answer shows its latency and the same call
// as curl, fetch and the openai SDK.

import { ApiError, call, conn, events } from "./api.js";
import { el, table, variants, resolve } from "./ui.js";
import { snippets } from "./snippets.js";

const $ = (id) => document.getElementById(id);
let routes = []; // [{task, route}]
let models = [];
let current = null; // {task, route, renderer}

export function setTry(tasks, modelList) {
  const previous = $("try-route").value;
  routes = tasks.serving.flatMap((task) => task.routes.map((route) => ({ task, route })));
  models = modelList;
  const select = $("try-route");
  select.replaceChildren(
    ...routes.map(({ task, route }, i) =>
      el("option", { value: String(i) }, `${task.slug}: POST ${route.path}`),
    ),
  );
  const keep = routes.findIndex((_, i) => String(i) === previous);
  select.value = keep >= 0 ? previous : "0";
  pick(false);
}

/** Show route `path` (or the task's first) with model `modelId` selected (from Train/Models). */
export function tryModel(slug, modelId) {
  const index = routes.findIndex(({ task }) => task.slug === slug);
  if (index < 0) return;
  $("try-route").value = String(index);
  pick(true, modelId);
}

export function initTry() {
  $("try-route").addEventListener("change", () => pick(true));
  $("try-model").addEventListener("change", () => pick(false, $("try-model").value));
}

function modelsOf(slug) {
  return models.filter((m) => m.task === slug && m.state !== "failed");
}

function pick(resetResult, modelId) {
  const chosen = routes[Number($("try-route").value)];
  if (!chosen) return;
  const { task, route } = chosen;
  const names = modelsOf(task.slug);
  const select = $("try-model");
  const wanted = modelId || select.value || task.example.model;
  const options = names.map((m) => el("option", { value: m.id }, `${m.name || m.id} (${m.id})`));
  // The example's model name serves its newest version: offer it when the store has it.
  if (task.example.model && names.some((m) => m.name === task.example.model)) {
    options.unshift(el("option", { value: task.example.model }, `${task.example.model} (newest)`));
  }
  if (!options.length) options.push(el("option", { value: "" }, `none in the store (${task.noun})`));
  select.replaceChildren(...options);
  if ([...select.options].some((o) => o.value === wanted)) select.value = wanted;
  $("try-summary").textContent = route.summary;
  if (resetResult) $("try-result").hidden = true;
  const example = route.path === task.routes[0].path ? task.example : {};
  const renderer = RENDERERS[route.ui.kind] || RENDERERS.form;
  current = { task, route, example, renderer };
  const form = $("try-form");
  form.replaceChildren();
  renderer.render(form, current, select.value);
}

function baseBody(ctx) {
  const body = { ...ctx.example, model: $("try-model").value };
  delete body[ctx.route.ui.field];
  return body;
}

function runButton(label = "Run") {
  return el("div", { class: "actions" }, el("button", { type: "submit" }, label));
}

function showResult(ctx, body, answer, ms, status, note) {
  $("try-result").hidden = false;
  $("try-latency").textContent = `${ms.toFixed(0)} ms${note ? ` (${note})` : ""}`;
  $("try-http").textContent = status ? `HTTP ${status}` : "";
  const box = $("try-answer");
  box.replaceChildren();
  if (answer instanceof ApiError) {
    box.append(el("p", { class: "error", role: "alert" }, answer.message));
  } else if (answer instanceof Node) {
    box.append(answer);
  } else {
    box.append(answerView(answer));
  }
  $("try-snippets").replaceChildren(...snippets(conn.url, ctx.route.path, body));
}

/** An answer: the first list of objects as a table, then the raw JSON. */
function answerView(answer) {
  const wrap = el("div");
  const list = Object.values(answer || {}).find(
    (v) => Array.isArray(v) && v.length && typeof v[0] === "object",
  );
  if (list) wrap.append(table(list.slice(0, 50)));
  const raw = JSON.stringify(answer, null, 2);
  wrap.append(
    el("details", { open: !list }, el("summary", {}, "JSON"), el("pre", { class: "json" }, raw)),
  );
  return wrap;
}

async function submit(ctx, body) {
  try {
    const { data, status, ms } = await call("POST", ctx.route.path, body);
    return { data, status, ms };
  } catch (err) {
    return { data: err, status: err.status, ms: 0 };
  }
}

function onSubmit(form, handler) {
  form.onsubmit = async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try {
      await handler();
    } finally {
      if (button) button.disabled = false;
    }
  };
}

// --- renderers ---------------------------------------------------------------------

const texts = {
  render(form, ctx) {
    const field = ctx.route.ui.field;
    const given = ctx.example[field];
    const start = Array.isArray(given) ? given.join("\n") : given || "";
    const area = el("textarea", { id: "try-texts", rows: 4, required: true }, start);
    form.append(el("label", { class: "block" }, `${field}: one per line`, area), runButton());
    onSubmit(form, async () => {
      const lines = area.value.split("\n").map((l) => l.trim()).filter(Boolean);
      const body = { ...baseBody(ctx), [field]: lines };
      const { data, status, ms } = await submit(ctx, body);
      showResult(ctx, body, data, ms, status);
    });
  },
};

function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / (Math.sqrt(na) * Math.sqrt(nb) || 1);
}

const similarity = {
  render(form, ctx) {
    const field = ctx.route.ui.field;
    const given = [].concat(ctx.example[field] || []);
    const a = el("input", { id: "try-text-a", required: true, value: given[0] || "A cat sat on the mat." });
    const b = el("input", { id: "try-text-b", required: true, value: given[1] || "A kitten rested on a rug." });
    form.append(
      el("label", { class: "block" }, "Text A", a),
      el("label", { class: "block" }, "Text B", b),
      runButton("Compare"),
    );
    onSubmit(form, async () => {
      const body = { ...baseBody(ctx), [field]: [a.value, b.value] };
      const { data, status, ms } = await submit(ctx, body);
      if (data instanceof ApiError) return showResult(ctx, body, data, ms, status);
      const [list, key] = ctx.route.ui.vectors.split(".");
      const vectors = data[list].map((item) => item[key]);
      const score = cosine(vectors[0], vectors[1]);
      const view = el(
        "div",
        {},
        el("p", { class: "big", id: "try-cosine" }, `Cosine similarity ${score.toFixed(3)}`),
        el("meter", { min: -1, max: 1, value: score, "aria-label": "cosine similarity" }),
        el("p", { class: "hint" }, `${vectors[0].length} dimensions, computed in this page`),
        answerView({ ...data, [list]: `${data[list].length} vectors` }),
      );
      showResult(ctx, body, view, ms, status);
    });
  },
};

const NUMERIC = new Set(["numeric", "integer"]);

const rows = {
  async render(form, ctx, modelId) {
    const field = ctx.route.ui.field;
    form.append(el("p", { class: "hint" }, "Reading the model's input schema..."));
    let features = [];
    try {
      if (!modelId) throw new ApiError("Pick a model first (none of this task is in the store).");
      const { data } = await call("GET", `/v1/models/${encodeURIComponent(modelId)}`);
      features = data.features || [];
    } catch (err) {
      form.replaceChildren(el("p", { class: "error", role: "alert" }, err.message));
      return;
    }
    const first = (ctx.example[field] || [])[0] || {};
    const body = el("tbody");
    const addRow = (values) => {
      const cells = features.map((f) =>
        el(
          "td",
          {},
          el("input", {
            "aria-label": f.name,
            dataset: { name: f.name, kind: f.kind },
            inputmode: NUMERIC.has(f.kind) ? "decimal" : null,
            value: values[f.name] === null || values[f.name] === undefined ? "" : values[f.name],
          }),
        ),
      );
      const remove = el("button", { type: "button", class: "small", "aria-label": "Remove row" }, "x");
      const tr = el("tr", {}, cells, el("td", {}, remove));
      remove.addEventListener("click", () => tr.remove());
      body.append(tr);
    };
    addRow(first);
    const head = el("tr", {}, features.map((f) => el("th", { scope: "col", title: f.kind }, `${f.name} (${f.kind})`)), el("th", {}, ""));
    form.replaceChildren(
      el("div", { class: "scroll" }, el("table", { class: "editor", id: "row-editor" }, el("thead", {}, head), body)),
      el("div", { class: "actions" },
        el("button", { type: "button", onclick: () => addRow({}) }, "Add row"),
        el("button", { type: "submit" }, "Predict"),
      ),
    );
    onSubmit(form, async () => {
      const data = [...body.querySelectorAll("tr")].map((tr) => {
        const row = {};
        for (const input of tr.querySelectorAll("input")) {
          const raw = input.value.trim();
          const number = Number(raw);
          row[input.dataset.name] =
            raw === "" ? null : NUMERIC.has(input.dataset.kind) && !Number.isNaN(number) ? number : raw;
        }
        return row;
      });
      const request = { ...baseBody(ctx), [field]: data };
      const answer = await submit(ctx, request);
      showResult(ctx, request, answer.data, answer.ms, answer.status);
    });
  },
};

const chat = {
  render(form, ctx) {
    const field = ctx.route.ui.field;
    const history = [];
    const log = el("div", { class: "chat", id: "chat-log", role: "log", "aria-live": "polite" });
    const given = (ctx.example[field] || []).find((m) => m.role === "user");
    const input = el("textarea", { id: "chat-input", rows: 2, required: true }, given ? given.content : "");
    const maxTokens = el("input", { id: "chat-max-tokens", type: "number", min: 1, value: ctx.example.max_tokens || 64 });
    form.append(
      log,
      el("label", { class: "block" }, "Message", input),
      el("div", { class: "row" }, el("label", {}, "max_tokens", maxTokens), runButton("Send")),
    );
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
    });
    onSubmit(form, async () => {
      const text = input.value.trim();
      if (!text) return;
      history.push({ role: "user", content: text });
      log.append(el("p", { class: "msg user" }, text));
      const reply = el("p", { class: "msg assistant", "aria-busy": "true" });
      log.append(reply);
      input.value = "";
      const body = {
        ...baseBody(ctx),
        [field]: [...history],
        max_tokens: Number(maxTokens.value) || undefined,
        stream: true,
      };
      let said = "";
      try {
        const timing = await events("POST", ctx.route.path, body, (ev) => {
          if (ev.data === "[DONE]") return;
          const chunk = JSON.parse(ev.data);
          if (chunk.error) throw new ApiError(chunk.error.message);
          const choice = (chunk.choices || [])[0] || {};
          const delta = (choice.delta && choice.delta.content) || choice.text || "";
          said += delta;
          reply.textContent = said;
        });
        reply.removeAttribute("aria-busy");
        history.push({ role: "assistant", content: said });
        const note = `first token after ${Math.round(timing.firstMs || 0)} ms, streamed`;
        showResult(ctx, body, el("p", {}, `${said.length} characters streamed.`), timing.ms, 200, note);
      } catch (err) {
        reply.remove();
        history.pop();
        showResult(ctx, body, err instanceof ApiError ? err : new ApiError(String(err)), 0, err.status);
      }
    });
  },
};

/** A form from the request schema: simple fields as inputs, the rest as JSON. */
const form = {
  render(formNode, ctx) {
    const schema = ctx.route.request_schema;
    const required = new Set(schema.required || []);
    const inputs = [];
    for (const [name, raw] of Object.entries(schema.properties || {})) {
      if (name === "model") continue;
      const node = resolve(raw, schema);
      const kinds = variants(node, schema);
      const kind = kinds.length === 1 ? kinds[0] : null;
      const value = ctx.example[name] ?? node.default;
      let input;
      if (kind && kind.enum) {
        input = el("select", {}, (required.has(name) ? [] : [el("option", { value: "" }, "(default)")]).concat(
          kind.enum.map((v) => el("option", { value: v, selected: v === value }, v)),
        ));
        input.dataset.type = "string";
      } else if (kind && ["string", "integer", "number", "boolean"].includes(kind.type)) {
        const type = { string: "text", integer: "number", number: "number", boolean: "checkbox" }[kind.type];
        input = el("input", { type, step: kind.type === "number" ? "any" : null });
        if (kind.type === "boolean") input.checked = Boolean(value);
        else if (value !== undefined && value !== null) input.value = value;
        input.dataset.type = kind.type;
      } else {
        input = el("textarea", { rows: 2, placeholder: "JSON" }, value === undefined || value === null ? "" : JSON.stringify(value));
        input.dataset.type = "json";
      }
      input.dataset.name = name;
      input.required = required.has(name) && input.type !== "checkbox";
      inputs.push(input);
      formNode.append(el("label", { class: "block", title: node.description || "" }, name, input));
    }
    formNode.append(runButton());
    onSubmit(formNode, async () => {
      const body = { model: $("try-model").value };
      try {
        for (const input of inputs) {
          const { name, type } = input.dataset;
          if (type === "boolean") {
            if (input.checked) body[name] = true;
          } else if (input.value.trim() !== "") {
            body[name] = type === "json" ? JSON.parse(input.value) : ["integer", "number"].includes(type) ? Number(input.value) : input.value;
          }
        }
      } catch (err) {
        return showResult(ctx, body, new ApiError(`Not JSON: ${err.message}`), 0, 0);
      }
      const { data, status, ms } = await submit(ctx, body);
      showResult(ctx, body, data, ms, status);
    });
  },
};

const RENDERERS = { texts, similarity, rows, chat, form };
