// Parity of exported graphs in onnxruntime-node and onnxruntime-web (WASM, in Node) against Python
// ONNX Runtime: for every case folder under DIR (an export + model.json + reference.json written
// by tests/web/test_node_parity.py), run the step graph token by token and the prefill graph
// through rnnlm.mjs (the page's runner) and print one JSON line per case and runtime with the
// largest differences from the Python run.
//
//   node web/test/parity.mjs DIR
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import * as ortNode from "onnxruntime-node";
import * as ortWeb from "onnxruntime-web";
import { RnnLM } from "../../exporters/web/rnnlm.mjs";

ortWeb.env.wasm.numThreads = 1;
const RUNTIMES = { node: ortNode, wasm: ortWeb };
const READ = { float32: (b) => new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4),
               int64: (b) => new BigInt64Array(b.buffer, b.byteOffset, b.byteLength / 8) };

function maxDiff(a, b) {
  if (a.length !== b.length) return Infinity;
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(Number(a[i]) - Number(b[i])));
  return Number.isNaN(d) ? Infinity : d;
}

function reference(dir, ref, key) {
  const r = ref[key];
  const bytes = readFileSync(join(dir, r.file));
  return READ[r.dtype](new Uint8Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)));
}

async function check(dir, name, ort) {
  const manifest = JSON.parse(readFileSync(join(dir, "model.json"), "utf8"));
  const ref = JSON.parse(readFileSync(join(dir, "reference.json"), "utf8"));
  // onnxruntime-node opens the files itself (its own external-data reader: the model's folder);
  // onnxruntime-web takes bytes, as in the page
  const load = ort === ortNode ? async (f) => join(dir, f) : async (f) => new Uint8Array(readFileSync(join(dir, f)));
  const lm = await RnnLM.load(ort, manifest, load);
  let state = lm.initState(1);
  let initStates = 0;
  lm.states.forEach((s, i) => { initStates = Math.max(initStates, maxDiff(state[i].data, reference(dir, ref, `init_${s.name}`))); });
  const rows = [];
  for (const id of ref.tokens) {
    const r = await lm.step([id], state);
    state = r.state;
    rows.push(...r.logits.data);
  }
  const out = { case: name, runtime: ort === ortNode ? "node" : "wasm",
                init_states: initStates, step_logits: maxDiff(rows, reference(dir, ref, "step_logits")), step_states: 0, prefill_logits: null, prefill_states: null };
  lm.states.forEach((s, i) => { out.step_states = Math.max(out.step_states, maxDiff(state[i].data, reference(dir, ref, `step_${s.name}`))); });
  if (manifest.prefill) {
    const p = await lm.prefill(ref.tokens, lm.initState(1), manifest.prefill_last_only);
    out.prefill_logits = maxDiff(p.logits, reference(dir, ref, "prefill_logits"));
    out.prefill_states = 0;
    lm.states.forEach((s, i) => { out.prefill_states = Math.max(out.prefill_states, maxDiff(p.state[i].data, reference(dir, ref, `prefill_${s.name}`))); });
  }
  return out;
}

const root = process.argv[2];
for (const name of readdirSync(root).sort()) {
  for (const ort of Object.values(RUNTIMES)) {
    try {
      console.log(JSON.stringify(await check(join(root, name), name, ort)));
    } catch (e) {
      console.log(JSON.stringify({ case: name, runtime: ort === ortNode ? "node" : "wasm", error: String(e.message ?? e).split("\n")[0] }));
    }
  }
}
