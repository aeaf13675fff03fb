// 2-D convolution (NHWC activations, HWIO kernels, float32) through oneDNN, as XLA FFI handlers.
#include <cstdint>
#include <string>
#include <unordered_map>

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

// x [n, h, w, ci], kernel [kh, kw, ci, co], y [n, ho, wo, co]; oneDNN's logical order is NCHW / OIHW.
Geometry MakeGeometry(int64_t n, int64_t h, int64_t w, int64_t ci, int64_t kh, int64_t kw,
                      int64_t co, int64_t ho, int64_t wo, int64_t stride, int64_t pad) {
  Geometry g;
  g.src = {n, ci, h, w};
  g.wei = {co, ci, kh, kw};
  g.dst = {n, co, ho, wo};
  g.strides = {stride, stride};
  g.pad_l = {pad, pad};
  g.pad_r = {(ho - 1) * stride + kh - h - pad, (wo - 1) * stride + kw - w - pad};
  return g;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      memory::desc(g.src, dt::f32, tag::nhwc), memory::desc(g.wei, dt::f32, tag::any),
      memory::desc(g.dst, dt::f32, tag::nhwc), g.strides, g.pad_l, g.pad_r);
}

// Runs `body`, turning oneDNN exceptions into FFI errors.
template <typename F>
ffi::Error Guard(const char* what, F body) {
  try {
    body();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string(what) + ": oneDNN error: " + e.what());
  }
  return ffi::Error::Success();
}

memory Weights(const memory::desc& want, const Geometry& g, void* hwio, dnnl::stream& s) {
  memory user(memory::desc(g.wei, dt::f32, tag::hwio), Engine(), hwio);
  if (want == user.get_desc()) return user;
  memory m(want, Engine());
  dnnl::reorder(user, m).execute(s, user, m);
  return m;
}

ffi::Error ConvFwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t pad) {
  auto xd = x.dimensions(), kd = k.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4)
    return ffi::Error::InvalidArgument("onednn conv: x, kernel and y must have rank 4");
  return Guard("conv forward", [&] {
    Geometry g = MakeGeometry(xd[0], xd[1], xd[2], xd[3], kd[0], kd[1], kd[3], yd[1], yd[2],
                              stride, pad);
    auto pd = ForwardDesc(g);
    dnnl::stream s(Engine());
    memory src(pd.src_desc(), Engine(), x.typed_data());
    memory dst(pd.dst_desc(), Engine(), y->typed_data());
    memory wei = Weights(pd.weights_desc(), g, k.typed_data(), s);
    dnnl::convolution_forward(pd).execute(
        s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
    s.wait();
  });
}

ffi::Error ConvBwdDataImpl(ffi::Buffer<ffi::F32> gy, ffi::Buffer<ffi::F32> k,
                           ffi::ResultBuffer<ffi::F32> gx, int64_t stride, int64_t pad) {
  auto yd = gy.dimensions(), kd = k.dimensions(), xd = gx->dimensions();
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4)
    return ffi::Error::InvalidArgument("onednn conv: g, kernel and dx must have rank 4");
  return Guard("conv backward data", [&] {
    Geometry g = MakeGeometry(xd[0], xd[1], xd[2], xd[3], kd[0], kd[1], kd[3], yd[1], yd[2],
                              stride, pad);
    auto fwd = ForwardDesc(g);
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, memory::desc(g.src, dt::f32, tag::nhwc),
        memory::desc(g.wei, dt::f32, tag::any), memory::desc(g.dst, dt::f32, tag::nhwc),
        g.strides, g.pad_l, g.pad_r, fwd);
    dnnl::stream s(Engine());
    memory diff_dst(pd.diff_dst_desc(), Engine(), gy.typed_data());
    memory diff_src(pd.diff_src_desc(), Engine(), gx->typed_data());
    memory wei = Weights(pd.weights_desc(), g, k.typed_data(), s);
    dnnl::convolution_backward_data(pd).execute(
        s, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, diff_src}});
    s.wait();
  });
}

ffi::Error ConvBwdWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> gy,
                              ffi::ResultBuffer<ffi::F32> gk, int64_t stride, int64_t pad) {
  auto xd = x.dimensions(), yd = gy.dimensions(), kd = gk->dimensions();
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4)
    return ffi::Error::InvalidArgument("onednn conv: x, g and dkernel must have rank 4");
  return Guard("conv backward weights", [&] {
    Geometry g = MakeGeometry(xd[0], xd[1], xd[2], xd[3], kd[0], kd[1], kd[3], yd[1], yd[2],
                              stride, pad);
    auto fwd = ForwardDesc(g);
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, memory::desc(g.src, dt::f32, tag::nhwc),
        memory::desc(g.wei, dt::f32, tag::any), memory::desc(g.dst, dt::f32, tag::nhwc),
        g.strides, g.pad_l, g.pad_r, fwd);
    dnnl::stream s(Engine());
    memory src(pd.src_desc(), Engine(), x.typed_data());
    memory diff_dst(pd.diff_dst_desc(), Engine(), gy.typed_data());
    memory user(memory::desc(g.wei, dt::f32, tag::hwio), Engine(), gk->typed_data());
    bool direct = pd.diff_weights_desc() == user.get_desc();
    memory diff_wei = direct ? user : memory(pd.diff_weights_desc(), Engine());
    dnnl::convolution_backward_weights(pd).execute(
        s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_wei}});
    if (!direct) dnnl::reorder(diff_wei, user).execute(s, diff_wei, user);
    s.wait();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SsConvFwd, ConvFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SsConvBwdData, ConvBwdDataImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SsConvBwdWeights, ConvBwdWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad"));
