// The call the user just made, as curl, fetch and the openai SDK, ready to paste.
//
// Key rule: a snippet never carries the key the user typed: it reads FNB_API_KEY from the
// environment, so a screenshot or a pasted snippet leaks nothing. OpenAI's own paths use
// the SDK's method for them; any other route goes through the SDK's generic `post`.

import { copyButton, el } from "./ui.js";

// The openai SDK's method for each of OpenAI's paths (the API's surface, not our tasks).
const SDK_METHODS = {
  "/v1/chat/completions": "client.chat.completions.create",
  "/v1/completions": "client.completions.create",
  "/v1/embeddings": "client.embeddings.create",
};

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

function python(value, indent = 0) {
  const pad = " ".repeat(indent + 4);
  const end = " ".repeat(indent);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => pad + python(v, indent + 4)).join(",\n")},\n${end}]`;
  }
  if (typeof value === "object") {
    const entries = Object.entries(value);
    if (!entries.length) return "{}";
    const lines = entries.map(([k, v]) => `${pad}${JSON.stringify(k)}: ${python(v, indent + 4)}`);
    return `{\n${lines.join(",\n")},\n${end}}`;
  }
  return JSON.stringify(value);
}

export function curl(base, path, body) {
  const stream = body && body.stream ? "-N " : "";
  return [
    `curl ${stream}-sS ${base}${path} \\`,
    `  -H "Authorization: Bearer $FNB_API_KEY" \\`,
    `  -H "Content-Type: application/json" \\`,
    `  -d ${shellQuote(JSON.stringify(body))}`,
  ].join("\n");
}

export function fetchJs(base, path, body) {
  const lines = [
    "const FNB_API_KEY = process.env.FNB_API_KEY; // Node; a page should call your backend",
    `const response = await fetch(${JSON.stringify(base + path)}, {`,
    `  method: "POST",`,
    `  headers: {`,
    "    Authorization: `Bearer ${FNB_API_KEY}`,",
    `    "Content-Type": "application/json",`,
    `  },`,
    `  body: JSON.stringify(${JSON.stringify(body, null, 2).replace(/\n/g, "\n  ")}),`,
    `});`,
  ];
  if (body && body.stream) {
    lines.push(
      "const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();",
      "for (let c = await reader.read(); !c.done; c = await reader.read()) console.log(c.value);",
    );
  } else {
    lines.push("console.log(await response.json());");
  }
  return lines.join("\n");
}

export function openaiPy(base, path, body) {
  const head = [
    "import os",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${JSON.stringify(base + "/v1")}, api_key=os.environ["FNB_API_KEY"])`,
  ];
  const method = SDK_METHODS[path];
  if (method) {
    const call = `${method}(**${python(body)})`;
    if (body && body.stream) {
      return [...head, `for chunk in ${call}:`, "    print(chunk)"].join("\n");
    }
    return [...head, `print(${call})`].join("\n");
  }
  const relative = path.replace(/^\/v1/, "");
  return [...head, `print(client.post(${JSON.stringify(relative)}, cast_to=object, body=${python(body)}))`].join("\n");
}

/** The three snippets, each in a labelled block with a copy button. */
export function snippets(base, path, body) {
  const kinds = [
    ["curl", curl(base, path, body)],
    ["fetch (JavaScript)", fetchJs(base, path, body)],
    ["openai SDK (Python)", openaiPy(base, path, body)],
  ];
  return kinds.map(([label, text]) => {
    const code = el("pre", { class: "code", dataset: { snippet: label.split(" ")[0] } }, text);
    return el("div", { class: "snippet" }, el("div", { class: "snippet-head" }, el("span", {}, label), copyButton(code)), code);
  });
}
