// Inputs generated from a JSON schema's top-level properties, for the training params.
//
// Key rule: a field the schema can say simply (a string, a number, a yes/no, one of a list)
// is an input of that kind, labelled with its name and described by the schema; anything
// else is JSON in a textarea. Values left empty are left out, so the server's default holds.

import { el, resolve, variants } from "./ui.js";

let counter = 0;

/** {node, read(), set(name, value)} for `schema`'s properties minus `skip`. */
export function schemaFields(schema, skip = new Set(), values = {}) {
  const required = new Set(schema.required || []);
  const fields = [];
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    if (skip.has(name)) continue;
    const node = resolve(raw, schema);
    const kinds = variants(node, schema);
    const enums = kinds.flatMap((k) => k.enum || (k.const !== undefined ? [k.const] : []));
    const simple = kinds.length === 1 ? kinds[0].type : null;
    const value = values[name] ?? node.default;
    const id = `field-${++counter}`;
    let input;
    let type;
    if (kinds.length && kinds.every((k) => k.enum || k.const !== undefined)) {
      type = "enum";
      input = el(
        "select",
        { id },
        required.has(name) ? [] : [el("option", { value: "" }, "(default)")],
        enums.map((v) => el("option", { value: v, selected: v === value }, v)),
      );
    } else if (["string", "integer", "number", "boolean"].includes(simple)) {
      type = simple;
      const html = { string: "text", integer: "number", number: "number", boolean: "checkbox" }[simple];
      input = el("input", { id, type: html, step: simple === "number" ? "any" : null });
      if (simple === "boolean") input.checked = Boolean(value);
      else if (value !== undefined && value !== null) input.value = value;
    } else {
      type = "json";
      input = el("textarea", { id, rows: 1, placeholder: "JSON" }, value === undefined || value === null ? "" : JSON.stringify(value));
    }
    if (required.has(name) && type !== "boolean") input.required = true;
    fields.push({ name, type, input, default: node.default });
    const label = el("label", { for: id }, name);
    const help = node.description ? el("small", {}, node.description) : null;
    fields[fields.length - 1].node = el("div", { class: "field" }, label, input, help);
  }
  return {
    fields,
    read() {
      const out = {};
      for (const { name, type, input, default: fallback } of fields) {
        if (type === "boolean") {
          if (input.checked !== Boolean(fallback)) out[name] = input.checked;
          continue;
        }
        const raw = input.value.trim();
        if (raw === "") continue;
        if (type === "json") out[name] = JSON.parse(raw);
        else if (type === "integer" || type === "number") out[name] = Number(raw);
        else out[name] = raw;
        if (JSON.stringify(out[name]) === JSON.stringify(fallback)) delete out[name];
      }
      return out;
    },
  };
}
