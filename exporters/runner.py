"""Run an exported step graph with ONNX Runtime: numpy, onnxruntime and tokenizers only (no torch).

    lm = OrtLM("model.onnx", threads=2)
    for token_id in lm.generate(lm.encode("def f("), max_new_tokens=32): ...
    lm.perplexity(ids, window=512)
"""
from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import numpy as np

from rnnquant.errors import RnnquantError
from rnnquant.heap import release_large_frees
from rnnquant.kernels import ortops
from rnnquant.eval.windows import POSITION_EDGES, PositionBuckets, perplexity_of, windows
from rnnquant.exporters.prefill import PREFILL_WINDOW, prefill_path
from rnnquant.exporters.states import initial_state
from rnnquant.text import encode_prompt
from rnnquant.tokenizer import HF_FILE, find_tokenizer, load_tokenizer

REQUIRED_META = ("graph", "architecture", "states", "vocab_size", "tokenizer_sha256")


def read_metadata(path) -> dict[str, str]:
    """rnnquant metadata of an .onnx/.ort file; a file without it is an error."""
    return _checked_metadata(_load_graph(path), Path(path))


def _load_graph(path):
    """The ModelProto of an .onnx file, its external weights not read."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise RnnquantError(f"{p}: no such file")
    try:
        return onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any protobuf failure means not an ONNX model
        raise RnnquantError(f"{p}: not a readable ONNX model ({type(e).__name__})") from None


def _checked_metadata(proto, p: Path) -> dict[str, str]:
    meta = {m.key: m.value for m in proto.metadata_props}
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise RnnquantError(f"{p}: no rnnquant metadata (missing {missing[0]!r}); export it with `rnnquant export`")
    try:
        states = json.loads(meta["states"])
        ok = isinstance(states, list) and all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("shape"), list)
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2**31 for d in s["shape"]) for s in states)
        if not ok or int(meta["vocab_size"]) < 1:
            raise ValueError
    except (ValueError, TypeError):
        raise RnnquantError(f"{p}: corrupt rnnquant metadata (states / vocab_size)") from None
    return meta


def op_types(graph) -> set[str]:
    """The operator types of a GraphProto and of its subgraphs (a Loop's body)."""
    def ops(g):
        for n in g.node:
            yield n.op_type
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    yield from ops(sub)

    return set(ops(graph))


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo flags of the x86 kernels that run U8S8 exactly


def cpu_flags() -> set[str] | None:
    """This CPU's /proc/cpuinfo flags; None where there is no /proc/cpuinfo to read."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), None)


def u8s8_saturates_here() -> bool:
    """Whether this is an x86 CPU without VNNI or AMX, where ONNX Runtime's U8S8 kernel saturates
    int16 pair sums (logits off, perplexity 1-50 % off). False where the flags cannot be read and
    off x86 (ARM included: not checked there)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    flags = cpu_flags()
    return flags is not None and not flags & set(VNNI_FLAGS)


def check_int8_kernels(int8_weights: str | None, path) -> None:
    """Refuse a graph with int8 weights (``rnnquant export --cpu vnni``: U8S8 MatMulInteger; the
    graph's ``int8_weights`` metadata) where ``u8s8_saturates_here``."""
    if int8_weights == "int8" and u8s8_saturates_here():
        raise RnnquantError(f"{path}: exported with --cpu vnni (U8S8 int8 matmuls), which ONNX Runtime gets wrong on this CPU "
                            "(no AVX512-VNNI / AVX-VNNI / AMX: its int16 pair sums saturate); re-export with --cpu any")


class OrtLM:
    def __init__(self, path, threads: int | None = None, tokenizer: str | None = None):
        release_large_frees()
        self.path = Path(path)
        self.meta = read_metadata(path) if self.path.suffix == ".onnx" else self._ort_metadata()
        self.states = json.loads(self.meta["states"])
        self.vocab_size = int(self.meta["vocab_size"])
        check_int8_kernels(self.meta.get("int8_weights"), self.path)
        self.custom_ops = self.meta.get("custom_ops")  # `export --fused`: rnnquant's op library, built on first use
        if self.custom_ops not in (None, ortops.DOMAIN):
            raise RnnquantError(f"{self.path}: needs custom ops of domain {self.custom_ops!r}, which rnnquant does not have")
        self.session = self._session(self.path, threads, prepack=True)
        self.output_names = [o.name for o in self.session.get_outputs()]
        pre = prefill_path(self.path)
        if self.path.suffix == ".ort" and pre.with_suffix(".ort").is_file():  # an .ort step graph prefers an .ort prefill graph
            pre = pre.with_suffix(".ort")
        self.prefill_session = None
        self.prefill_window = 2**62  # a Loop prefill takes any length
        self.prefill_last_only = False  # the graph returns the last position's logits only
        if pre.is_file():
            self._open_prefill(pre, threads)
        self.tokenizer = self._tokenizer(tokenizer)

    def _open_prefill(self, pre: Path, threads: int | None) -> None:
        """Check the prefill graph against the step graph, read its form and open its session (the
        graph read once, for its metadata and its operators; an .ort's from the .onnx beside it)."""
        proto = _load_graph(pre.with_suffix(".onnx"))
        pre_meta = _checked_metadata(proto, pre.with_suffix(".onnx"))
        if any(pre_meta.get(k) != self.meta.get(k) for k in ("model_fingerprint", "recipe", "states", "tokenizer_sha256")):
            raise RnnquantError(f"{pre}: this prefill graph was exported with another model or recipe than {self.path.name}; re-export")
        parallel = pre_meta.get("prefill") == "parallel"
        if parallel:
            self.prefill_window = min(PREFILL_WINDOW, int(pre_meta["prefill_max_tokens"]))
        self.prefill_last_only = pre_meta.get("prefill_logits") == "last"
        prepack = not parallel or "MatMulNBits" in op_types(proto.graph)
        del proto
        self.prefill_session = self._session(pre, threads, prepack)

    def _session(self, path: Path, threads: int | None, prepack: bool):
        """An ONNX Runtime CPU session. ``prepack=False`` for a parallel prefill graph without
        MatMulNBits: its MatMul / MatMulInteger have a row per prompt token, so packing their weights
        on the fly costs nothing measurable, while pre-packing makes a second copy of the weights
        beside the step session's (unpacked, ORT reads the initializers from the mapped weights
        file the two sessions share: docs/RESULTS.md §20). MatMulNBits has no fast unpacked path."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # failures are reported as one-line errors below, not ORT's log
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not prepack:
            opts.add_session_config_entry("session.disable_prepacking", "1")
        if self.custom_ops:
            ortops.register(opts)
        try:
            return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise RnnquantError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:160]})") from None

    def _ort_metadata(self) -> dict[str, str]:
        """An .ort file keeps the metadata of the .onnx it was converted from, stored beside it."""
        side = self.path.with_suffix(".onnx")
        return read_metadata(side)

    def _tokenizer(self, path):
        f = Path(path) if path else find_tokenizer(self.path.parent)
        if f is None or not f.is_file():
            raise RnnquantError(f"{f or self.path.parent / HF_FILE}: missing tokenizer.json beside the model")
        if hashlib.sha256(f.read_bytes()).hexdigest() != self.meta["tokenizer_sha256"]:
            raise RnnquantError(f"{f}: tokenizer does not match the one the model was exported with")
        return load_tokenizer(f, int(self.meta["vocab_size"]))

    # --- the step contract, in numpy ------------------------------------------------
    def init_state(self, batch: int) -> list[np.ndarray]:
        return initial_state(self.states, batch)

    def step(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = {"input_ids": np.asarray(ids, dtype=np.int64)} | {s["name"]: v for s, v in zip(self.states, state)}
        logits, *new = self.session.run(self.output_names, feeds)
        return logits, new

    def prefill(self, ids: np.ndarray, state: list[np.ndarray], all_logits: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
        """ids [B, T] -> logits [B, T, V] (``all_logits=False``: [B, 1, V], the last position) and the
        state after T tokens: the prefill graph when it was exported beside the step graph (and
        returns the logits asked for), else the step graph token by token."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.prefill_session is not None and not (all_logits and self.prefill_last_only):
            pieces = []
            for start in range(0, max(ids.shape[1], 1), self.prefill_window):  # bounded memory for a parallel prefill
                feeds = {"prompt_ids": ids[:, start : start + self.prefill_window]} | {s["name"]: v for s, v in zip(self.states, state)}
                logits, *state = self.prefill_session.run(None, feeds)
                pieces.append(logits[:, None] if self.prefill_last_only else logits)
            return (np.concatenate(pieces, 1) if all_logits else pieces[-1][:, -1:]), state
        out = []
        for t in range(ids.shape[1]):
            logits, state = self.step(ids[:, t], state)
            out.append(logits)
        return (np.stack(out, 1) if all_logits else out[-1][:, None]), state

    def encode(self, text: str) -> list[int]:
        ids = encode_prompt(self.tokenizer, text)
        if max(ids) >= self.vocab_size:
            raise RnnquantError(f"the prompt has token id {max(ids)} beyond the model's vocabulary ({self.vocab_size})")
        return ids

    def generate(self, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, seed: int = 0):
        """Prefill the prompt, then step (``BoundStep``) and sample; yields token ids."""
        rng = np.random.default_rng(seed)
        logits, state = self.prefill(np.array([prompt_ids]), self.init_state(1), all_logits=False)
        logits, bound = logits[:, -1], BoundStep(self, state)
        for i in range(max_new_tokens):
            nxt = sample(logits[0], temperature, top_k, rng)
            yield nxt
            if i + 1 < max_new_tokens:  # the last token's logits are never read
                logits = bound.step(nxt)

    def perplexity(self, ids, window: int = 512, batch_size: int = 8, progress: bool = False,
                   logits_bytes: int = 256 * 2**20) -> tuple[float, int]:
        """Same windows as ``rnnquant.eval.perplexity_ids``, computed through the prefill graph
        (or the step graph when no prefill graph was exported), up to ``batch_size`` windows per
        call and fewer where their float32 logits would pass ``logits_bytes`` (8 windows of 512
        positions of a 50,280-word vocabulary are 822 MB, held about three times over)."""
        from tqdm import tqdm

        ids = np.asarray(ids, dtype=np.int64)
        spans = windows(len(ids), window)
        groups: dict[int, list] = {}
        for s, e in spans:
            groups.setdefault(e - s, []).append(ids[s:e])
        nll, count = 0.0, 0
        bar = tqdm(total=len(spans), desc="ppl (onnx)", unit="win", disable=not progress, leave=False)
        for length, seqs in groups.items():
            per_call = max(1, min(batch_size, logits_bytes // (4 * max(length - 1, 1) * self.vocab_size)))  # logits [B, length - 1, V]
            for i in range(0, len(seqs), per_call):
                batch = np.stack(seqs[i : i + per_call])
                logits, _ = self.prefill(batch[:, :-1], self.init_state(len(batch)))  # [B, T-1, V]
                nll += float(token_nll(logits, batch[:, 1:]).sum())
                count += batch.size - len(batch)
                bar.update(len(batch))
        bar.close()
        return perplexity_of(nll, count), count

    def perplexity_by_position(self, ids, edges=POSITION_EDGES, chunk: int = 1024, progress: bool = False) -> list[dict]:
        """``rnnquant.eval.perplexity_by_position`` through the exported graphs: one stream, batch 1,
        the state carried across the whole text, ``chunk`` positions per ``prefill`` call."""
        from tqdm import tqdm

        ids = np.asarray(ids, dtype=np.int64)
        buckets, state = PositionBuckets(edges), self.init_state(1)
        for s in tqdm(range(0, len(ids) - 1, chunk), desc="ppl by position (onnx)", unit="chunk", disable=not progress, leave=False):
            x, y = ids[s : min(s + chunk, len(ids) - 1)], ids[s + 1 : s + chunk + 1]
            logits, state = self.prefill(x[None], state)  # [1, len(x), V]
            buckets.add(s + 1, token_nll(logits[0], y))
        return buckets.result()


class BoundStep:
    """The step graph for one sequence through two ``IOBinding``s used in turn (ping-pong): each
    reads one pre-bound state buffer set and writes the other, plus one pre-bound logits buffer,
    so a token costs one ``run_with_iobinding``: no output allocation, no feed dict, no binding
    call. The same numbers as ``OrtLM.step`` (tested bit for bit).

        bound = BoundStep(lm, state)
        logits = bound.step(token)  # [1, V], overwritten by the next step
    """

    def __init__(self, lm: "OrtLM", state: list[np.ndarray]):
        self.session = lm.session
        self.ids = np.zeros(1, dtype=np.int64)
        self.logits = np.empty((1, lm.vocab_size), dtype=np.float32)
        self.sets = [[np.array(v, order="C") for v in state], [np.empty_like(v, order="C") for v in state]]
        names = [s["name"] for s in lm.states]
        self.bindings = []
        for src, dst in ((self.sets[0], self.sets[1]), (self.sets[1], self.sets[0])):
            b = self.session.io_binding()
            _bind(b.bind_input, "input_ids", self.ids)
            _bind(b.bind_output, "logits", self.logits)
            for name, a, z in zip(names, src, dst):
                _bind(b.bind_input, name, a)
                _bind(b.bind_output, f"new_{name}", z)
            self.bindings.append(b)
        self.turn = 0

    @property
    def state(self) -> list[np.ndarray]:
        """The state after the last step (buffers the next step reads: copy to keep)."""
        return self.sets[self.turn]

    def step(self, token: int) -> np.ndarray:
        self.ids[0] = token
        self.session.run_with_iobinding(self.bindings[self.turn])
        self.turn ^= 1
        return self.logits


def _bind(method, name: str, array: np.ndarray) -> None:
    method(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)


def token_nll(logits: np.ndarray, targets: np.ndarray, rows: int = 64) -> np.ndarray:
    """-log softmax(logits)[target] (float64) for logits [..., V] and targets [...], ``rows``
    positions at a time: a whole batch's float64 log-softmax would be 16 bytes per logit
    (2.6 GB for 8 x 512 positions of a 50,280-word vocabulary)."""
    flat, tgt = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    out = np.empty(len(tgt))
    for s in range(0, len(tgt), rows):
        out[s : s + rows] = -np.take_along_axis(log_softmax(flat[s : s + rows]), tgt[s : s + rows, None], -1)[:, 0]
    return out.reshape(targets.shape)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def sample(logits: np.ndarray, temperature: float, top_k: int, rng) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if 0 < top_k < len(z):
        z[z < np.partition(z, -top_k)[-top_k]] = -np.inf
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))
