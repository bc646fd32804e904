// "Train a model": drop a table, review its detected schema, pick a model, see the estimate,
// start, and watch the job live from its event stream.
//
// Key rules: the training tasks and their options come from GET /v1/tasks (a params
// schema with target / columns / exclude gets the schema table, anything else its generic
// fields); nothing starts before the user has seen the estimate of exactly what will be
// submitted (editing anything asks for a new one); the job is followed from
// GET /v1/jobs/{id}/events, resumed with Last-Event-ID when a platform cuts the stream.

import { ApiError, blobUrl, call, events, upload } from "./api.js";
import { schemaFields } from "./fields.js";
import { drawChart } from "./chart.js";
import { el, seconds, show, status, table, usd, variants } from "./ui.js";

const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timed_out", "stopped_budget"]);
const SCHEMA_FIELDS = ["data", "name", "target", "task", "columns", "exclude"];

let training = []; // training tasks from /v1/tasks
let serving = [];
let dataset = null; // {info, schema}
let params = null; // the current generic fields
let estimated = null; // the body the shown estimate is for
let watching = null; // {id, abort}
let hooks = { tryModel: () => {}, showExport: () => {}, changed: () => {} };

export function setTrain(tasks) {
  training = tasks.training;
  serving = tasks.serving;
  const select = $("train-task");
  const before = select.value;
  select.replaceChildren(
    ...training.map((t) => el("option", { value: t.slug }, `${t.slug}: ${t.summary}`)),
  );
  if (training.some((t) => t.slug === before)) select.value = before;
  if (dataset) renderParams();
}

export function initTrain(h) {
  hooks = { ...hooks, ...h };
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) uploadFile(file);
  });
  $("dataset-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) uploadFile(file);
  });
  $("train-task").addEventListener("change", renderParams);
  $("train-form").addEventListener("input", invalidate);
  $("train-form").addEventListener("change", invalidate);
  $("estimate-btn").addEventListener("click", estimate);
  $("train-form").addEventListener("submit", (e) => {
    e.preventDefault();
    start();
  });
  $("watch-cancel").addEventListener("click", cancelWatched);
}

async function uploadFile(file) {
  const line = $("upload-status");
  status(line, `Uploading ${file.name} (${(file.size / 1024).toFixed(0)} KiB)...`);
  try {
    const info = await upload(file);
    const { data: schema } = await call("GET", `/v1/datasets/${info.id}/schema`);
    dataset = { info, schema };
    status(line, `${info.id}: ${schema.rows} rows, ${schema.columns.length} columns.`, "ok");
    const tabular = training.find((t) => "columns" in (t.params_schema.properties || {}));
    if (tabular && schema.target) $("train-task").value = tabular.slug;
    const stem = (info.name || file.name).replace(/\.[^.]+$/, "").toLowerCase();
    $("train-name").value = stem.replace(/[^a-z0-9_-]+/g, "-").replace(/^[^a-z0-9]+/, "").slice(0, 80) || "model";
    $("train-form").hidden = false;
    renderParams();
  } catch (err) {
    status(line, err.message, "error");
  }
}

function task() {
  return training.find((t) => t.slug === $("train-task").value);
}

function hasSchemaTable(t) {
  const props = t.params_schema.properties || {};
  return "target" in props && "columns" in props && "exclude" in props;
}

function kindsOf(t) {
  const columns = t.params_schema.properties.columns;
  const extra = columns.additionalProperties || {};
  return variants(extra, t.params_schema).flatMap((k) => k.enum || []);
}

function problemsOf(t) {
  return variants(t.params_schema.properties.task, t.params_schema).flatMap((k) => k.enum || []);
}

function renderParams() {
  const t = task();
  const box = $("schema-box");
  box.replaceChildren();
  if (!t || !dataset) return;
  const skip = new Set(SCHEMA_FIELDS.filter((f) => f in (t.params_schema.properties || {})));
  if (hasSchemaTable(t)) {
    box.append(schemaTable(t));
  } else {
    skip.delete("target");
    skip.delete("task");
    skip.delete("columns");
    skip.delete("exclude");
  }
  params = schemaFields(t.params_schema, skip, t.example);
  const main = params.fields.filter((f) => f.type === "enum" && (f.name === "model" || f.name === "base"));
  const rest = params.fields.filter((f) => !main.includes(f));
  $("params-box").replaceChildren(
    el("div", { class: "row" }, main.map((f) => f.node)),
    el("details", {}, el("summary", {}, `More options (${rest.length})`), el("div", { class: "grid" }, rest.map((f) => f.node))),
  );
  invalidate();
}

function schemaTable(t) {
  const { schema } = dataset;
  const kinds = kindsOf(t);
  const target = schema.target ? schema.target.column : "";
  const rows = schema.columns.map((c) => {
    const kind = el(
      "select",
      { "aria-label": `${c.name} type`, dataset: { column: c.name, detected: c.kind } },
      kinds.map((k) => el("option", { value: k, selected: k === c.kind }, k)),
    );
    const use = el("input", {
      type: "checkbox",
      "aria-label": `use ${c.name}`,
      checked: c.role !== "dropped",
      dataset: { column: c.name, detected: String(c.role !== "dropped") },
    });
    return el(
      "tr",
      {},
      el("th", { scope: "row" }, c.name),
      el("td", {}, kind),
      el("td", {}, `${Math.round(c.missing * 100)}%`),
      el("td", {}, c.examples.slice(0, 3).join(", ")),
      el("td", {}, use),
      el("td", { class: "hint" }, c.reason || c.role),
    );
  });
  const targetSelect = el(
    "select",
    { id: "train-target" },
    schema.columns.map((c) => el("option", { value: c.name, selected: c.name === target }, c.name)),
  );
  const problem = el(
    "select",
    { id: "train-problem" },
    el("option", { value: "" }, "(from the target)"),
    problemsOf(t).map((p) => el("option", { value: p, selected: schema.target && p === schema.target.task }, p)),
  );
  const why = schema.target ? `Proposed: ${schema.target.column} (${schema.target.reason})` : "No target proposed.";
  return el(
    "div",
    { class: "schema" },
    el("div", { class: "row" }, el("label", {}, "Target", targetSelect), el("label", {}, "Problem", problem)),
    el("p", { class: "hint" }, why),
    el(
      "div",
      { class: "scroll" },
      el(
        "table",
        { id: "schema-table" },
        el("thead", {}, el("tr", {}, ["Column", "Type", "Missing", "Examples", "Use", "Why"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, rows),
      ),
    ),
  );
}

/** The POST /v1/jobs body the form says now. */
function body() {
  const t = task();
  const values = { ...params.read(), data: dataset.info.id, name: $("train-name").value.trim() };
  if (hasSchemaTable(t)) {
    const target = $("train-target").value;
    const proposed = dataset.schema.target ? dataset.schema.target.column : null;
    if (target && target !== proposed) values.target = target;
    const problem = $("train-problem").value;
    if (problem && (!dataset.schema.target || problem !== dataset.schema.target.task || target !== proposed)) values.task = problem;
    const columns = {};
    for (const select of document.querySelectorAll("#schema-table select")) {
      if (select.value !== select.dataset.detected) columns[select.dataset.column] = select.value;
    }
    if (Object.keys(columns).length) values.columns = columns;
    const exclude = [...document.querySelectorAll("#schema-table input[type=checkbox]")]
      .filter((c) => !c.checked && c.dataset.detected === "true" && c.dataset.column !== target)
      .map((c) => c.dataset.column);
    if (exclude.length) values.exclude = exclude;
  }
  const out = { task: t.slug, params: values };
  const budget = Number($("train-budget").value);
  if (budget > 0) out.budget_usd = budget;
  return out;
}

function invalidate() {
  if (estimated === null) return;
  estimated = null;
  $("start-btn").disabled = true;
  $("estimate").hidden = true;
}

async function estimate() {
  const box = $("estimate");
  box.hidden = false;
  let request;
  try {
    request = body();
  } catch (err) {
    box.replaceChildren(el("p", { class: "error", role: "alert" }, `An option is not valid JSON: ${err.message}`));
    return;
  }
  box.replaceChildren(el("p", {}, "Estimating..."));
  try {
    const { data } = await call("POST", "/v1/jobs/estimate", request);
    const e = data.estimate || {};
    const budget = data.budget_usd
      ? `${usd(data.budget_usd)}: ${data.within_budget === false ? "the estimate is over it; the job stops with a checkpoint when the cost reaches it" : "within it"}`
      : "none (no cost limit)";
    box.replaceChildren(
      el(
        "dl",
        { id: "estimate-figures" },
        el("dt", {}, "Hardware"), el("dd", {}, `${data.hardware}${data.gpu ? ` (${data.gpu})` : ""}`),
        el("dt", {}, "Time"), el("dd", {}, e.seconds ? `about ${seconds(e.seconds)}` : "not known yet"),
        el("dt", {}, "Cost"), el("dd", {}, e.usd !== undefined ? `about ${usd(e.usd)}` : `${usd(e.usd_per_s)} per second`),
        el("dt", {}, "Budget"), el("dd", {}, budget),
      ),
      (e.assumptions || []).length
        ? el("details", {}, el("summary", {}, "Assumptions"), el("ul", {}, e.assumptions.map((a) => el("li", {}, a))))
        : null,
    );
    estimated = JSON.stringify(request);
    $("start-btn").disabled = false;
  } catch (err) {
    box.replaceChildren(el("p", { class: "error", role: "alert" }, err.message));
  }
}

async function start() {
  const request = body();
  if (JSON.stringify(request) !== estimated) {
    await estimate();
    return;
  }
  try {
    const { data } = await call("POST", "/v1/jobs", request);
    hooks.changed();
    watch(data.id);
  } catch (err) {
    $("estimate").replaceChildren(el("p", { class: "error", role: "alert" }, err.message));
  }
}

// --- watching a job ------------------------------------------------------------------

function fresh(id) {
  return {
    id,
    abort: new AbortController(),
    last: 0,
    status: "queued",
    series: { loss: [], eval_loss: [] },
    board: new Map(),
    budget: null,
  };
}

/** Follow job `id` in the Train section (from a submit or the jobs list). */
export function watch(id) {
  if (watching) watching.abort.abort();
  const w = fresh(id);
  watching = w;
  $("watch").hidden = false;
  $("watch-id").textContent = id;
  $("watch-status").textContent = "queued";
  $("watch-progress").value = 0;
  $("watch-eta").textContent = "-";
  $("watch-cost").textContent = "$0";
  $("watch-logs").replaceChildren();
  $("watch-board").replaceChildren();
  $("watch-final").replaceChildren();
  $("watch-cancel").disabled = false;
  redraw(w);
  $("watch").scrollIntoView({ block: "start" });
  follow(w);
}

async function follow(w) {
  while (watching === w && !TERMINAL.has(w.status)) {
    try {
      const headers = w.last ? { "Last-Event-ID": String(w.last) } : {};
      await events("GET", `/v1/jobs/${w.id}/events`, undefined, (ev) => onEvent(w, ev), w.abort.signal, headers);
    } catch (err) {
      if (w.abort.signal.aborted) return;
      log(w, "error", err.message);
      if (err instanceof ApiError && err.status) return; // an answer, not a dropped stream
    }
    if (!TERMINAL.has(w.status)) await new Promise((r) => setTimeout(r, 1000));
  }
  if (watching === w && TERMINAL.has(w.status)) finish(w);
}

function onEvent(w, ev) {
  if (watching !== w) return;
  const event = JSON.parse(ev.data);
  w.last = event.seq;
  const d = event.data || {};
  switch (event.type) {
    case "state":
      w.status = d.status;
      $("watch-status").textContent = d.status;
      $("watch-status").dataset.status = d.status;
      log(w, "state", d.reason ? `${d.status}: ${d.reason}` : d.status);
      if (TERMINAL.has(d.status)) $("watch-cancel").disabled = true;
      break;
    case "step":
      if (typeof d.loss === "number") w.series.loss.push([d.step, d.loss]);
      if (d.total_steps) $("watch-progress").value = d.step / d.total_steps;
      $("watch-eta").textContent = seconds(d.eta_s);
      if (typeof d.cost_usd === "number") cost(w, d.cost_usd);
      break;
    case "epoch": // a trainer without step events (a tabular MLP) still has its epochs
      if (typeof d.train_loss === "number" && !w.series.loss.length) {
        (w.series.train_loss ||= []).push([d.step, d.train_loss]);
      }
      if (typeof d.eval_loss === "number") w.series.eval_loss.push([d.step, d.eval_loss]);
      break;
    case "eval_metric":
      (w.series[d.name] ||= []).push([d.step, d.value]);
      break;
    case "cost_usd":
      w.budget = d.budget_usd;
      cost(w, d.cost_usd);
      log(w, "cost", `${usd(d.cost_usd)} spent: ${Math.round((d.fraction || 0) * 100)}% of the budget`);
      break;
    case "model":
      w.board.set(d.model, d);
      if (d.of) $("watch-progress").value = (d.index + (d.state === "started" ? 0 : 1)) / d.of;
      renderBoard(w);
      break;
    case "checkpoint":
      log(w, "checkpoint", `checkpoint at step ${d.step}`);
      break;
    case "log":
      log(w, d.level || "info", d.message);
      break;
    default:
      break;
  }
  redraw(w);
}

function cost(w, spent) {
  const budget = w.budget ? ` of ${usd(w.budget)}` : "";
  $("watch-cost").textContent = `${usd(spent)}${budget}`;
}

function log(w, level, message) {
  const list = $("watch-logs");
  list.append(el("li", { dataset: { level } }, `[${level}] ${message}`));
  while (list.children.length > 500) list.firstChild.remove();
}

function redraw(w) {
  drawChart($("watch-chart"), $("watch-legend"), w.series);
}

function renderBoard(w) {
  const rows = [...w.board.values()].map((m) => ({ model: m.model, state: m.state, ...(m.scores || {}), fit_s: m.fit_s, reason: m.reason }));
  $("watch-board").replaceChildren(el("h4", {}, "Models"), table(rows));
}

async function cancelWatched() {
  if (!watching) return;
  try {
    const { data } = await call("POST", `/v1/jobs/${watching.id}/cancel`);
    log(watching, "state", `cancel asked: ${data.status}${data.cancel_requested ? " (stopping)" : ""}`);
    hooks.changed();
  } catch (err) {
    log(watching, "error", err.message);
  }
}

async function finish(w) {
  let job;
  try {
    ({ data: job } = await call("GET", `/v1/jobs/${w.id}`));
  } catch (err) {
    log(w, "error", err.message);
    return;
  }
  hooks.changed();
  const box = $("watch-final");
  $("watch-progress").value = job.status === "succeeded" ? 1 : $("watch-progress").value;
  cost(w, job.cost_usd);
  const scalars = Object.fromEntries(Object.entries(job.metrics || {}).filter(([, v]) => typeof v !== "object"));
  box.replaceChildren(el("h4", { id: "final-title" }, `Job ${job.status}`));
  if (job.error) box.append(el("p", { class: "error" }, `${job.error.type}: ${job.error.message}`));
  if (Object.keys(scalars).length) box.append(table([scalars]));
  if (Array.isArray(job.metrics && job.metrics.leaderboard) && job.metrics.leaderboard.length) {
    box.append(el("h4", {}, "Leaderboard"), table(job.metrics.leaderboard.map(flat)));
  }
  if (!job.model_id) return;
  const trainedFor = training.find((t) => t.slug === job.task);
  const serves = trainedFor ? trainedFor.serves : null;
  box.append(
    el(
      "div",
      { class: "actions" },
      serves && serving.some((s) => s.slug === serves)
        ? el("button", { type: "button", id: "try-new-model", onclick: () => hooks.tryModel(serves, job.model_id) }, `Try ${job.model_id}`)
        : null,
    ),
  );
  try {
    const { data: model } = await call("GET", `/v1/models/${job.model_id}`);
    hooks.showExport(model, box);
    const pictures = model.pictures || [];
    for (const path of pictures) {
      const src = await blobUrl(`/v1/models/${job.model_id}/files/${path}`);
      box.append(el("figure", {}, el("img", { src, alt: `${path} of ${job.model_id}` }), el("figcaption", {}, path)));
    }
  } catch (err) {
    box.append(el("p", { class: "error" }, err.message));
  }
}

function flat(entry) {
  const out = {};
  for (const [k, v] of Object.entries(entry)) {
    if (v && typeof v === "object" && !Array.isArray(v)) {
      for (const [k2, v2] of Object.entries(v)) if (typeof v2 !== "object") out[k2] = v2;
    } else out[k] = show(v);
  }
  return out;
}
