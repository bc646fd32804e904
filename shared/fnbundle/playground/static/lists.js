// The jobs and models lists, refreshed while their section is shown, and the
// "export for the browser" download of a text classifier.
//
// Key rule: a list that cannot be read says why in its own table (a gateway deployed without
// jobs answers 404 for /v1/jobs) and the page keeps working; the export button tolerates a
// gateway that has no export route yet (404) and says so.

import { ApiError, blobUrl, call } from "./api.js";
import { el, copyButton, show, usd } from "./ui.js";

const $ = (id) => document.getElementById(id);
const ACTIVE = new Set(["queued", "running"]);
let hooks = { watch: () => {}, tryModel: () => {} };

export function initLists(h) {
  hooks = { ...hooks, ...h };
}

/** Replace a table's rows, keeping the keyboard focus on the same button (data-key). */
function replaceRows(tbody, rows) {
  const focused = tbody.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  tbody.replaceChildren(...rows);
  const again = focused ? tbody.querySelector(`[data-key="${CSS.escape(focused)}"]`) : null;
  if (again) again.focus();
}

function message(tbody, columns, text) {
  tbody.replaceChildren(el("tr", {}, el("td", { colspan: columns, class: "hint" }, text)));
}

export async function refreshJobs() {
  const tbody = $("jobs-table").querySelector("tbody");
  let jobs;
  try {
    ({ data: { jobs } } = await call("GET", "/v1/jobs?limit=50"));
  } catch (err) {
    const why = err instanceof ApiError && err.status === 404 ? "This gateway runs no jobs." : err.message;
    message(tbody, 7, why);
    return;
  }
  if (!jobs.length) return message(tbody, 7, "No jobs yet: train one in the Train section.");
  replaceRows(
    tbody,
    jobs.map((job) => {
      const progress = job.progress || {};
      const actions = el(
        "div",
        { class: "actions" },
        el("button", { type: "button", class: "small", dataset: { key: `${job.id}:watch` }, onclick: () => hooks.watch(job.id) }, "Watch"),
        ACTIVE.has(job.status)
          ? el(
              "button",
              {
                type: "button",
                class: "small danger",
                dataset: { key: `${job.id}:cancel` },
                "aria-label": `Cancel ${job.id}`,
                onclick: async (e) => {
                  e.target.disabled = true;
                  try {
                    await call("POST", `/v1/jobs/${job.id}/cancel`);
                  } catch (err) {
                    e.target.textContent = err.message;
                  }
                  refreshJobs();
                },
              },
              "Cancel",
            )
          : null,
      );
      return el(
        "tr",
        { dataset: { job: job.id, status: job.status } },
        el("td", {}, el("code", {}, job.id)),
        el("td", {}, job.task),
        el("td", {}, el("span", { class: "badge", dataset: { status: job.status } }, job.status)),
        el("td", {}, el("progress", { max: 1, value: progress.fraction || 0, "aria-label": `progress of ${job.id}` })),
        el("td", {}, usd(job.cost_usd)),
        el("td", {}, job.model_id ? el("code", {}, job.model_id) : ""),
        el("td", {}, actions),
      );
    }),
  );
}

export async function refreshModels() {
  const tbody = $("models-table").querySelector("tbody");
  let models;
  try {
    ({ data: { data: models } } = await call("GET", "/v1/models"));
  } catch (err) {
    message(tbody, 5, err.message);
    return [];
  }
  if (!models.length) message(tbody, 5, "The store holds no model yet.");
  else {
    replaceRows(
      tbody,
      models.map((m) =>
        el(
          "tr",
          { dataset: { model: m.id, state: m.state } },
          el("td", {}, el("code", {}, m.id), m.latest ? el("span", { class: "badge" }, "latest") : null),
          el("td", {}, m.task),
          el("td", { title: m.reason || "" }, el("span", { class: "badge", dataset: { status: m.state } }, m.state)),
          el("td", {}, show(m.created_at)),
          el("td", {}, modelActions(m)),
        ),
      ),
    );
  }
  return models;
}

function modelActions(m) {
  const tryIt = el(
    "button",
    { type: "button", class: "small", dataset: { key: `${m.id}:try` } },
    "Try",
  );
  tryIt.addEventListener("click", () => hooks.tryModel(m.task, m.id));
  const exportIt = el(
    "button",
    { type: "button", class: "small", dataset: { key: `${m.id}:export` } },
    "Export for the browser",
  );
  exportIt.addEventListener("click", () => showExport(m, $("export-box")));
  return el("div", { class: "actions" }, m.state !== "failed" ? tryIt : null, exportable(m) ? exportIt : null);
}

/** A text classifier (its models list their labels) can run in the browser. */
function exportable(model) {
  return Array.isArray(model.labels) && model.labels.length > 0;
}

// The zip holds one folder named after the version id: serve its parent with the page.
const EXAMPLE = (folder) => `import { pipeline, env } from "@huggingface/transformers";
env.allowRemoteModels = false; env.localModelPath = "/web/"; // unzip the download into web/
const classify = await pipeline("text-classification", "${folder}");
const [best] = await classify("Arrived early and works great.");
console.log(best); // {label: "positive", score: 0.95}`;

/** The export download and its five-line example, in `box` (shown). */
export function showExport(model, box) {
  if (!exportable(model)) return;
  box.hidden = false;
  const note = el("p", { class: "status", role: "status" });
  const code = el("pre", { class: "code" }, EXAMPLE(model.id));
  const button = el("button", { type: "button", id: `export-${model.id}` }, `Download ${model.id} for Transformers.js`);
  button.addEventListener("click", async () => {
    note.textContent = "Exporting...";
    try {
      const url = await blobUrl(`/v1/models/${encodeURIComponent(model.id)}/export?format=transformers.js`);
      const link = el("a", { href: url, download: `${model.id}-transformers.js.zip` }, "");
      document.body.append(link);
      link.click();
      link.remove();
      note.textContent = "Downloaded: unzip it, then load it with the example below.";
    } catch (err) {
      note.textContent =
        err instanceof ApiError && err.status === 404
          ? "This gateway has no export for the browser (404): update fnbundle, or run `fnbundle export` where the store is."
          : err.message;
    }
  });
  box.replaceChildren(
    el("h3", {}, "Run it in the browser"),
    el("div", { class: "actions" }, button),
    note,
    el("div", { class: "snippet" }, el("div", { class: "snippet-head" }, el("span", {}, "Transformers.js"), copyButton(code)), code),
  );
}
