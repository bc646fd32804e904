// The playground's entry: connect, the four sections, the live lists.
//
// Key rules: nothing is called before the user connects (or reconnects a tab that had
// connected: the session storage remembers it), so a first visit makes no request that
// could fail; what the page offers comes from GET /v1/tasks and GET /v1/models.

import { call, conn } from "./api.js";
import { initLists, refreshJobs, refreshModels, showExport } from "./lists.js";
import { initTrain, setTrain, watch } from "./train.js";
import { initTry, setTry, tryModel } from "./try.js";
import { status } from "./ui.js";

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 3000; // how often a shown list is read again
let tasks = null;
let timer = null;

function show(tab) {
  for (const button of document.querySelectorAll("nav.tabs button")) {
    button.setAttribute("aria-pressed", String(button.dataset.tab === tab));
  }
  for (const section of document.querySelectorAll("main > section.tab")) {
    section.hidden = section.id !== `tab-${tab}`;
  }
  refreshShown();
}

function shownTab() {
  const pressed = document.querySelector("nav.tabs button[aria-pressed=true]");
  return pressed ? pressed.dataset.tab : "try";
}

async function refreshShown() {
  if (!tasks || document.hidden) return;
  const tab = shownTab();
  if (tab === "jobs" && tasks.jobs) await refreshJobs();
  if (tab === "models") await refreshModels();
}

async function connect() {
  const line = $("connect-status");
  status(line, `Connecting to ${conn.url}...`);
  try {
    const { data } = await call("GET", "/v1/tasks");
    tasks = data;
    const models = await refreshModels();
    setTry(tasks, models);
    setTrain(tasks);
    const trains = tasks.jobs;
    $("train-on").hidden = !trains;
    $("train-off").hidden = trains;
    if (!trains) $("jobs-table").querySelector("tbody").textContent = "";
    $("jobs-off").hidden = trains;
    const n = tasks.serving.length;
    const m = tasks.training.length;
    status(line, `Connected to ${conn.url}: ${n} serving and ${m} training tasks, ${models.length} models.`, "ok");
    document.body.dataset.connected = "true";
    clearInterval(timer);
    timer = setInterval(refreshShown, REFRESH_MS);
    refreshShown();
  } catch (err) {
    tasks = null;
    document.body.dataset.connected = "false";
    clearInterval(timer);
    status(line, err.message, "error");
  }
}

async function modelsChanged() {
  if (!tasks) return;
  setTry(tasks, await refreshModels());
  refreshShown();
}

function init() {
  $("endpoint").value = conn.url;
  $("api-key").value = conn.key;
  $("connect").addEventListener("submit", (e) => {
    e.preventDefault();
    conn.save($("endpoint").value, $("api-key").value);
    connect();
  });
  for (const button of document.querySelectorAll("nav.tabs button")) {
    button.addEventListener("click", () => show(button.dataset.tab));
  }
  const tryIt = async (slug, modelId) => {
    await modelsChanged();
    show("try");
    tryModel(slug, modelId);
    document.getElementById("try-title").scrollIntoView({ block: "start" });
  };
  initTry();
  initTrain({ tryModel: tryIt, showExport, changed: modelsChanged });
  initLists({
    tryModel: tryIt,
    watch: (id) => {
      show("train");
      watch(id);
    },
  });
  if (window.sessionStorage.getItem("fnb.endpoint") !== null) connect();
  else status($("connect-status"), "Type the endpoint and its API key, then Connect.");
}

init();
