// Runs exported ONNX graphs on ONNX Runtime Web's WebAssembly backend: the engine
// Transformers.js runs in a browser (in Node it picks onnxruntime-node instead, so this
// script drives the browser's own engine directly; its version is the one Transformers.js
// depends on, pinned by package-lock.json).
//
// Usage: node run_graph_wasm.mjs REQUEST.json
//   REQUEST: {"runs": [{"model": "<path to .onnx>", "inputs": {"input_ids": [[...]], ...}}]}
//   (int64 token arrays, one row per text, already padded; inputs a graph does not take
//   are ignored).
// Prints one JSON object on stdout: {"results": [{"output", "dims", "data"}, ...]}, the
// first output of each run's graph.
import { readFileSync } from "node:fs";
import * as ort from "onnxruntime-web";

const request = JSON.parse(readFileSync(process.argv[2], "utf-8"));
ort.env.wasm.numThreads = 1; // no worker threads: the same answer on every machine

async function run({ model, inputs }) {
  const session = await ort.InferenceSession.create(readFileSync(model), {
    executionProviders: ["wasm"],
  });
  const feeds = {};
  for (const name of session.inputNames) {
    const rows = inputs[name];
    const flat = BigInt64Array.from(rows.flat().map((x) => BigInt(x)));
    feeds[name] = new ort.Tensor("int64", flat, [rows.length, rows[0].length]);
  }
  const output = session.outputNames[0];
  const result = (await session.run(feeds))[output];
  await session.release();
  return { output, dims: result.dims, data: Array.from(result.data) };
}

const results = [];
for (const one of request.runs) {
  results.push(await run(one));
}
process.stdout.write(JSON.stringify({ results }) + "\n");
