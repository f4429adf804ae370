"""Export a model's O(1) ``step`` to ONNX: token + state in, logits + new state out.

The graph is traced from the adapter's own ``step`` (float, or with QLinear modules that lower to
integer ONNX ops, see ``qops``); no sequence loop, constant work per token. Inputs: ``input_ids``
int64 [batch] and one tensor per state (``StateSpec`` names); outputs: ``logits`` [batch, vocab]
and ``new_<state>``. ``metadata_props`` carries what a runner needs (see ``METADATA_KEYS``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import types
import warnings
from pathlib import Path

import torch

from rnnquant import __version__
from rnnquant.errors import RnnquantError
from rnnquant.io import atomic_path
from rnnquant.kernels.fused import FUSED_STEPS, fused_export, uses_fused_ops
from rnnquant.kernels import ortops
from rnnquant.tokenizer import stored_name

METADATA_KEYS = ("rnnquant_version", "graph", "architecture", "config", "recipe", "prune", "calib_fingerprint", "model_fingerprint",
                 "origin_fingerprint", "states", "vocab_size", "bos_token_id", "eos_token_id", "tokenizer_sha256", "int8_weights")


class _StepGraph(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, *state):
        logits, new_state = self.model.step(input_ids, tuple(state))
        return (logits, *new_state)


class _PrefillGraph(_StepGraph):
    def __init__(self, model, last_only: bool):
        super().__init__(model)
        self.last_only = last_only

    def forward(self, prompt_ids, *state):
        logits, new_state = self.model.forward_with_state(prompt_ids, tuple(state), last_only=self.last_only)
        return (logits, *new_state)


class _WeightsAsInputs(torch.nn.Module):
    """``graph`` with the export-form weights passed in after its own inputs (and ignored: the
    lowered modules read the same tensors). The tracer maps a tensor to its graph input wherever it
    is used, so the weights become named graph inputs, not Constants serialized into the traced
    proto (the TorchScript exporter holds three copies of its Constants while it serializes them),
    and ``WeightsFile.take`` writes them from the tensors themselves."""

    def __init__(self, graph: torch.nn.Module, n_inputs: int):
        super().__init__()
        self.graph, self.n_inputs = graph, n_inputs

    def forward(self, *args):
        return self.graph(*args[: self.n_inputs])


_EXPORT_FIELDS = {"w8": ("codes", "scales"), "w8packed": ("codes", "scales", "colsum"), "nbits": ("codes", "scales", "zero_points"),
                  "nbits_packed": ("codes", "scales", "zero_points")}
_FLOAT_FIELDS = {"_weight_t": "weight_t", "_w_float_t": "w_float_t", "_rotation": "rotation", "_rows": "weight", "_row_scales": "scales", "_cols": None}  # (_cols: the tied head's weight_t)


def _export_weights(model) -> dict[str, torch.Tensor]:
    """The large tensors the lowered modules read (``_lowered``): every prepared QLinear's export
    form and the float Linears' and embeddings' tables, by a name from the module path."""
    from rnnquant.quant.qlinear import QLinear

    out = {}
    for name, m in model.named_modules():
        kind, *fields = getattr(m, "_export", (None,)) if isinstance(m, QLinear) else (None,)
        named = [(f"{name}.{field}", t) for field, t in zip(_EXPORT_FIELDS.get(kind, ()), fields)]
        if m.__dict__.get("_w8_blocks"):  # its codes are read block by block (``qops.w8_column_blocks``), never whole
            named = [(k, t) for k, t in named if not k.endswith(".codes")] + [(f"{name}.codes_{i}", b) for i, b in enumerate(m._w8_blocks)]
        named += [(f"{name}.{field}", m.__dict__[attr]) for attr, field in _FLOAT_FIELDS.items() if field and attr in m.__dict__]
        for key, t in named:
            if isinstance(t, torch.Tensor) and t.numel() * t.element_size() >= WEIGHTS_MIN_BYTES:
                out[key] = t
    return out


def state_metadata(model) -> list[dict]:
    """The graph's state inputs as data: what a runtime needs to build the initial state itself."""
    return [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype).removeprefix("torch."), "init": s.init}
            for s in model.arch_spec().states]


def _prune_spec(model) -> str:
    spec = (model.provenance.prune_report or {}).get("spec")
    return spec if isinstance(spec, str) else ""


def metadata(model, tokenizer_path: Path | None) -> dict[str, str]:
    pv = model.provenance
    recipe, cfg = pv.recipe, model.config
    return {
        "rnnquant_version": __version__,
        "graph": "step",
        "architecture": model.model_type,
        "config": json.dumps(cfg, sort_keys=True),
        "recipe": recipe.to_json() if recipe is not None else "float",
        "calib_fingerprint": pv.calib_fingerprint or "",
        "model_fingerprint": pv.graph_fingerprint,
        "origin_fingerprint": pv.float_fingerprint or "",  # the unpruned float model, for `compare`
        "prune": _prune_spec(model),
        "states": json.dumps(state_metadata(model)),
        "vocab_size": str(model.vocab_size),
        "bos_token_id": str(cfg.get("bos_token_id", 0)),
        "eos_token_id": str(cfg.get("eos_token_id", 0)),
        "tokenizer_sha256": hashlib.sha256(tokenizer_path.read_bytes()).hexdigest() if tokenizer_path else "",
    }


EMBEDDING_TABLES = ("shared", "own")
WEIGHTS_MIN_BYTES = 1024  # smaller initializers (shapes, scalars, tiny scale vectors) stay in the graph
MAP_ALIGN_BYTES, MAP_MIN_BYTES = 2**16, 2**20  # tensors of 1 MiB and more start at a 64 KiB boundary (onnx's own writer's rule)


def _initializers(graph):
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            for g in (a.g, *a.graphs) if a.HasField("g") else a.graphs:
                yield from _initializers(g)


def constants_to_initializers(graph) -> None:
    """Large ``Constant`` nodes (what the tracer still folds: small float parameters, a dequantized table)
    become initializers of the same name, so ``write_weights`` can move them out too."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    for node in list(graph.node):
        value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None and value.data_type != onnx.TensorProto.STRING:
            if math.prod(value.dims) * tensor_dtype_to_np_dtype(value.data_type).itemsize >= WEIGHTS_MIN_BYTES:  # its size, not a copy to measure
                tensor = graph.initializer.add()
                tensor.CopyFrom(value)
                tensor.name = node.output[0]
                graph.node.remove(node)


class WeightsFile:
    """The ONNX external-data file the graphs of one export share, written graph by graph.

    ``move_out(proto)`` moves every initializer of ``WEIGHTS_MIN_BYTES`` or more into the file,
    the proto keeping a reference (location, offset, length; ONNX external data, located by its
    name beside the graphs): bytes that two graphs hold, as a step graph and its prefill graph hold
    the same weights, are stored once. ``take(proto)`` does that and returns a copy of the proto
    without the bytes, for the caller to keep instead: protobuf (upb) frees a message's memory only
    with the whole message, so a proto emptied in place still holds all of it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close(), written across calls
        self._stored: dict[bytes, int] = {}  # sha256 of the bytes -> offset in the file

    def _moveable(self, proto) -> list:
        """The initializers of ``WEIGHTS_MIN_BYTES`` or more still held in ``proto``."""
        import onnx
        from onnx import numpy_helper

        tensors = []
        for t in _initializers(proto.graph):
            if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type == onnx.TensorProto.STRING:
                continue
            if not t.HasField("raw_data"):  # typed fields (float_data, ...) -> the raw little-endian bytes
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
            if len(t.raw_data) >= WEIGHTS_MIN_BYTES:
                tensors.append((t, None))
        return tensors

    def _inputs_as_initializers(self, proto, tensors: dict[str, torch.Tensor]) -> list:
        """Graph inputs named in ``tensors`` become initializers whose bytes will be the tensors',
        written straight from their memory (never copied into a proto; a transposed view is laid
        out one tensor at a time, as it is written)."""
        import onnx
        from onnx import helper

        graph, pending = proto.graph, []
        for vi in [i for i in graph.input if i.name in tensors]:
            arr = tensors[vi.name].detach()
            t = graph.initializer.add()
            t.name, t.data_type = vi.name, helper.np_dtype_to_tensor_dtype(arr.numpy().dtype)
            t.dims.extend(arr.shape)
            t.data_location = onnx.TensorProto.EXTERNAL  # (its reference is written with its bytes)
            pending.append((t, arr))
            graph.input.remove(vi)
        return pending

    def _write_all(self, pending: list) -> None:
        """Write [(initializer, tensor or None: its raw_data)] and point each initializer at its bytes:
        the 64 KiB-aligned tensors first, then the rest (a small tensor between two large ones would
        cost up to 64 KiB of padding: 2.7 MB of a mamba-130m-shape int8 file, written in graph order)."""
        import onnx

        size = lambda p: p[1].numel() * p[1].element_size() if p[1] is not None else len(p[0].raw_data)  # noqa: E731
        for t, arr in sorted(pending, key=lambda p: size(p) < MAP_MIN_BYTES):
            raw = arr.contiguous().numpy() if arr is not None else t.raw_data
            n = size((t, arr))
            key = hashlib.sha256(raw).digest()
            if key not in self._stored:
                f = self._file
                f.write(b"\0" * (-f.tell() % (MAP_ALIGN_BYTES if n >= MAP_MIN_BYTES else 64)))
                self._stored[key] = f.tell()
                f.write(raw)
            if arr is None:
                t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            for k, v in (("location", self.path.name), ("offset", self._stored[key]), ("length", n)):
                t.external_data.add(key=k, value=str(v))

    def move_out(self, proto) -> None:
        self._write_all(self._moveable(proto))

    def take(self, proto, tensors: dict[str, torch.Tensor] | None = None):
        """Move the graph inputs named in ``tensors`` and every large initializer into the file,
        then return a fresh copy of what is left (kilobytes): drop ``proto`` after this."""
        import onnx

        pending = self._inputs_as_initializers(proto, tensors or {})
        constants_to_initializers(proto.graph)
        self._write_all(pending + self._moveable(proto))
        light = onnx.ModelProto()
        light.ParseFromString(proto.SerializeToString())
        return light

    def close(self) -> None:
        self._file.close()


def write_weights(protos, data_file: Path) -> None:
    """Move the weights of every graph in ``protos`` into ``data_file`` (``WeightsFile.move_out``)."""
    w = WeightsFile(data_file)
    try:
        for proto in protos:
            w.move_out(proto)
    finally:
        w.close()


@contextlib.contextmanager
def staged_weights(weights: Path):
    """A ``WeightsFile`` in a temporary directory beside the outputs (``save_graphs`` writes the
    graphs there, checks them and renames all into place); removed with whatever is left in it."""
    weights = Path(weights)
    created = [d for d in (weights.parent, *weights.parent.parents) if not d.exists()]  # deepest first
    try:
        weights.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{weights.name}.", dir=weights.parent))
        w = WeightsFile(tmp_dir / weights.name)
    except OSError as e:
        raise RnnquantError(f"cannot write to {weights.parent}: {e.strerror or e}") from None
    done = False
    try:
        yield w
        done = True
    finally:
        w.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if not done:  # a failed export leaves no output directory it made either
            _remove_empty(created)


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:
        try:
            d.rmdir()
        except OSError:  # not empty (or gone): keep it and everything above it
            return


def save_graphs(graphs: list[tuple], weights: Path, staged: WeightsFile | None = None) -> None:
    """Write ``graphs`` ([(proto, path, what)], the step graph last) and their shared ``weights``
    file atomically: everything is written, checked (onnx.checker on the path, then an ONNX Runtime
    session) in a temporary directory beside the outputs, then renamed, the weights first and the
    step graph last, so a step graph under its final name always has its weights and its prefill.
    ``staged``: the weights file the graphs' weights already went to, as they were traced."""
    if staged is None:
        with staged_weights(weights) as w:
            return save_graphs(graphs, weights, w)
    import onnx

    try:
        for proto, _, _ in graphs:
            staged.move_out(proto)  # (nothing left to move for graphs that went through staged.take)
        staged.close()
        for proto, path, what in graphs:
            tmp = staged.path.parent / Path(path).name
            onnx.save(proto, str(tmp))
            try:
                onnx.checker.check_model(str(tmp), full_check=True)  # by path: reads the external weights
            except onnx.checker.ValidationError as e:
                raise RnnquantError(f"{what} fails the ONNX checker: {str(e).splitlines()[0]}") from None
            _check_loads(tmp)
        os.replace(staged.path, weights)
        for _, path, _ in graphs:
            os.replace(staged.path.parent / Path(path).name, path)
    except OSError as e:
        raise RnnquantError(f"cannot write {Path(weights).parent}: {e.strerror or e}") from None


def _check_loads(path: Path) -> None:
    """An exported graph ONNX Runtime cannot load is an error, never a file left behind. Loaded
    without pre-packing: ORT maps the external weights and touches none of them (a float
    mamba-130m-shape step graph: 0.06 GB instead of 0.71 GB of packed copies beside the model)."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.add_session_config_entry("session.disable_prepacking", "1")
    if uses_fused_ops(onnx.load(str(path), load_external_data=False)):  # `export --fused`: rnnquant's op library
        ortops.register(opts)
    try:
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise RnnquantError(f"ONNX Runtime cannot load the exported graph: {str(e).splitlines()[0][:200]}") from None


def _trace(module, args, inputs: list[str], outputs: list[str], dynamic_axes: dict, opset: int, nbits: bool, fused: bool = False):
    import onnx

    with tempfile.TemporaryDirectory(prefix="rnnquant-trace-") as td, warnings.catch_warnings(), fused_export(fused):
        warnings.simplefilter("ignore")
        tmp = Path(td) / "graph.onnx"
        torch.onnx.export(
            module.eval(), args, str(tmp), input_names=inputs, output_names=outputs, dynamic_axes=dynamic_axes,
            opset_version=opset, dynamo=False, custom_opsets={"com.microsoft": 1} if nbits else None, do_constant_folding=True,
        )
        return onnx.load(str(tmp))


@contextlib.contextmanager
def _lowered(model, embedding_table: str = "shared"):
    """While tracing, every QLinear / QEmbedding runs its ONNX lowering (``qops``) as its forward,
    and every float nn.Linear / nn.Embedding reads its table through a detached view the trace
    takes as a graph input (``_export_weights``): the modules stay ignorant of the exporter.
    ``embedding_table`` (one of ``EMBEDDING_TABLES``): whether a tied embedding gathers from the
    head's own table ("shared": stored once) or from a row-major copy ("own": a session can then
    release the head's table once its matmul has packed it; the copy is read a row at a time)."""
    from rnnquant.quant.qlinear import QEmbedding, QLinear

    from .qops import embedding_forward, gathers_codes, linear_forward, own_code_rows, qembedding_forward, qlinear_forward, w8_column_blocks

    def lowering(m):
        for kind, forward in ((QLinear, qlinear_forward), (QEmbedding, qembedding_forward), (torch.nn.Linear, linear_forward),
                              (torch.nn.Embedding, embedding_forward)):
            if isinstance(m, kind):
                return forward
        return None

    swapped = [m for m in model.modules() if lowering(m) is not None]
    for m in swapped:
        m.forward = types.MethodType(lowering(m), m)
        if isinstance(m, QEmbedding) and m.owned:  # an untied table: its own int8 codes, row-major, and per-row scales
            m._rows, m._row_scales = m.table.qweight.q, m.table.qweight.scale[:, 0]
        elif isinstance(m, QEmbedding) and not gathers_codes(m.table):  # the float table only where no codes can be gathered (412 MB at mamba-1.4b shape)
            m._table = m.table.w_deq
        elif isinstance(m, QEmbedding) and embedding_table == "own":
            m._rows = own_code_rows(m.table)
        if isinstance(m, QLinear):
            m._w_float_t, m._rotation = m.w_float.detach().T, m.rotation.detach() if m.rotation is not None else None
        if isinstance(m, torch.nn.Linear):
            m._weight_t = m.weight.detach().T  # a view: laid out [in, out] only as its bytes are written
    gathered = {id(m.table) for m in swapped if isinstance(m, QEmbedding) and not m.owned and gathers_codes(m.table) and embedding_table == "shared"}  # heads whose codes a lookup reads
    for m in swapped:
        blocks = w8_column_blocks(m._export[1]) if isinstance(m, QLinear) and getattr(m, "_export", (None,))[0] == "w8" and id(m) not in gathered else []
        if len(blocks) > 1:
            m._w8_blocks = blocks
    heads = {id(m.weight): m._weight_t for m in swapped if isinstance(m, torch.nn.Linear)}
    for m in swapped:
        if isinstance(m, torch.nn.Embedding):  # tied to a float head and shared: gather the head's columns, one table in the graph
            shared = id(m.weight) in heads and embedding_table == "shared"
            m._rows, m._cols = (None, heads[id(m.weight)]) if shared else (m.weight.detach(), None)
    try:
        yield
    finally:
        for m in swapped:
            del m.forward
            for attr in ("_table", "_w8_blocks", *_FLOAT_FIELDS):
                m.__dict__.pop(attr, None)


@torch.no_grad()
def export_step(model, out_path, tokenizer_path=None, opset: int = 17, force: bool = True, prefill: bool = True,
                prefill_logits: str = "all", int8_weights: str = "uint8", embedding_table: str = "shared", fused: bool = False) -> Path:
    """Trace ``model.step`` to ``out_path`` (atomically), check it, write the prefill graph
    (``<stem>.prefill.onnx``: a trace of ``forward_with_state`` where the model has a parallel
    one, else a Loop over the step graph; ``prefill_logits`` "all" positions or the "last" only)
    and ``tokenizer.json`` beside it. ``int8_weights``: how W8 Linears' codes are stored, "uint8"
    (U8U8 MatMulInteger, exact on every CPU) or "int8" (U8S8: faster on VNNI / AMX CPUs, wrong on
    AVX2-only x86; see ``qops``). ``embedding_table``: a tied embedding's lookup table, "shared"
    with the head (stored once) or "own" (a row-major copy: a larger file, a leaner session; see
    ``_lowered``). ``fused``: the step graph runs rnnquant's custom ops where the model's step has
    them, and its int8 (with int8 weights) and 4-bit A8 Linears as Int8Linear / Int4Linear
    (``rnnquant.kernels.ortops``; the prefill graph stays stock ops, over the same weights)."""
    from .qops import INT8_WEIGHTS

    from rnnquant.quant.qlinear import QEmbedding, QLinear

    out_path = Path(out_path)
    if out_path.suffix != ".onnx":
        raise RnnquantError(f"{out_path}: the output must end in .onnx")
    if prefill_logits not in ("all", "last"):
        raise RnnquantError(f"prefill logits must be 'all' or 'last', not {prefill_logits!r}")
    if int8_weights not in INT8_WEIGHTS:
        raise RnnquantError(f"int8 weights must be one of {', '.join(INT8_WEIGHTS)}, not {int8_weights!r}")
    if embedding_table not in EMBEDDING_TABLES:
        raise RnnquantError(f"embedding table must be one of {', '.join(EMBEDDING_TABLES)}, not {embedding_table!r}")
    tables = {id(e.table) for e in model.modules() if isinstance(e, QEmbedding) and e.owned}  # gathered from their codes as they are: no matmul form
    qlinears = [m for m in model.modules() if isinstance(m, QLinear) and id(m) not in tables]
    for m in qlinears:
        from .qops import prepare

        prepare(m, int8_weights, fused)
    kinds = {m._export[0] for m in qlinears if hasattr(m, "_export")}
    nbits = "nbits" in kinds  # com.microsoft's MatMulNBits in the step graph; the prefill's also stands for Int4Linear there
    names = [s.name for s in model.arch_spec().states]
    state = model.init_state(1)
    outputs = ["logits", *[f"new_{n}" for n in names]]
    if out_path.exists() and not force:
        raise RnnquantError(f"{out_path} already exists (use --force to overwrite)")
    inputs = ["input_ids", *names]
    prefill_proto = None
    from .prefill import weights_path

    # each graph's weights go to the weights file as soon as it is traced, the proto kept without
    # them: the traced graphs never hold the weights in memory together (at mamba-1.4b shape each
    # held 1.4 GB of int8 codes, twice over once its Constants became initializers)
    with staged_weights(weights_path(out_path)) as staged:
        with _lowered(model, embedding_table):
            weights = _export_weights(model)
            step = _trace(_WeightsAsInputs(_StepGraph(model), len(inputs)), (torch.tensor([0]), *state, *weights.values()), [*inputs, *weights],
                          outputs, {k: {0: "batch"} for k in inputs + outputs}, opset, nbits, fused)
            if fused and not uses_fused_ops(step):
                raise RnnquantError(f"--fused: {model.model_type}'s step has no fused op (rnnquant's are for {FUSED_STEPS})")
            proto = staged.take(step, weights)
            del step
            if prefill and model.parallel_prefill:
                inputs = ["prompt_ids", *names]
                last = prefill_logits == "last"
                axes = {k: {0: "batch"} for k in inputs + outputs} | {"prompt_ids": {0: "batch", 1: "seq"}} | ({} if last else {"logits": {0: "batch", 1: "seq"}})
                traced = _trace(_WeightsAsInputs(_PrefillGraph(model, last), len(inputs)), (torch.tensor([[0, 0]]), *state, *weights.values()),
                                [*inputs, *weights], outputs, axes, opset, nbits or "nbits_packed" in kinds)
                prefill_proto = staged.take(traced, weights)
                del traced
            del weights
        for m in qlinears:  # the weights file holds the export-form codes now: drop the model's copies before the checks load a session
            m.__dict__.pop("_export", None)
        return finish_step_graph(proto, model, out_path, tokenizer_path, force=force, prefill=prefill, prefill_proto=prefill_proto,
                                 prefill_logits=prefill_logits, staged=staged, int8_weights=int8_weights)


def finish_step_graph(proto, model, out_path: Path, tokenizer_path=None, force: bool = True, prefill: bool = True,
                      recipe: str | None = None, prefill_proto=None, prefill_logits: str = "all", staged: WeightsFile | None = None,
                      int8_weights: str | None = None) -> Path:
    """Add rnnquant's metadata to a step graph and write ``tokenizer.json``, then, as one atomic
    set (``save_graphs``), the weights both graphs share (``<stem>.onnx.data``), the prefill graph
    (``<stem>.prefill.onnx``: ``prefill_proto`` when given, else a Loop over the step graph) and,
    last, the step graph: a step graph under its final name means the whole export is there, even
    after a SIGKILL anywhere in between. ``staged``: the weights file (``staged_weights``) the
    graphs' weights already went to. ``int8_weights``: the W8 MatMulIntegers' weight storage, recorded for the runner
    (absent from graphs whose int8 ops ONNX Runtime made, ``--format qoperator``)."""
    from .prefill import build_prefill, parallel_prefill_metadata, prefill_path, weights_path

    out_path = Path(out_path)
    if out_path.exists() and not force:
        raise RnnquantError(f"{out_path} already exists (use --force to overwrite)")
    meta = metadata(model, Path(tokenizer_path) if tokenizer_path else None) | ({"recipe": recipe} if recipe else {}) | ({"int8_weights": int8_weights} if int8_weights else {})
    meta |= {"custom_ops": ortops.DOMAIN} if uses_fused_ops(proto) else {}  # the runner registers their library
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.doc_string = f"rnnquant {__version__} step graph: O(1) work per token"
    constants_to_initializers(proto.graph)  # before a Loop prefill is built from it: its body then reads them from outside
    if prefill_proto is not None:
        constants_to_initializers(prefill_proto.graph)
    for stale in (out_path, prefill_path(out_path), weights_path(out_path), out_path.with_suffix(".ort"), prefill_path(out_path).with_suffix(".ort"),
                  prefill_path(out_path).with_name(f"{prefill_path(out_path).name}.data")):  # (the last: an earlier layout's)
        if stale.is_file():  # never leave an earlier export's graphs beside this one (`--ort` writes new ones)
            stale.unlink()
    if prefill_proto is not None:
        for k, v in (meta | parallel_prefill_metadata(model) | {"prefill_logits": prefill_logits}).items():
            prefill_proto.metadata_props.add(key=k, value=v)
        prefill_proto.doc_string = f"rnnquant {__version__} prefill graph: forward_with_state, chunked parallel scan"
    elif prefill:
        prefill_proto = build_prefill(proto, last_only=prefill_logits == "last")
    if tokenizer_path is not None:
        with atomic_path(out_path.parent / stored_name(tokenizer_path)) as tmp_tok:
            shutil.copyfile(tokenizer_path, tmp_tok)
    graphs = [(prefill_proto, prefill_path(out_path), "prefill graph")] if prefill_proto is not None else []
    save_graphs([*graphs, (proto, out_path, "exported graph")], weights_path(out_path), staged)
    return out_path
