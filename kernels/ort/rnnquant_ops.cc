// rnnquant's ONNX Runtime custom operators (domain "ai.rnnquant"), opt-in via `rnnquant export --fused`.
// Each is the math of a PyTorch twin (rnnquant.kernels.fused names them), which is also the stock-op
// graph it replaces; tests/kernels/test_ortops.py holds the two graphs to each other.
//
// ConvSiluStep: one step of a depthwise causal conv, then SiLU (twin: ssm.causal_conv_silu_step)
//   inputs   state [B,K-1,C] (the last K-1 inputs), x [B,C], w [K,C], b [C]
//   outputs  y [B,C] = silu(sum_k w_k in_k + b)  (in = state then x),   state' [B,K-1,C] = in[1:]
//
// GatedSelectiveStep: Mamba's step after its projections (twin: ssm.softplus, selective_state_update, gate)
//   inputs   u [B,E], dt_raw [B,E], At [N,E] (A transposed, negative), Bm [B,N], Cm [B,N], D [E], z [B,E],
//            h [B,N,E]               (E = d_inner, N = d_state; d_inner last, as the stock graph's state)
//   outputs  y [B,E] = (C_t^T h' + D u) * silu(z),   h' [B,N,E] = exp(dt A) h + (dt u) B_t,  dt = softplus(dt_raw)
//
// Rwkv7AttentionStep: one position of RWKV-7's attention between its Linears and W_o (twin: rwkv7.attention)
//   inputs   S [B,H,N,N] (key x value), r, w_l, k, v, a_l, g [B,A] (A = H N: the Linears' outputs),
//            k_k, k_a, gn_w, gn_b [A], r_k [H,N], v_first, v_l [B,A] (optional: absent in layer 0); attribute eps
//   outputs  y [B,A] = (GroupNorm_H(o) + (r . k' . r_k) v') g,   S' = S * exp(w) (per key row) + (kk a) ((-kk)^T S) + k' v'^T,
//            o = r^T S',  w = -e^-0.5 sigmoid(w_l),  a = sigmoid(a_l),  v' = lerp(v, v_first, sigmoid(v_l)),
//            kk = L2norm_head(k k_k),  k' = k + k (a - 1) k_a
//
// SSDStep: one step of Mamba-2's SSD recurrence (twin: ssd.ssd_step)
//   inputs   x [B,H,P], dt [B,H] (after softplus), A [H] (negative), Bm [B,G,N], Cm [B,G,N], D [H], h [B,H,N,P]
//   outputs  y [B,H,P] = C^T h' + D x,   h' = exp(dt A) h + (dt x) B^T   (a group's heads share B and C)
//
// Int8Linear: a Linear with uint8 activations and int8 weights (twin: exporters.qops' W8A8 paths)
//   inputs   x [...,K] float, W [Np/16,Kp/4,16,4] int8 (the codes W[n,k] packed for VNNI: element [t,q,c,j] =
//            W[16t+c, 4q+j], zero padded), colsum [N] int32 (sum_k W[n,k]), w_scale [N] float,
//            a_scale [] float (optional: absent, each row's dynamic scale s = max(max|x|, 127e-12) / 127),
//            bias [N] float (optional: added last, as the stock graph's Add)
//   output   static:  y [...,N] = acc * (a_scale * w_scale[n]),   xq = saturate(round_even(x / a_scale) + 128)
//            dynamic: y [...,N] = (acc * s) * w_scale[n],         xq = round_even(x / s) + 128
//            acc = sum_k (xq_k - 128) W[n,k]  (exact int32)
//   (the stock chains, QuantizeLinear or Abs/ReduceMax/Div/Round -> MatMulInteger -> Cast -> Mul: the same
//   integers, the same float roundings in the same order.)
//
// Int4Linear: a Linear with 4-bit group-wise weights and dynamic int8 activations (twin: fake_quant_dynamic(x) @ W^T,
//   W = (code - zero) * scale per group; the graph's stock form is MatMulNBits with accuracy_level 4)
//   inputs   x [...,K] float, B [Np/16,K/8,16,4] uint8 (MatMulNBits' bytes [N,K/2] permuted: element [t,o,c,j] =
//            byte 4o+j of row 16t+c, codes k = 8o+2j (low nibble) and 8o+2j+1 (high)), scales [Np/16,G,16] float,
//            zeros [Np/16,ceil(G/2),16] uint8 (MatMulNBits' packed zero points, permuted the same way; optional:
//            absent, every zero point is 8); attributes group (K / G), N
//   output   y [...,N] = s * sum_g scale[n,g] * sum_{k in g} q_k (code[n,k] - zero[n,g]),
//            s = max(max|x| / 127, 1e-12), q = clamp(round_even(x / s), -127, 127)  (fake_quant_dynamic's grid)
//
// In stock ops these are ~41 nodes per Mamba-1 layer, ~38 per Mamba-2 layer and ~90 per RWKV-7
// layer, most a pass over a row or the whole state (ONNX Runtime's cost per small node is what a
// batch-1 step pays); here one or two passes, the exp vectorised by the compiler (libmvec, -ffast-math).
//
// Built by rnnquant.kernels.ortops against ONNX Runtime's C API headers (the C API is append-only:
// a library built against version V headers loads into any runtime that serves API version V).
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace {

const char* const kDomain = "ai.rnnquant";

using Shape = std::vector<int64_t>;

Shape shape_of(const Ort::ConstValue& v) { return v.GetTensorTypeAndShapeInfo().GetShape(); }

void expect(const Ort::ConstValue& v, const Shape& want, const char* op, const char* name) {
  if (shape_of(v) != want)
    ORT_CXX_API_THROW(std::string(op) + ": input " + name + " has the wrong shape", ORT_INVALID_ARGUMENT);
}

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

inline float softplus(float x) { return std::fmax(x, 0.0f) + std::log1p(std::exp(-std::fabs(x))); }

// ---- ConvSiluStep ----------------------------------------------------------------------------
void conv_silu_row(const float* state, const float* x, const float* w, const float* b, float* y, float* state_out,
                   int64_t K, int64_t C) {
  for (int64_t c = 0; c < C; ++c) y[c] = w[c] * state[c];  // k = 0 (K >= 2: the state has a row)
  for (int64_t k = 1; k < K - 1; ++k) {
    const float *wk = w + k * C, *sk = state + k * C;
    for (int64_t c = 0; c < C; ++c) y[c] += wk[c] * sk[c];
  }
  const float* wl = w + (K - 1) * C;
  for (int64_t c = 0; c < C; ++c) y[c] = silu(y[c] + wl[c] * x[c] + b[c]);
  for (int64_t k = 0; k + 1 < K - 1; ++k) std::copy(state + (k + 1) * C, state + (k + 2) * C, state_out + k * C);
  std::copy(x, x + C, state_out + (K - 2) * C);
}

struct ConvSiluStepKernel {
  ConvSiluStepKernel(const OrtApi&, const OrtKernelInfo*) {}

  void Compute(OrtKernelContext* raw) {
    Ort::KernelContext ctx(raw);
    const auto state = ctx.GetInput(0), x = ctx.GetInput(1), w = ctx.GetInput(2), b = ctx.GetInput(3);
    const Shape ss = shape_of(state);  // [B,K-1,C]
    if (ss.size() != 3 || ss[1] < 1) ORT_CXX_API_THROW("ConvSiluStep: state must be [B,K-1,C], K >= 2", ORT_INVALID_ARGUMENT);
    const int64_t B = ss[0], K = ss[1] + 1, C = ss[2];
    expect(x, {B, C}, "ConvSiluStep", "x");
    expect(w, {K, C}, "ConvSiluStep", "w");
    expect(b, {C}, "ConvSiluStep", "b");
    auto y = ctx.GetOutput(0, Shape{B, C});
    auto state_out = ctx.GetOutput(1, ss);
    const float *ps = state.GetTensorData<float>(), *px = x.GetTensorData<float>();
    float *py = y.GetTensorMutableData<float>(), *pso = state_out.GetTensorMutableData<float>();
    for (int64_t i = 0; i < B; ++i)
      conv_silu_row(ps + i * (K - 1) * C, px + i * C, w.GetTensorData<float>(), b.GetTensorData<float>(), py + i * C,
                    pso + i * (K - 1) * C, K, C);
  }
};

// ---- GatedSelectiveStep ----------------------------------------------------------------------
// The state planes h, h' and A^T [N, E] are read and written whole rows at a time: a task takes
// a slice of the N state rows of one batch row, so each plane is one contiguous stream. Blocks of
// channels instead (a task per 256 channels: 1 KiB pieces of every row, 6 KiB apart) made 48 short
// streams, and the op waited on memory: 29-30 us a layer against 20-21 us for whole rows once the
// weight stream has evicted the state (mamba-130m shape, one thread; benchmarks/selective_step.py,
// docs/RESULTS.md §33). The slices' shares of the readout are added in slice order.
constexpr int64_t kSlices = 2;  // state-row slices per batch row (tasks for the intra-op threads)

struct GatedSelectiveArgs {
  const float *dt, *dtu, *At, *Bm, *Cm, *h;  // dt = softplus(dt_raw), dtu = dt u: [B,E]
  float *partial, *h_out;                   // partial [B,slices,E]: each slice's share of C^T h'
  int64_t E, N, slices;
};

void gated_selective_slice(void* raw, size_t task) {
  const auto& p = *static_cast<const GatedSelectiveArgs*>(raw);
  const int64_t b = static_cast<int64_t>(task) / p.slices, s = static_cast<int64_t>(task) % p.slices, E = p.E, N = p.N;
  const int64_t n0 = s * N / p.slices, n1 = (s + 1) * N / p.slices;
  const float *__restrict dt = p.dt + b * E, *__restrict dtu = p.dtu + b * E;
  float* __restrict y = p.partial + (b * p.slices + s) * E;
  for (int64_t e = 0; e < E; ++e) y[e] = 0.0f;
  for (int64_t n = n0; n < n1; ++n) {
    const float bn = p.Bm[b * N + n], cn = p.Cm[b * N + n];
    const float *__restrict a = p.At + n * E, *__restrict hn = p.h + (b * N + n) * E;
    float* __restrict on = p.h_out + (b * N + n) * E;
    for (int64_t e = 0; e < E; ++e) {
      const float st = std::exp(dt[e] * a[e]) * hn[e] + dtu[e] * bn;
      on[e] = st;
      y[e] += cn * st;
    }
  }
}

struct GatedSelectiveStepKernel {
  GatedSelectiveStepKernel(const OrtApi&, const OrtKernelInfo*) {}

  void Compute(OrtKernelContext* raw) {
    Ort::KernelContext ctx(raw);
    const auto u = ctx.GetInput(0), dt_raw = ctx.GetInput(1), At = ctx.GetInput(2), Bm = ctx.GetInput(3),
               Cm = ctx.GetInput(4), D = ctx.GetInput(5), z = ctx.GetInput(6), h = ctx.GetInput(7);
    const Shape hs = shape_of(h);  // [B,N,E]
    if (hs.size() != 3) ORT_CXX_API_THROW("GatedSelectiveStep: h must be [B,N,E]", ORT_INVALID_ARGUMENT);
    const int64_t B = hs[0], N = hs[1], E = hs[2];
    const char* op = "GatedSelectiveStep";
    expect(u, {B, E}, op, "u");
    expect(dt_raw, {B, E}, op, "dt_raw");
    expect(At, {N, E}, op, "At");
    expect(Bm, {B, N}, op, "Bm");
    expect(Cm, {B, N}, op, "Cm");
    expect(D, {E}, op, "D");
    expect(z, {B, E}, op, "z");
    auto y = ctx.GetOutput(0, Shape{B, E});
    auto h_out = ctx.GetOutput(1, hs);
    const int64_t slices = std::max<int64_t>(1, std::min(kSlices, N));
    const float *ud = u.GetTensorData<float>(), *dr = dt_raw.GetTensorData<float>(), *Dd = D.GetTensorData<float>(), *zd = z.GetTensorData<float>();
    std::vector<float> dt(static_cast<size_t>(B * E)), dtu(dt.size()), partial(static_cast<size_t>(B * slices * E));
    for (int64_t i = 0; i < B * E; ++i) dt[i] = softplus(dr[i]);
    for (int64_t i = 0; i < B * E; ++i) dtu[i] = dt[i] * ud[i];
    GatedSelectiveArgs args{dt.data(), dtu.data(), At.GetTensorData<float>(), Bm.GetTensorData<float>(), Cm.GetTensorData<float>(),
                            h.GetTensorData<float>(), partial.data(), h_out.GetTensorMutableData<float>(), E, N, slices};
    if (B * E > 0) ctx.ParallelFor(gated_selective_slice, static_cast<size_t>(B * slices), 0, &args);
    float* yd = y.GetTensorMutableData<float>();
    for (int64_t b = 0; b < B; ++b) {  // the slices' shares in slice order, then the D skip and the SiLU(z) gate
      float* __restrict out = yd + b * E;
      const float* __restrict first = partial.data() + b * slices * E;
      for (int64_t e = 0; e < E; ++e) out[e] = first[e];
      for (int64_t s = 1; s < slices; ++s)
        for (int64_t e = 0; e < E; ++e) out[e] += first[s * E + e];
      for (int64_t e = 0; e < E; ++e) out[e] = (out[e] + ud[b * E + e] * Dd[e]) * silu(zd[b * E + e]);
    }
  }
};

// ---- Rwkv7AttentionStep ----------------------------------------------------------------------
// one head: its N channels of every input; the state S [N(key i), N(value j)]
struct Rwkv7AttentionArgs {
  const float *S, *r, *w_l, *k, *v, *a_l, *g, *k_k, *k_a, *r_k, *gn_w, *gn_b, *v_first, *v_l;
  float *y, *S_out;
  int64_t H, N;
  float eps;
};

constexpr float kLogDecayScale = -0.6065306597126334f;  // -e^-0.5 (rwkv7.LOG_DECAY_SCALE)

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// torch.lerp's two branches (its CPU kernel and the stock graph's Where): exact at both ends
inline float lerp(float start, float end, float weight) {
  return weight < 0.5f ? start + weight * (end - start) : end - (end - start) * (1.0f - weight);
}

// each loop a plain pass over N channels through restrict pointers, so that GCC vectorises all of
// them (the exps through libmvec): with the lerp's branch and the layer-0 test inside one loop it
// fell back to scalar expf calls, 57 us a layer at 0.1B shape (profiled) instead of the delta rule's ~30
void rwkv7_attention_head(void* raw, size_t task) {
  const auto& p = *static_cast<const Rwkv7AttentionArgs*>(raw);
  const int64_t N = p.N, row = static_cast<int64_t>(task) * N, ch = (static_cast<int64_t>(task) % p.H) * N;
  const float* __restrict S = p.S + row * N;
  const float *__restrict r = p.r + row, *__restrict k_raw = p.k + row, *__restrict g = p.g + row, *__restrict w_l = p.w_l + row,
                          *__restrict a_l = p.a_l + row, *__restrict v_raw = p.v + row;
  const float *__restrict k_k = p.k_k + ch, *__restrict k_a = p.k_a + ch, *__restrict r_k = p.r_k + ch, *__restrict gn_w = p.gn_w + ch,
                          *__restrict gn_b = p.gn_b + ch;
  float *__restrict y = p.y + row, *__restrict S_out = p.S_out + row * N;
  std::vector<float> buf(static_cast<size_t>(7 * N), 0.0f);
  float *__restrict decay = buf.data(), *__restrict a = decay + N, *__restrict mixed = a + N, *__restrict kk = mixed + N,
                    *__restrict k = kk + N, *__restrict sa = k + N, *__restrict o = sa + N;
  for (int64_t i = 0; i < N; ++i) decay[i] = std::exp(kLogDecayScale * sigmoid(w_l[i]));
  for (int64_t i = 0; i < N; ++i) a[i] = sigmoid(a_l[i]);
  const float* __restrict v = v_raw;  // layer 0: the value as it is
  if (p.v_l) {  // later layers: the value residual to layer 0's
    const float *__restrict v_first = p.v_first + row, *__restrict v_l = p.v_l + row;
    for (int64_t i = 0; i < N; ++i) mixed[i] = sigmoid(v_l[i]);
    for (int64_t i = 0; i < N; ++i) mixed[i] = lerp(v_raw[i], v_first[i], mixed[i]);
    v = mixed;
  }
  float norm = 0.0f;
  for (int64_t i = 0; i < N; ++i) kk[i] = k_raw[i] * k_k[i];
  for (int64_t i = 0; i < N; ++i) norm += kk[i] * kk[i];
  const float inv = 1.0f / std::fmax(std::sqrt(norm), 1e-12f);  // F.normalize's eps
  for (int64_t i = 0; i < N; ++i) kk[i] *= inv;
  for (int64_t i = 0; i < N; ++i) k[i] = k_raw[i] + k_raw[i] * (a[i] - 1.0f) * k_a[i];
  // the delta rule: sa = (-kk)^T S from the state before decay; S' = S decay_i + (kk a)_i sa_j + k_i v_j; o = r^T S'
  for (int64_t i = 0; i < N; ++i) {
    const float m = -kk[i];
    for (int64_t j = 0; j < N; ++j) sa[j] += m * S[i * N + j];
  }
  for (int64_t i = 0; i < N; ++i) {
    const float d = decay[i], c = kk[i] * a[i], ki = k[i], ri = r[i];
    for (int64_t j = 0; j < N; ++j) {
      const float s = S[i * N + j] * d + c * sa[j] + ki * v[j];
      S_out[i * N + j] = s;
      o[j] += ri * s;
    }
  }
  // the group norm over the head, the r.k bonus, the gate
  float mean = 0.0f, var = 0.0f, bonus = 0.0f;
  for (int64_t j = 0; j < N; ++j) mean += o[j];
  mean /= static_cast<float>(N);
  for (int64_t j = 0; j < N; ++j) var += (o[j] - mean) * (o[j] - mean);
  const float scale = 1.0f / std::sqrt(var / static_cast<float>(N) + p.eps);
  for (int64_t j = 0; j < N; ++j) bonus += r[j] * k[j] * r_k[j];
  for (int64_t j = 0; j < N; ++j) y[j] = ((o[j] - mean) * scale * gn_w[j] + gn_b[j] + bonus * v[j]) * g[j];
}

struct Rwkv7AttentionStepKernel {
  Rwkv7AttentionStepKernel(const OrtApi&, const OrtKernelInfo* info) : eps_(Ort::ConstKernelInfo(info).GetAttribute<float>("eps")) {}

  void Compute(OrtKernelContext* raw) {
    Ort::KernelContext ctx(raw);
    const auto S = ctx.GetInput(0);
    const Shape ss = shape_of(S);  // [B,H,N,N]
    if (ss.size() != 4 || ss[2] != ss[3]) ORT_CXX_API_THROW("Rwkv7AttentionStep: S must be [B,H,N,N]", ORT_INVALID_ARGUMENT);
    const int64_t B = ss[0], H = ss[1], N = ss[2];
    const char* names[] = {"S", "r", "w_l", "k", "v", "a_l", "g", "k_k", "k_a", "r_k", "gn_w", "gn_b", "v_first", "v_l"};
    const bool residual = ctx.GetInputCount() > 13 && static_cast<const OrtValue*>(ctx.GetInput(12)) != nullptr &&
                          static_cast<const OrtValue*>(ctx.GetInput(13)) != nullptr;
    const float* in[14] = {};
    for (size_t t = 1; t < (residual ? 14u : 12u); ++t) {
      const auto x = ctx.GetInput(t);
      const bool rows = t < 7 || t >= 12;
      expect(x, rows ? Shape{B, H * N} : t == 9 ? Shape{H, N} : Shape{H * N}, "Rwkv7AttentionStep", names[t]);
      in[t] = x.GetTensorData<float>();
    }
    auto y = ctx.GetOutput(0, Shape{B, H * N});
    auto S_out = ctx.GetOutput(1, ss);
    Rwkv7AttentionArgs args{S.GetTensorData<float>(), in[1], in[2], in[3], in[4], in[5], in[6], in[7], in[8], in[9], in[10], in[11],
                            in[12], in[13], y.GetTensorMutableData<float>(), S_out.GetTensorMutableData<float>(), H, N, eps_};
    if (B * H * N > 0) ctx.ParallelFor(rwkv7_attention_head, static_cast<size_t>(B * H), 0, &args);  // heads are independent
  }

 private:
  float eps_;
};

// ---- SSDStep ---------------------------------------------------------------------------------
// one head h of Mamba-2: a = exp(dt_h A_h); S' [N,P] = a S + (dt_h x) B_g^T; y = C_g^T S' + D_h x
struct SSDArgs {
  const float *x, *dt, *A, *Bm, *Cm, *D, *h;
  float *y, *h_out;
  int64_t H, P, G, N;
};

void ssd_head(void* raw, size_t task) {
  const auto& p = *static_cast<const SSDArgs*>(raw);
  const int64_t P = p.P, N = p.N, H = p.H, b = static_cast<int64_t>(task) / H, hd = static_cast<int64_t>(task) % H;
  const int64_t g = hd / (H / p.G);  // a group's heads share B and C
  const float* x = p.x + task * P;
  const float *Bm = p.Bm + (b * p.G + g) * N, *Cm = p.Cm + (b * p.G + g) * N;
  const float *S = p.h + task * N * P, dt = p.dt[task], a = std::exp(dt * p.A[hd]), d = p.D[hd];
  float *y = p.y + task * P, *S_out = p.h_out + task * N * P;
  std::vector<float> u(static_cast<size_t>(P));
  for (int64_t j = 0; j < P; ++j) u[j] = dt * x[j], y[j] = 0.0f;
  for (int64_t n = 0; n < N; ++n) {
    const float bn = Bm[n], cn = Cm[n];
    const float* row = S + n * P;
    float* out = S_out + n * P;
    for (int64_t j = 0; j < P; ++j) {
      const float s = a * row[j] + u[j] * bn;
      out[j] = s;
      y[j] += cn * s;
    }
  }
  for (int64_t j = 0; j < P; ++j) y[j] += x[j] * d;
}

struct SSDStepKernel {
  SSDStepKernel(const OrtApi&, const OrtKernelInfo*) {}

  void Compute(OrtKernelContext* raw) {
    Ort::KernelContext ctx(raw);
    const auto x = ctx.GetInput(0), dt = ctx.GetInput(1), A = ctx.GetInput(2), Bm = ctx.GetInput(3), Cm = ctx.GetInput(4),
               D = ctx.GetInput(5), h = ctx.GetInput(6);
    const Shape hs = shape_of(h), bs = shape_of(Bm);  // [B,H,N,P], [B,G,N]
    if (hs.size() != 4 || bs.size() != 3) ORT_CXX_API_THROW("SSDStep: h must be [B,H,N,P], Bm [B,G,N]", ORT_INVALID_ARGUMENT);
    const int64_t B = hs[0], H = hs[1], N = hs[2], P = hs[3], G = bs[1];
    if (G < 1 || H % G != 0) ORT_CXX_API_THROW("SSDStep: the heads must split into the groups of Bm", ORT_INVALID_ARGUMENT);
    const char* op = "SSDStep";
    expect(x, {B, H, P}, op, "x");
    expect(dt, {B, H}, op, "dt");
    expect(A, {H}, op, "A");
    expect(Bm, {B, G, N}, op, "Bm");
    expect(Cm, {B, G, N}, op, "Cm");
    expect(D, {H}, op, "D");
    auto y = ctx.GetOutput(0, Shape{B, H, P});
    auto h_out = ctx.GetOutput(1, hs);
    SSDArgs args{x.GetTensorData<float>(), dt.GetTensorData<float>(), A.GetTensorData<float>(), Bm.GetTensorData<float>(),
                 Cm.GetTensorData<float>(), D.GetTensorData<float>(), h.GetTensorData<float>(), y.GetTensorMutableData<float>(),
                 h_out.GetTensorMutableData<float>(), H, P, G, N};
    if (B * H * N * P > 0) ctx.ParallelFor(ssd_head, static_cast<size_t>(B * H), 0, &args);  // heads are independent
  }
};

// a / b, a * b, a + b, each rounded once where written, on x86: -ffast-math would otherwise turn a
// division into a * (1/b) and reassociate products (other roundings than the stock graphs')
#if defined(__SSE__)
inline float true_div(float a, float b) { return _mm_cvtss_f32(_mm_div_ss(_mm_set_ss(a), _mm_set_ss(b))); }
inline float true_mul(float a, float b) { return _mm_cvtss_f32(_mm_mul_ss(_mm_set_ss(a), _mm_set_ss(b))); }
inline float true_add(float a, float b) { return _mm_cvtss_f32(_mm_add_ss(_mm_set_ss(a), _mm_set_ss(b))); }
#else
inline float true_div(float a, float b) { return a / b; }
inline float true_mul(float a, float b) { return a * b; }
inline float true_add(float a, float b) { return a + b; }
#endif

#if defined(__AVX512F__)
// lanes of a 16-wide vector that hold one of the ``left`` remaining elements
inline __mmask16 tail_mask(int64_t left) { return left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1); }
#endif

inline float row_absmax(const float* x, int64_t K) {
  float amax = 0.0f;
  for (int64_t k = 0; k < K; ++k) amax = std::fmax(amax, std::fabs(x[k]));
  return amax;
}

// A matmul over fewer weight bytes than this runs on the calling thread: handing it to the pool cost
// more than it saved (~10-12 us a call at 2 threads, profiled, for mamba-130m's 123 KB x_proj, docs/RESULTS.md §32)
constexpr int64_t kInlineBytes = 512 * 1024;

void run_tasks(Ort::KernelContext& ctx, void (*fn)(void*, size_t), size_t total, void* args, int64_t bytes) {
  if (bytes < kInlineBytes) {
    for (size_t i = 0; i < total; ++i) fn(args, i);
  } else if (total > 0) {
    ctx.ParallelFor(fn, total, 0, args);
  }
}

// ---- Int8Linear ------------------------------------------------------------------------------
// Batch-1 int8 matmuls are a read of the weights; ONNX Runtime's MatMulInteger chain adds a
// quantize, a cast and a scale node per Linear and its packing. Here the weights are stored in the
// layout vpdpbusd reads (64 bytes: 16 columns x 4 inputs), one pass over them, a task's four column
// tiles one after another, so that its weights are one sequential stream (the four tiles side by side,
// four streams 12 KiB apart at K = 768, took 5-10 % longer a step at one thread: docs/RESULTS.md §33),
// the zero point's 128 * colsum taken off the exact int32 sums.
constexpr int64_t kTiles = 4;  // 16-column tiles per task

struct Int8LinearArgs {
  const uint8_t* xq;  // [M, Kp] quantized rows
  const int8_t* W;
  const int32_t* colsum;
  const float* w_scale;
  const float* bias;     // [N] or nullptr
  const float* a_scale;  // [M]: one per row (static: every row the same)
  bool dynamic;
  float* y;  // [M, N]
  int64_t Kp, N, tiles, groups;  // groups of kTiles tiles per row
};

// round_even(x / s) + 128, saturated to [0, 255], as MLAS's QuantizeLinear computes it (a true division:
// the intrinsics below are not rewritten into a multiplication by 1/s under -ffast-math)
void quantize_row(const float* x, float s, uint8_t* q, int64_t K, int64_t Kp) {
  int64_t k = 0;
#if defined(__AVX512F__)
  const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
  const __m512i zp = _mm512_set1_epi32(128);
  for (; k < K; k += 16) {
    const __mmask16 m = tail_mask(K - k);
    __m512 v = _mm512_div_round_ps(_mm512_maskz_loadu_ps(m, x + k), vs, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    const __m512i i = _mm512_add_epi32(_mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zp);
    _mm512_mask_cvtepi32_storeu_epi8(q + k, m, i);
  }
  k = K;
#endif
  for (; k < K; ++k) q[k] = static_cast<uint8_t>(std::nearbyint(std::fmin(std::fmax(x[k] / s, -128.0f), 127.0f)) + 128.0f);
  for (; k < Kp; ++k) q[k] = 128;  // padded inputs meet zero weights
}

// the stock dynamic chain's per-row scale: Div(Max(ReduceMax(Abs(x)), 127e-12), 127), a true division
float dynamic_scale(const float* x, int64_t K) {
  return true_div(std::fmax(row_absmax(x, K), static_cast<float>(1e-12 * 127)), 127.0f);
}

void int8_linear_group(void* raw, size_t task) {
  const auto& p = *static_cast<const Int8LinearArgs*>(raw);
  const int64_t row = static_cast<int64_t>(task) / p.groups, t0 = (static_cast<int64_t>(task) % p.groups) * kTiles;
  const int64_t nt = std::min(kTiles, p.tiles - t0), K4 = p.Kp / 4, tile_bytes = K4 * 64;
  const uint8_t* xq = p.xq + row * p.Kp;
  const int8_t* W = p.W + t0 * tile_bytes;
#if defined(__AVX512VNNI__)
  const int32_t* xa = reinterpret_cast<const int32_t*>(xq);  // 4 inputs per int32 lane, broadcast
  float* y = p.y + row * p.N;
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;  // opaque to -ffast-math: the stock graph's two roundings, in its order
  for (int64_t j = 0; j < nt; ++j) {  // tile after tile: the task's weights as one sequential stream
    const int8_t* w = W + j * tile_bytes;
    __m512i b0 = _mm512_setzero_si512(), b1 = b0, b2 = b0, b3 = b0;  // four chains for the dot products' latency
    int64_t q = 0;
    for (; q + 4 <= K4; q += 4, w += 256) {
      b0 = _mm512_dpbusd_epi32(b0, _mm512_set1_epi32(xa[q]), _mm512_loadu_si512(w));
      b1 = _mm512_dpbusd_epi32(b1, _mm512_set1_epi32(xa[q + 1]), _mm512_loadu_si512(w + 64));
      b2 = _mm512_dpbusd_epi32(b2, _mm512_set1_epi32(xa[q + 2]), _mm512_loadu_si512(w + 128));
      b3 = _mm512_dpbusd_epi32(b3, _mm512_set1_epi32(xa[q + 3]), _mm512_loadu_si512(w + 192));
    }
    for (; q < K4; ++q, w += 64) b0 = _mm512_dpbusd_epi32(b0, _mm512_set1_epi32(xa[q]), _mm512_loadu_si512(w));
    const __m512i acc = _mm512_add_epi32(_mm512_add_epi32(b0, b1), _mm512_add_epi32(b2, b3));  // exact int32 sums: any order
    const int64_t n0 = (t0 + j) * 16;
    const __mmask16 m = tail_mask(p.N - n0);
    const __m512i c = _mm512_sub_epi32(acc, _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m, p.colsum + n0), 7));
    const __m512 sa = _mm512_set1_ps(p.a_scale[row]), sw = _mm512_maskz_loadu_ps(m, p.w_scale + n0), f = _mm512_cvtepi32_ps(c);
    __m512 v = p.dynamic ? _mm512_mul_round_ps(_mm512_mul_round_ps(f, sa, kRound), sw, kRound)
                         : _mm512_mul_round_ps(f, _mm512_mul_round_ps(sa, sw, kRound), kRound);
    if (p.bias) v = _mm512_add_round_ps(v, _mm512_maskz_loadu_ps(m, p.bias + n0), kRound);
    _mm512_mask_storeu_ps(y + n0, m, v);
  }
#else
  int32_t acc[kTiles][16];
  for (int64_t j = 0; j < nt; ++j) {
    const int8_t* w = W + j * tile_bytes;
    for (int c = 0; c < 16; ++c) acc[j][c] = 0;
    for (int64_t q = 0; q < K4; ++q)
      for (int c = 0; c < 16; ++c)
        for (int i = 0; i < 4; ++i) acc[j][c] += static_cast<int32_t>(xq[4 * q + i]) * w[q * 64 + c * 4 + i];
  }
  float* y = p.y + row * p.N;
  for (int64_t j = 0; j < nt; ++j)
    for (int64_t c = 0, n = (t0 + j) * 16; c < 16 && n < p.N; ++c, ++n)
    {
      const float f = static_cast<float>(acc[j][c] - 128 * p.colsum[n]), s = p.a_scale[row], w = p.w_scale[n];
      const float v = p.dynamic ? true_mul(true_mul(f, s), w) : true_mul(f, true_mul(s, w));
      y[n] = p.bias ? true_add(v, p.bias[n]) : v;
    }
#endif
}

struct Int8LinearKernel {
  Int8LinearKernel(const OrtApi&, const OrtKernelInfo*) {}

  void Compute(OrtKernelContext* raw) {
    Ort::KernelContext ctx(raw);
    const auto x = ctx.GetInput(0), W = ctx.GetInput(1), colsum = ctx.GetInput(2), w_scale = ctx.GetInput(3);
    const bool dynamic = ctx.GetInputCount() < 5 || static_cast<const OrtValue*>(ctx.GetInput(4)) == nullptr;
    const bool has_bias = ctx.GetInputCount() > 5 && static_cast<const OrtValue*>(ctx.GetInput(5)) != nullptr;
    const char* op = "Int8Linear";
    Shape xs = shape_of(x);
    const Shape ws = shape_of(W), ns = shape_of(w_scale);
    if (xs.empty() || ws.size() != 4 || ws[2] != 16 || ws[3] != 4 || ns.size() != 1)
      ORT_CXX_API_THROW("Int8Linear: x must be [...,K], W [Np/16,Kp/4,16,4], w_scale [N]", ORT_INVALID_ARGUMENT);
    const int64_t K = xs.back(), N = ns[0], Kp = ws[1] * 4, tiles = ws[0];
    if (K > Kp || Kp - K >= 4 || N > tiles * 16 || tiles * 16 - N >= 16)
      ORT_CXX_API_THROW("Int8Linear: W's padded shape does not fit x and w_scale", ORT_INVALID_ARGUMENT);
    expect(colsum, {N}, op, "colsum");
    if (has_bias) expect(ctx.GetInput(5), {N}, op, "bias");
    if (!dynamic && ctx.GetInput(4).GetTensorTypeAndShapeInfo().GetElementCount() != 1)
      ORT_CXX_API_THROW("Int8Linear: a_scale must be one value", ORT_INVALID_ARGUMENT);
    const int64_t M = static_cast<int64_t>(x.GetTensorTypeAndShapeInfo().GetElementCount()) / std::max<int64_t>(K, 1);
    xs.back() = N;
    auto y = ctx.GetOutput(0, xs);
    const float* xd = x.GetTensorData<float>();
    std::vector<float> scale(static_cast<size_t>(M), dynamic ? 0.0f : *ctx.GetInput(4).GetTensorData<float>());
    std::vector<uint8_t> xq(static_cast<size_t>(M * Kp));
    for (int64_t m = 0; m < M; ++m) {
      if (dynamic) scale[m] = dynamic_scale(xd + m * K, K);
      quantize_row(xd + m * K, scale[m], xq.data() + m * Kp, K, Kp);
    }
    Int8LinearArgs args{xq.data(), W.GetTensorData<int8_t>(), colsum.GetTensorData<int32_t>(), w_scale.GetTensorData<float>(),
                        has_bias ? ctx.GetInput(5).GetTensorData<float>() : nullptr, scale.data(),
                        dynamic, y.GetTensorMutableData<float>(), Kp, N, tiles, (tiles + kTiles - 1) / kTiles};
    run_tasks(ctx, int8_linear_group, static_cast<size_t>(M * args.groups), &args, M > 0 ? tiles * 16 * Kp : 0);
  }
};

// ---- Int4Linear ------------------------------------------------------------------------------
// One 64-byte load is 16 columns x 8 inputs: the low nibbles meet the even inputs, the high ones the
// odd inputs (two vpdpbusd, the codes as the unsigned operand, the int8 activations as the signed
// one); each group's zero point comes off through the group's activation sum, its scale once per group.
struct Int4LinearArgs {
  const int32_t *xe, *xo, *xsum;  // [M, K/8] even / odd inputs of each octet, 4 per lane; [M, G] group sums
  const float* s;                 // [M] activation scales
  const uint8_t *B, *zeros;       // zeros: nullptr = 8
  const float* scales;
  float* y;
  int64_t K8, G, octets, halves, N, tiles;  // octets per group; halves = ceil(G/2)
};

// One 16-column tile per task: its codes, scales and zero points are three streams (with four tiles'
// twelve streams the w4a8 mamba-130m-shape step took 4.84-4.89 ms instead of 3.69, docs/RESULTS.md §32)
void int4_linear_tile(void* raw, size_t task) {
  const auto& p = *static_cast<const Int4LinearArgs*>(raw);
  const int64_t row = static_cast<int64_t>(task) / p.tiles, t = static_cast<int64_t>(task) % p.tiles;
  const int32_t *xe = p.xe + row * p.K8, *xo = p.xo + row * p.K8, *xsum = p.xsum + row * p.G;
  float* y = p.y + row * p.N;
  const uint8_t* B = p.B + t * p.K8 * 64;
  const float* scales = p.scales + t * p.G * 16;
  const uint8_t* zeros = p.zeros ? p.zeros + t * p.halves * 16 : nullptr;
#if defined(__AVX512VNNI__)
  const __m512i low = _mm512_set1_epi8(0x0F), low32 = _mm512_set1_epi32(0x0F);
  __m512 out = _mm512_setzero_ps();
  for (int64_t g = 0; g < p.G; ++g) {
    __m512i a = _mm512_setzero_si512();
    for (int64_t o = g * p.octets; o < (g + 1) * p.octets; ++o) {
      const __m512i w = _mm512_loadu_si512(B + o * 64);
      a = _mm512_dpbusd_epi32(a, _mm512_and_si512(w, low), _mm512_set1_epi32(xe[o]));
      a = _mm512_dpbusd_epi32(a, _mm512_and_si512(_mm512_srli_epi16(w, 4), low), _mm512_set1_epi32(xo[o]));
    }
    __m512i z = _mm512_set1_epi32(8);
    if (zeros) {
      const __m512i zz = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(zeros + g / 2 * 16)));
      z = g % 2 ? _mm512_srli_epi32(zz, 4) : _mm512_and_si512(zz, low32);
    }
    const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(a, _mm512_mullo_epi32(z, _mm512_set1_epi32(xsum[g]))));
    out = _mm512_fmadd_ps(f, _mm512_loadu_ps(scales + g * 16), out);
  }
  const int64_t n0 = t * 16;
  _mm512_mask_storeu_ps(y + n0, tail_mask(p.N - n0), _mm512_mul_ps(out, _mm512_set1_ps(p.s[row])));
#else
  for (int64_t c = 0, n = t * 16; c < 16 && n < p.N; ++c, ++n) {
    float out = 0.0f;
    for (int64_t g = 0; g < p.G; ++g) {
      int32_t acc = 0;
      for (int64_t o = g * p.octets; o < (g + 1) * p.octets; ++o) {
        const uint8_t* w = B + (o * 16 + c) * 4;
        for (int i = 0; i < 4; ++i) {
          acc += (w[i] & 0x0F) * static_cast<int8_t>(xe[o] >> (8 * i) & 0xFF);
          acc += (w[i] >> 4) * static_cast<int8_t>(xo[o] >> (8 * i) & 0xFF);
        }
      }
      const int32_t z = zeros ? (zeros[g / 2 * 16 + c] >> (4 * (g % 2))) & 0x0F : 8;
      out += static_cast<float>(acc - z * xsum[g]) * scales[g * 16 + c];
    }
    y[n] = out * p.s[row];
  }
#endif
}

struct Int4LinearKernel {
  Int4LinearKernel(const OrtApi&, const OrtKernelInfo* info)
      : group_(Ort::ConstKernelInfo(info).GetAttribute<int64_t>("group")), n_(Ort::ConstKernelInfo(info).GetAttribute<int64_t>("N")) {}

  void Compute(OrtKernelContext* raw) {
    Ort::KernelContext ctx(raw);
    const auto x = ctx.GetInput(0), B = ctx.GetInput(1), scales = ctx.GetInput(2);
    const bool has_zeros = ctx.GetInputCount() > 3 && static_cast<const OrtValue*>(ctx.GetInput(3)) != nullptr;
    Shape xs = shape_of(x);
    const Shape bs = shape_of(B), ss = shape_of(scales);
    const int64_t K = xs.empty() ? 0 : xs.back(), tiles = bs.size() == 4 ? bs[0] : 0, G = group_ > 0 ? K / group_ : 0;
    if (xs.empty() || bs.size() != 4 || bs[1] * 8 != K || bs[2] != 16 || bs[3] != 4 || group_ % 8 || G * group_ != K ||
        ss != Shape{tiles, G, 16})
      ORT_CXX_API_THROW("Int4Linear: x must be [...,K], B [Np/16,K/8,16,4], scales [Np/16,K/group,16], group a multiple of 8", ORT_INVALID_ARGUMENT);
    const int64_t halves = (G + 1) / 2;
    if (has_zeros) expect(ctx.GetInput(3), {tiles, halves, 16}, "Int4Linear", "zeros");
    const int64_t cols = n_;
    if (cols > tiles * 16 || tiles * 16 - cols >= 16) ORT_CXX_API_THROW("Int4Linear: attribute N does not fit B", ORT_INVALID_ARGUMENT);
    const int64_t M = static_cast<int64_t>(x.GetTensorTypeAndShapeInfo().GetElementCount()) / std::max<int64_t>(K, 1), K8 = K / 8;
    xs.back() = cols;
    auto y = ctx.GetOutput(0, xs);
    std::vector<int32_t> xe(static_cast<size_t>(M * K8)), xo(static_cast<size_t>(M * K8)), xsum(static_cast<size_t>(M * G));
    std::vector<float> sc(static_cast<size_t>(M));
    std::vector<int8_t> q(static_cast<size_t>(K));
    const float* xd = x.GetTensorData<float>();
    for (int64_t m = 0; m < M; ++m) {
      const float* r = xd + m * K;
      sc[m] = std::fmax(true_div(row_absmax(r, K), 127.0f), 1e-12f);  // fake_quant_dynamic's: divided, then clamped
      for (int64_t k = 0; k < K; ++k) q[k] = static_cast<int8_t>(std::fmin(std::fmax(std::nearbyint(true_div(r[k], sc[m])), -127.0f), 127.0f));
      for (int64_t o = 0; o < K8; ++o) {
        uint32_t e = 0, d = 0;
        for (int i = 0; i < 4; ++i) {
          e |= static_cast<uint32_t>(static_cast<uint8_t>(q[8 * o + 2 * i])) << (8 * i);
          d |= static_cast<uint32_t>(static_cast<uint8_t>(q[8 * o + 2 * i + 1])) << (8 * i);
        }
        xe[m * K8 + o] = static_cast<int32_t>(e), xo[m * K8 + o] = static_cast<int32_t>(d);
      }
      for (int64_t g = 0; g < G; ++g) {
        int32_t t = 0;
        for (int64_t k = g * group_; k < (g + 1) * group_; ++k) t += q[k];
        xsum[m * G + g] = t;
      }
    }
    Int4LinearArgs args{xe.data(), xo.data(), xsum.data(), sc.data(), B.GetTensorData<uint8_t>(),
                        has_zeros ? ctx.GetInput(3).GetTensorData<uint8_t>() : nullptr, scales.GetTensorData<float>(),
                        y.GetTensorMutableData<float>(), K8, G, group_ / 8, halves, cols, tiles};
    run_tasks(ctx, int4_linear_tile, static_cast<size_t>(M * tiles), &args, M > 0 ? tiles * 16 * K / 2 : 0);
  }

 private:
  int64_t group_, n_;
};

// An op with typed inputs, those from ``first_optional`` on optional, and ``outputs`` float outputs
template <typename Kernel>
struct Op : Ort::CustomOpBase<Op<Kernel>, Kernel> {
  Op(const char* name, std::vector<ONNXTensorElementDataType> inputs, size_t first_optional, size_t outputs)
      : name_(name), inputs_(std::move(inputs)), first_optional_(first_optional), outputs_(outputs) {}
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const { return new Kernel(api, info); }
  const char* GetName() const { return name_; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return inputs_.size(); }
  ONNXTensorElementDataType GetInputType(size_t i) const { return inputs_[i]; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i >= first_optional_ ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return outputs_; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

 private:
  const char* name_;
  std::vector<ONNXTensorElementDataType> inputs_;
  size_t first_optional_, outputs_;
};

// A step op: ``n`` float inputs (the last ones from ``first_optional`` on optional), two float outputs (y and the new state)
template <typename Kernel>
Op<Kernel> step_op(const char* name, size_t n, size_t first_optional) {
  return Op<Kernel>(name, std::vector<ONNXTensorElementDataType>(n, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT), first_optional, 2);
}

}  // namespace

extern "C" ORT_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return nullptr;  // a runtime older than these headers: nothing registered, the session names the missing op
  Ort::InitApi(api);
  // the ops and their domain must outlive every session that uses them: kept for the process
  static auto conv = step_op<ConvSiluStepKernel>("ConvSiluStep", 4, 4);
  static auto ssm = step_op<GatedSelectiveStepKernel>("GatedSelectiveStep", 8, 8);
  static auto rwkv7 = step_op<Rwkv7AttentionStepKernel>("Rwkv7AttentionStep", 14, 12);  // [v_first v_l]: layers after 0
  static auto ssd = step_op<SSDStepKernel>("SSDStep", 7, 7);
  constexpr auto f32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, i8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,
                 i32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, u8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  static Op<Int8LinearKernel> linear("Int8Linear", {f32, i8, i32, f32, f32, f32}, 4, 1);  // x W colsum w_scale [a_scale bias]
  static Op<Int4LinearKernel> linear4("Int4Linear", {f32, u8, f32, u8}, 3, 1);           // x B scales [zeros]
  static std::mutex lock;
  static std::vector<Ort::CustomOpDomain> domains;
  std::lock_guard<std::mutex> guard(lock);
  try {
    domains.emplace_back(kDomain);
    domains.back().Add(&conv);
    domains.back().Add(&ssm);
    domains.back().Add(&rwkv7);
    domains.back().Add(&ssd);
    domains.back().Add(&linear);
    domains.back().Add(&linear4);
    Ort::UnownedSessionOptions(options).Add(domains.back());
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
