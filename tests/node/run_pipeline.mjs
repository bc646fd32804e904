// Runs one Transformers.js pipeline on an exported folder, with no network.
//
// Usage: node run_pipeline.mjs REQUEST.json
//   REQUEST: {"task", "dir", "dtype", "texts", "options"}; "options" is passed to the
//   pipeline call as it is ({top_k} for text-classification, {pooling, normalize} for
//   feature-extraction).
// Prints one JSON object on stdout: {"results": [...]} (classification: one list of
// {label, score} per text; feature extraction: one vector per text).
import { readFileSync } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import { env, pipeline } from "@huggingface/transformers";

const request = JSON.parse(readFileSync(process.argv[2], "utf-8"));
const dir = resolve(request.dir);
env.allowRemoteModels = false; // the export must load on its own
env.allowLocalModels = true;
env.localModelPath = dirname(dir) + "/";

const run = await pipeline(request.task, basename(dir), { dtype: request.dtype });
const output = await run(request.texts, request.options ?? {});
const results = request.task === "feature-extraction" ? output.tolist() : output;
process.stdout.write(JSON.stringify({ results }) + "\n");
