// Small DOM helpers shared by the sections. Key rule: text goes in as text (textContent),
// never as HTML, so nothing a model or a dataset says can run in the page.

/** el("button", {type: "button", onclick}, "Label", child, ...) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A table of objects: the given columns, or every key of the first rows. */
export function table(rows, columns) {
  const cols = columns || [...new Set(rows.flatMap((r) => Object.keys(r)))];
  return el(
    "div",
    { class: "scroll" },
    el(
      "table",
      {},
      el("thead", {}, el("tr", {}, cols.map((c) => el("th", { scope: "col" }, c)))),
      el("tbody", {}, rows.map((r) => el("tr", {}, cols.map((c) => el("td", {}, show(r[c])))))),
    ),
  );
}

/** A value as short text: numbers rounded, objects as JSON. */
export function show(value) {
  if (value === undefined || value === null) return "";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(4);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function usd(value) {
  if (value === undefined || value === null) return "-";
  if (value === 0) return "$0";
  return value < 0.01 ? `$${value.toFixed(5)}` : `$${value.toFixed(2)}`;
}

export function seconds(value) {
  if (value === undefined || value === null) return "-";
  if (value < 90) return `${Math.round(value)} s`;
  if (value < 5400) return `${Math.round(value / 60)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

/** Set a status line: kind "ok", "error" or "" (plain). */
export function status(node, message, kind = "") {
  node.textContent = message;
  node.dataset.kind = kind;
}

/** A copy button for the text of `source` (a node), with the clipboard where allowed. */
export function copyButton(source, label = "Copy") {
  const button = el("button", { type: "button", class: "small" }, label);
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(source.textContent);
      button.textContent = "Copied";
    } catch {
      const range = document.createRange();
      range.selectNodeContents(source);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      button.textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => (button.textContent = label), 1500);
  });
  return button;
}

/** Resolve a local "$ref" of a JSON schema. */
export function resolve(node, schema) {
  if (node && typeof node.$ref === "string" && node.$ref.startsWith("#/$defs/")) {
    return (schema.$defs || {})[node.$ref.slice(8)] || {};
  }
  return node || {};
}

/** The variants of a schema node (anyOf/oneOf or itself), null types left out. */
export function variants(node, schema) {
  const options = node.anyOf || node.oneOf || [node];
  return options.map((o) => resolve(o, schema)).filter((o) => o.type !== "null");
}
