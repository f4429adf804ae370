"""Selective scan (Mamba's S6): the forms used by ``forward``, the prefill graph and ``step``.

Glossary (Gu & Dao 2023, "Mamba", Algorithm 2):
    u   [B, T, E]  input to the SSM (x after conv + SiLU), E = d_inner
    dt  [B, T, E]  step size Delta after softplus
    A   [E, N]     state matrix (diagonal, negative), N = d_state
    Bm  [B, T, N]  input matrix B_t (input dependent)
    Cm  [B, T, N]  output matrix C_t (input dependent)
    D   [E]        skip connection
    h   [B, N, E]  the recurrent state, d_inner last (see below)
Discretisation (zero-order hold on A, Euler on B):  dA = exp(dt * A),  dB u = dt * B * u
Recurrence:  h_t = dA_t * h_{t-1} + dB_t u_t;   y_t = <h_t, C_t> + D * u_t

The recurrence is a first-order linear one, so pairs (a, b) meaning "h -> a h + b" compose
associatively: (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2). ``selective_scan_parallel`` uses
that for a graph with no loop over time (the ONNX prefill graph).

Layout: h is [B, N, E] (Hugging Face's cache is [B, E, N]). In the step every broadcast is then
a scalar or a length-E row against contiguous length-E rows (dt [B,1,E] x A^T [N,E], B_t [B,N,1]
x (dt u) [B,1,E]), which ONNX Runtime runs as whole-row loops instead of 1,536 spans of 16:
measured 12 % off a mamba-130m-shape int8 step (docs/RESULTS.md). The C_t readout is a matmul
C_t^T h ([B,1,N] @ [B,N,E]): one pass over h, where a product and a strided sum were two (§23).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SCAN_CHUNK = 16  # tokens per chunk of the parallel scan
# doublings across chunks: exact up to SCAN_CHUNK * 2**14 = 262,144 tokens per call, beyond what an
# O(T E N) call fits in memory (the zoo Mamba: 8 GiB per intermediate there), so the limit cannot
# be reached silently; the 4 doublings more than 16,384 tokens need cost up to 11 % of a short
# prefill call (benchmarks/scan_doublings.py)
SCAN_CHUNK_DOUBLINGS = 14
PARALLEL_SCAN_MAX_TOKENS = SCAN_CHUNK * 2**SCAN_CHUNK_DOUBLINGS


def softplus(x):
    """``F.softplus``; under ONNX export max(x, 0) + log(1 + exp(-|x|)), the same function without
    overflow: ONNX Runtime's ``Softplus`` kernel is scalar, 15 us on a [1, 1536] row where these
    vectorised ops take 4.5 us together (docs/RESULTS.md §29)."""
    if torch.onnx.is_in_onnx_export():
        return torch.relu(x) + torch.log1p(torch.exp(-x.abs()))
    return F.softplus(x)


def selective_scan(u, dt, A, Bm, Cm, D, h0, chunk_size: int = 64):
    """Returns (y [B,T,E], h_T [B,N,E]).

    Chunked over time so memory is O(B * chunk * E * N) whatever T is: the discretisation
    and the C readout are batched over a chunk, and inside it the recurrence is two
    elementwise ops per step (on CPU at these sizes that beats a log-depth parallel scan,
    which does log2(chunk) times the arithmetic). On CUDA (or RNNQUANT_KERNELS=triton) the Triton
    scan of ``rnnquant.kernels`` runs instead; under ONNX export, ``selective_scan_parallel``.
    Without autograd (inference, calibration, GPTQ) the chunk's states overwrite its dA in place
    (``_scan_in_place``): the same values, bit for bit, in 1.3-1.6x less time.
    """
    from rnnquant.kernels import use_triton

    if torch.onnx.is_in_onnx_export():
        return selective_scan_parallel(u, dt, A, Bm, Cm, D, h0)
    if use_triton(u):
        from rnnquant.kernels.selective_scan import selective_scan as triton_scan

        return triton_scan(u, dt, A, Bm, Cm, D, None, h0)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (u, dt, A, Bm, Cm, D, h0))):
        return _scan_in_place(u, dt, A, Bm, Cm, D, h0, chunk_size)
    h, At = h0, A.T  # [B,N,E], [N,E]
    ys = []
    for s in range(0, u.shape[1], chunk_size):
        dt_c = dt[:, s : s + chunk_size].transpose(0, 1).unsqueeze(2)  # [L,B,1,E], time-major so steps are contiguous
        dA = torch.exp(dt_c * At)  # [L,B,N,E]
        dBu = (dt_c * u[:, s : s + chunk_size].transpose(0, 1).unsqueeze(2)) * Bm[:, s : s + chunk_size].transpose(0, 1).unsqueeze(-1)
        hs = []
        for a, b in zip(dA.unbind(0), dBu.unbind(0)):  # unbind: one stack in backward, not L zero-fills
            h = a * h + b
            hs.append(h)
        ys.append(torch.einsum("lbne,bln->ble", torch.stack(hs), Cm[:, s : s + chunk_size]))
    y = torch.cat(ys, 1) + u * D
    return y, h


def _scan_in_place(u, dt, A, Bm, Cm, D, h0, chunk_size: int):
    """``selective_scan`` with no autograd: per chunk, h_t = dA_t * h_{t-1} + dB_t u_t written over
    dA_t (batch-major [B,L,N,E], so each state is B contiguous [N,E] blocks), read out by one einsum,
    into one preallocated y. No per-step allocation, no stack of the states, no layout copy for the
    readout (those were 60 % of the time at mamba-130m shape); every product and sum is the one
    the autograd form computes, in the same order."""
    Bsz, T, E = u.shape
    h, At = h0, A.T  # [B,N,E], [N,E]
    y = torch.empty(Bsz, T, E, dtype=torch.result_type(u, h0))
    for s in range(0, T, chunk_size):
        dt_c = dt[:, s : s + chunk_size].unsqueeze(2)  # [B,L,1,E]
        hs = torch.exp(dt_c * At)  # [B,L,N,E]: dA, then the states
        dBu = (dt_c * u[:, s : s + chunk_size].unsqueeze(2)) * Bm[:, s : s + chunk_size].unsqueeze(-1)  # [B,L,N,E]
        for t in range(hs.shape[1]):
            h = torch.mul(hs[:, t], h, out=hs[:, t]).add_(dBu[:, t])  # [B,N,E], a view of hs
        y[:, s : s + chunk_size] = torch.einsum("blne,bln->ble", hs, Cm[:, s : s + chunk_size])
    y += u * D
    return y, h.clone()  # the last state owns its memory (not a view of the last chunk's buffer)


def _shift(x, dim: int, d: int, fill: float):
    """x shifted d places later along dim, the first d places filled (static slices only, so a
    traced graph works for every length: a slice past the end is empty, not an error)."""
    head = torch.full_like(x, fill)[(slice(None),) * dim + (slice(0, d),)]
    return torch.cat([head, x[(slice(None),) * dim + (slice(0, -d),)]], dim)


def _linear_scan(a, b, dim: int, doublings: int):
    """Inclusive scan of h -> a_t h + b_t along ``dim`` from h = 0 (Hillis-Steele: after k
    doublings every position has composed the 2**k pairs ending at it). Returns (prod a, h)."""
    for k in range(doublings):
        d = 2**k
        a, b = a * _shift(a, dim, d, 1.0), a * _shift(b, dim, d, 0.0) + b
    return a, b


RECURRENCE_DOUBLINGS = 7  # positions one exported prefill call composes: 2**7 = 128, the runner's window
RECURRENCE_MAX_TOKENS = 2**RECURRENCE_DOUBLINGS


def linear_recurrence(a, b, h0, doublings: int = RECURRENCE_DOUBLINGS):
    """h_t = a_t h_{t-1} + b_t along axis 1 from h0, every t at once (a doubling scan, no loop over
    time): exact for up to 2**doublings positions per call. a, b [B,T,...], h0 [B,...] -> h [B,T,...]."""
    carry, h = _linear_scan(a, b, 1, doublings)
    return carry * h0.unsqueeze(1) + h


def selective_scan_parallel(u, dt, A, Bm, Cm, D, h0):
    """``selective_scan`` with no loop over time: what the ONNX prefill graph runs.

    Time is padded to chunks of Q = SCAN_CHUNK tokens with dt = 0 (dA = 1, dB u = 0: identity
    steps, so the state after the padding is the state after the last real token). Then, for
    all chunks at once:
      1. inside a chunk, the recurrence from a zero entry state, Q static steps (the same two
         elementwise ops per token as ``step``, batched over the chunks);
      2. each chunk's decay, prod of dA over the chunk = exp(A * sum dt) (exponent <= 0, so it
         cannot overflow), and a doubling (Hillis-Steele) scan over the chunks' (decay, state)
         pairs gives the state entering every chunk from h0;
      3. h_t = exp(A * sum of dt in the chunk up to t) * h_entry + (step 1's state).
    Work O(T E N) plus O((T / Q) E N log C); memory O(T E N). Exact up to
    PARALLEL_SCAN_MAX_TOKENS per call (feed longer inputs in pieces, carrying h).
    """
    Bsz, T, E = u.shape
    N, Q, At = A.shape[-1], SCAN_CHUNK, A.T  # At [N,E]
    pad = (-T) % Q
    dt, u, Bm = (F.pad(t, (0, 0, 0, pad)) for t in (dt, u, Bm))
    dt_c = dt.reshape(Bsz, -1, Q, 1, E)  # [B,C,Q,1,E], C chunks
    dA = torch.exp(dt_c * At)  # [B,C,Q,N,E]
    dBu = ((dt * u).unsqueeze(-2) * Bm.unsqueeze(-1)).reshape(Bsz, -1, Q, N, E)  # [B,C,Q,N,E]
    hs = [dBu[:, :, 0]]
    for a_q, b_q in zip(dA.unbind(2)[1:], dBu.unbind(2)[1:]):  # 1. static, over the chunk's positions
        hs.append(a_q * hs[-1] + b_q)
    h_local = torch.stack(hs, 2)  # [B,C,Q,N,E] state from a zero chunk-entry state
    decay = torch.exp(torch.cumsum(dt_c, 2) * At)  # [B,C,Q,N,E] prod of dA inside the chunk up to t
    chunk_a, chunk_h = _linear_scan(decay[:, :, -1], h_local[:, :, -1], 1, SCAN_CHUNK_DOUBLINGS)  # 2.
    h_out = chunk_a * h0.unsqueeze(1) + chunk_h  # [B,C,N,E] state after each chunk
    h_in = torch.cat([h0.unsqueeze(1), h_out[:, :-1]], 1)  # state entering each chunk
    h = (decay * h_in.unsqueeze(2) + h_local).reshape(Bsz, -1, N, E)[:, :T]  # 3. [B,T,N,E]
    y = (h * Cm.unsqueeze(-1)).sum(-2) + u[:, :T] * D
    return y, h_out[:, -1]


def causal_conv_silu_step(conv_state, x, w, b):
    """One step of the depthwise causal conv, then SiLU. conv_state [B,K-1,C] (the last K-1 inputs),
    x [B,C], w [K,C], b [C] or None -> (silu(conv) [B,C], conv_state' [B,K-1,C]). Under
    ``export --fused`` one custom op (``rnnquant.kernels.fused.ConvSiluStep``), this its twin."""
    from rnnquant.kernels.fused import ConvSiluStep, fusing

    if fusing():
        return ConvSiluStep.apply(conv_state, x, w, b if b is not None else torch.zeros_like(w[0]))
    conv_in = torch.cat([conv_state, x.unsqueeze(1)], dim=1)  # [B,K,C]
    xc = (conv_in * w).sum(1)
    if b is not None:
        xc = xc + b
    return F.silu(xc), conv_in[:, 1:]


def selective_state_update(u, dt, A, Bm, Cm, D, h):
    """One step of the recurrence. u, dt [B,E]; Bm, Cm [B,N]; h [B,N,E] -> (y [B,E], h').
    (Under ``export --fused`` Mamba's step runs this, with the softplus before it and the SiLU(z)
    gate after it, as ``rnnquant.kernels.fused.GatedSelectiveStep``.)"""
    from rnnquant.kernels import use_triton

    if use_triton(u) and not torch.onnx.is_in_onnx_export():
        from rnnquant.kernels.selective_scan import selective_state_update as triton_step

        return triton_step(u, dt, A, Bm, Cm, D, None, h)
    h = torch.exp(dt.unsqueeze(1) * A.T) * h + (dt * u).unsqueeze(1) * Bm.unsqueeze(-1)  # [B,N,E]
    y = (Cm.unsqueeze(1) @ h).squeeze(1) + u * D  # C^T h: a matmul, one pass over h (a strided sum over N was two)
    return y, h
