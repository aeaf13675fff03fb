// 2-D convolution (NHWC activations, HWIO kernels, float32) through oneDNN, as XLA FFI handlers.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

struct Geometry {
  memory::dims src, wei, dst, strides, pad_l, pad_r;
};

memory::desc Activations(const memory::dims& d) { return memory::desc(d, dt::f32, tag::nhwc); }
memory::desc AnyWeights(const Geometry& g) { return memory::desc(g.wei, dt::f32, tag::any); }

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      Activations(g.src), AnyWeights(g), Activations(g.dst), g.strides, g.pad_l, g.pad_r);
}

// convolution_backward_data or convolution_backward_weights (same arguments), forward as hint.
template <typename Desc>
Desc BackwardDesc(const Geometry& g) {
  return Desc(Engine(), dnnl::algorithm::convolution_direct, Activations(g.src), AnyWeights(g),
              Activations(g.dst), g.strides, g.pad_l, g.pad_r, ForwardDesc(g));
}

// One convolution's primitive and the memory objects it runs on, built once per geometry and
// thread (creating the primitive descriptor and looking up oneDNN's primitive cache cost more
// than a small convolution); a call only points the memories at XLA's buffers.
struct Cached {
  dnnl::primitive conv;
  memory a, b, out;      // what the convolution reads and writes
  memory user_wei;       // HWIO weights (or weight gradient) at XLA's buffer, when the
  dnnl::reorder move;    //   convolution wants another layout: reorder to / from `b` or `out`
};

enum Kind : int64_t { kFwd, kBwdData, kBwdWeights };

Cached Build(Kind kind, const Geometry& g) {
  Cached c;
  memory::desc a, b, out;
  if (kind == kFwd) {
    auto pd = ForwardDesc(g);
    c.conv = dnnl::convolution_forward(pd);
    a = pd.src_desc(), b = pd.weights_desc(), out = pd.dst_desc();
  } else if (kind == kBwdData) {
    auto pd = BackwardDesc<dnnl::convolution_backward_data::primitive_desc>(g);
    c.conv = dnnl::convolution_backward_data(pd);
    a = pd.diff_dst_desc(), b = pd.weights_desc(), out = pd.diff_src_desc();
  } else {
    auto pd = BackwardDesc<dnnl::convolution_backward_weights::primitive_desc>(g);
    c.conv = dnnl::convolution_backward_weights(pd);
    a = pd.src_desc(), b = pd.diff_dst_desc(), out = pd.diff_weights_desc();
  }
  memory::desc hwio(g.wei, dt::f32, tag::hwio);
  memory::desc& wei = kind == kBwdWeights ? out : b;
  bool blocked = wei != hwio;
  c.a = memory(a, Engine(), nullptr);
  c.b = memory(b, Engine(), blocked && kind != kBwdWeights ? DNNL_MEMORY_ALLOCATE : nullptr);
  c.out = memory(out, Engine(), blocked && kind == kBwdWeights ? DNNL_MEMORY_ALLOCATE : nullptr);
  if (blocked) {
    c.user_wei = memory(hwio, Engine(), nullptr);
    c.move = kind == kBwdWeights ? dnnl::reorder(c.out, c.user_wei) : dnnl::reorder(c.user_wei, c.b);
  }
  return c;
}

// Checks the shapes x [n, h, w, ci], kernel [kh, kw, ci, co], y [n, ho, wo, co] (oneDNN's
// logical order is NCHW / OIHW), then runs the convolution (a, b) -> out: forward (x, k) -> y,
// backward data (gy, k) -> gx, backward weights (x, gy) -> gk. oneDNN exceptions become FFI
// errors.
template <typename Dims>
ffi::Error Run(Kind kind, const char* what, Dims xd, Dims kd, Dims yd, int64_t stride,
               int64_t pad, void* a, void* b, void* out) {
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4)
    return ffi::Error::InvalidArgument(std::string(what) + ": operands must have rank 4");
  Geometry g;
  g.src = {xd[0], xd[3], xd[1], xd[2]};
  g.wei = {kd[3], kd[2], kd[0], kd[1]};
  g.dst = {yd[0], yd[3], yd[1], yd[2]};
  g.strides = {stride, stride};
  g.pad_l = {pad, pad};
  g.pad_r = {(yd[1] - 1) * stride + kd[0] - xd[1] - pad,  // negative: last rows not read
             (yd[2] - 1) * stride + kd[1] - xd[2] - pad};
  std::vector<int64_t> key = {kind, stride, pad};
  for (const auto* d : {&g.src, &g.wei, &g.dst}) key.insert(key.end(), d->begin(), d->end());
  // Per thread: XLA may run handlers on several threads at once (one per device).
  thread_local std::map<std::vector<int64_t>, Cached> cache;
  thread_local std::unique_ptr<dnnl::stream> stream;
  try {
    if (!stream) stream = std::make_unique<dnnl::stream>(Engine());
    auto it = cache.find(key);
    if (it == cache.end()) {
      if (cache.size() >= 256) cache.clear();  // bound what odd mixes of shapes keep
      it = cache.emplace(key, Build(kind, g)).first;
    }
    Cached& c = it->second;
    dnnl::stream& s = *stream;
    bool blocked = bool(c.user_wei);
    c.a.set_data_handle(a);
    if (blocked && kind != kBwdWeights) {
      c.user_wei.set_data_handle(b);
      c.move.execute(s, c.user_wei, c.b);
    } else {
      c.b.set_data_handle(b);
    }
    if (!(blocked && kind == kBwdWeights)) c.out.set_data_handle(out);
    int arg_a = kind == kBwdData ? DNNL_ARG_DIFF_DST : DNNL_ARG_SRC;
    int arg_b = kind == kBwdWeights ? DNNL_ARG_DIFF_DST : DNNL_ARG_WEIGHTS;
    int arg_out = kind == kFwd ? DNNL_ARG_DST
                  : kind == kBwdData ? DNNL_ARG_DIFF_SRC : DNNL_ARG_DIFF_WEIGHTS;
    c.conv.execute(s, {{arg_a, c.a}, {arg_b, c.b}, {arg_out, c.out}});
    if (blocked && kind == kBwdWeights) {
      c.user_wei.set_data_handle(out);
      c.move.execute(s, c.out, c.user_wei);
    }
    s.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string(what) + ": oneDNN error: " + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvFwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t pad) {
  return Run(kFwd, "conv forward", x.dimensions(), k.dimensions(), y->dimensions(), stride, pad,
             x.typed_data(), k.typed_data(), y->typed_data());
}

ffi::Error ConvBwdDataImpl(ffi::Buffer<ffi::F32> gy, ffi::Buffer<ffi::F32> k,
                           ffi::ResultBuffer<ffi::F32> gx, int64_t stride, int64_t pad) {
  return Run(kBwdData, "conv backward data", gx->dimensions(), k.dimensions(), gy.dimensions(),
             stride, pad, gy.typed_data(), k.typed_data(), gx->typed_data());
}

ffi::Error ConvBwdWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> gy,
                              ffi::ResultBuffer<ffi::F32> gk, int64_t stride, int64_t pad) {
  return Run(kBwdWeights, "conv backward weights", x.dimensions(), gk->dimensions(),
             gy.dimensions(), stride, pad, x.typed_data(), gy.typed_data(), gk->typed_data());
}

// Every handler: two float32 buffers in, one out, attributes stride and pad.
auto Binding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("stride")
      .Attr<int64_t>("pad");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SsConvFwd, ConvFwdImpl, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SsConvBwdData, ConvBwdDataImpl, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SsConvBwdWeights, ConvBwdWeightsImpl, Binding());
