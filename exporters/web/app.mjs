// The generation page: loads model.json, the step and prefill graphs, their weights and the
// tokenizer (tokenizer.json, or an RWKV World vocabulary as world_vocab.json) from this folder, and
// streams tokens. Driven without clicking: index.html?prompt=TEXT&tokens=N generates N
// greedy tokens (as `rnnquant run` does by default), writes the continuation into #output and sets
// document.title to "done" (or "error: <one line>"). ?threads=K sets the WASM threads (more than 1
// needs a cross-origin isolated page).
import * as ort from "./ort.wasm.min.mjs";
import { Tokenizer } from "./tokenizers.min.mjs";
import { RnnLM } from "./rnnlm.mjs";
import { WorldTokenizer } from "./world.mjs";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

function fail(e) {
  const line = String(e?.message ?? e).split("\n")[0];
  $("stats").textContent = `error: ${line}`;
  document.title = `error: ${line}`;
}

async function fetchOk(name) {
  const r = await fetch(name);
  if (!r.ok) throw new Error(`${name}: HTTP ${r.status}`);
  return r;
}

function showMetadata(m, threads) {
  const mib = (b) => `${(b / 2 ** 20).toFixed(2)} MiB`;
  const rows = [
    ["architecture", m.architecture], ["recipe", m.recipe + (m.prune ? ` + prune ${m.prune}` : "")],
    ["step graph", `${m.step} (${mib(m.bytes.step)})`],
    ["prefill graph", m.prefill ? `${m.prefill} (${mib(m.bytes.prefill)})` : "none: the step graph per token"],
    ["state", `${m.state_bytes.toLocaleString()} bytes per sequence, whatever the length`],
    ["vocabulary", m.vocab_size.toLocaleString()],
    ["runtime", `onnxruntime-web ${ort.env.versions?.web ?? ""} WASM, ${threads} thread${threads > 1 ? "s" : ""}`],
    ["exported by", `rnnquant ${m.rnnquant_version}`],
  ];
  $("meta").replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement("tr");
    for (const text of [k, v]) tr.appendChild(Object.assign(document.createElement("td"), { textContent: text }));
    return tr;
  }));
}

async function generate(lm, tokenizer, prompt, n, options) {
  const ids = tokenizer.encode(prompt).ids;
  if (ids.length === 0) throw new Error("empty prompt");
  $("prompt-echo").textContent = prompt;
  $("output").textContent = "";
  const out = [];
  const t0 = performance.now();
  let tFirst = null;
  for await (const id of lm.generate(ids, n, options)) {
    tFirst ??= performance.now();
    out.push(id);
    $("output").textContent = tokenizer.decode(out, { skip_special_tokens: true });
    // the same two rates `rnnquant run` prints: the prompt up to the first new token, then the rest
    const s = window.rnnquantStats = {
      prefill_tokens: ids.length, prefill_tps: ids.length / ((tFirst - t0) / 1000),
      decode_tokens: out.length, decode_tps: out.length > 1 ? (out.length - 1) / ((performance.now() - tFirst) / 1000) : null,
    };
    $("stats").textContent = `prefill ${s.prefill_tokens} tokens: ${s.prefill_tps.toFixed(1)} tok/s · ` +
      `decode ${s.decode_tokens} tokens: ${s.decode_tps === null ? "–" : s.decode_tps.toFixed(1)} tok/s`;
  }
  return out;
}

async function main() {
  const threads = Number(params.get("threads") ?? (self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1));
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.wasmPaths = new URL("./", location.href).href;
  const manifest = await (await fetchOk("model.json")).json();
  const tok = manifest.tokenizer ?? { kind: "hf", file: "tokenizer.json" };
  const vocab = await (await fetchOk(tok.file)).json();
  const tokenizer = tok.kind === "world" ? new WorldTokenizer(vocab) : new Tokenizer(vocab, {});
  showMetadata(manifest, threads);
  const lm = await RnnLM.load(ort, manifest, async (f) => new Uint8Array(await (await fetchOk(f)).arrayBuffer()),
                              { executionProviders: ["wasm"] });
  $("stats").textContent = "ready";
  if (params.has("prompt")) {
    $("prompt").value = params.get("prompt");
    $("tokens").value = params.get("tokens") ?? "32";
    await generate(lm, tokenizer, $("prompt").value, Number($("tokens").value), {});
    document.title = "done";
  }
  $("go").disabled = false;
  $("go").onclick = async () => {
    $("go").disabled = true;
    try {
      await generate(lm, tokenizer, $("prompt").value, Number($("tokens").value),
                     { temperature: Number($("temperature").value), topK: Number($("topk").value), seed: Date.now() >>> 0 });
    } catch (e) { fail(e); } finally { $("go").disabled = false; }
  };
}

main().catch(fail);
