// The step contract of an exported rnnquant model in JavaScript: the twin of rnnquant's Python
// runner (rnnquant/exporters/runner.py, `OrtLM`), for onnxruntime-web and onnxruntime-node.
//
//   const lm = await RnnLM.load(ort, manifest, load, sessionOptions);
//   for await (const id of lm.generate(promptIds, 32)) ...
//
// `ort` is the runtime module (onnxruntime-web or onnxruntime-node: the same API), `manifest` the
// export's model.json (written by `rnnquant export --web`, from the graphs' metadata), `load(name)`
// what InferenceSession.create takes for a file beside it (a URL in a page, bytes in Node).
// Every choice mirrors OrtLM so a greedy continuation here equals `rnnquant run`'s: the initial
// state each state declares, the prefill graph fed in windows of `prefill_window` tokens, the
// last position's logits, argmax taking the first of equal maxima (numpy's rule).

const TYPED = { float32: Float32Array, int64: BigInt64Array };

export class RnnLM {
  constructor(ort, manifest, step, prefill) {
    this.ort = ort;
    this.manifest = manifest;
    this.states = manifest.states; // [{name, shape (without batch), dtype, init}]
    this.vocabSize = manifest.vocab_size;
    this.stepSession = step;
    this.prefillSession = prefill; // null: no prefill graph, the step graph token by token
  }

  // The weights file both graphs share (ONNX external data): given a graph as bytes (the page),
  // the runtime is handed the weights' bytes too, loaded once for both sessions; given a path
  // (onnxruntime-node), it reads them from beside the graph itself.
  static async load(ort, manifest, load, options = {}) {
    const stepSource = await load(manifest.step);
    if (manifest.weights && typeof stepSource !== "string") {
      options = { ...options, externalData: [{ path: manifest.weights, data: await load(manifest.weights) }] };
    }
    const step = await ort.InferenceSession.create(stepSource, options);
    const prefill = manifest.prefill ? await ort.InferenceSession.create(await load(manifest.prefill), options) : null;
    return new RnnLM(ort, manifest, step, prefill);
  }

  // the initial state each state tensor declares: its dtype and fill value (RWKV's running max
  // starts at -1e38, a position counter is int64)
  initState(batch = 1) {
    return this.states.map((s) => {
      const Typed = TYPED[s.dtype ?? "float32"];
      if (!Typed) throw new Error(`state ${s.name}: unsupported dtype ${s.dtype}`);
      const size = batch * s.shape.reduce((a, b) => a * b, 1);
      const data = new Typed(size);
      const init = s.init ?? 0;
      if (init !== 0) data.fill(Typed === BigInt64Array ? BigInt(init) : init);
      return new this.ort.Tensor(s.dtype ?? "float32", data, [batch, ...s.shape]);
    });
  }

  _feeds(idsName, ids, dims, state) {
    const feeds = { [idsName]: new this.ort.Tensor("int64", BigInt64Array.from(ids, BigInt), dims) };
    this.states.forEach((s, i) => { feeds[s.name] = state[i]; });
    return feeds;
  }

  _newState(out) {
    return this.states.map((s) => out[`new_${s.name}`]);
  }

  // ids: one token per sequence -> {logits: Tensor [B, V], state}
  async step(ids, state) {
    const out = await this.stepSession.run(this._feeds("input_ids", ids, [ids.length], state));
    return { logits: out.logits, state: this._newState(out) };
  }

  // ids: one sequence's tokens -> {logits: Float32Array [T, V] (lastOnly: [1, V]), state}
  async prefill(ids, state, lastOnly = true) {
    const m = this.manifest;
    if (!this.prefillSession || (!lastOnly && m.prefill_last_only)) {
      const rows = [];
      for (const id of ids) {
        const r = await this.step([id], state);
        state = r.state;
        rows.push(r.logits.data);
      }
      return { logits: lastOnly ? rows[rows.length - 1] : concat(rows), state };
    }
    const window = m.prefill_window ?? ids.length;
    const pieces = [];
    for (let start = 0; start < Math.max(ids.length, 1); start += window) {
      const piece = ids.slice(start, start + window);
      const out = await this.prefillSession.run(this._feeds("prompt_ids", piece, [1, piece.length], state));
      state = this._newState(out);
      pieces.push(out.logits.data);
    }
    const last = pieces[pieces.length - 1];
    if (lastOnly) return { logits: m.prefill_last_only ? last : last.subarray(last.length - this.vocabSize), state };
    return { logits: concat(pieces), state };
  }

  // greedy (temperature 0, `rnnquant run`'s default) or sampled token ids after the prompt
  async *generate(promptIds, maxNewTokens, { temperature = 0, topK = 0, seed = 0 } = {}) {
    const rng = mulberry32(seed);
    let { logits, state } = await this.prefill(promptIds, this.initState(1), true);
    for (let i = 0; i < maxNewTokens; i++) {
      const next = sample(logits, temperature, topK, rng);
      yield next;
      if (i + 1 === maxNewTokens) break; // `rnnquant run` steps once more; its logits are unused
      const r = await this.step([next], state);
      logits = r.logits.data;
      state = r.state;
    }
  }
}

function concat(rows) {
  const out = new Float32Array(rows.reduce((n, r) => n + r.length, 0));
  let at = 0;
  for (const r of rows) { out.set(r, at); at += r.length; }
  return out;
}

export function argmax(logits) {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

// temperature <= 0: argmax. Else softmax(logits / T) over the top-k (0: all), drawn with a seeded
// generator (not numpy's: a sampled continuation differs from `rnnquant run`'s, a greedy one does not)
export function sample(logits, temperature, topK, rng) {
  if (!(temperature > 0)) return argmax(logits);
  const z = Float64Array.from(logits, (x) => x / temperature);
  if (topK > 0 && topK < z.length) {
    const kth = Float64Array.from(z).sort()[z.length - topK];
    for (let i = 0; i < z.length; i++) if (z[i] < kth) z[i] = -Infinity;
  }
  const max = z.reduce((a, b) => Math.max(a, b), -Infinity);
  let total = 0;
  for (let i = 0; i < z.length; i++) { z[i] = Math.exp(z[i] - max); total += z[i]; }
  let u = rng() * total;
  for (let i = 0; i < z.length; i++) { u -= z[i]; if (u <= 0 && z[i] > 0) return i; }
  return argmax(logits);
}

export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
