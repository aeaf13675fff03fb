// 2-D convolution (NHWC activations, HWIO kernels, float32) through oneDNN, as XLA FFI handlers.
#include <cstdint>
#include <string>

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

// Checks the shapes x [n, h, w, ci], kernel [kh, kw, ci, co], y [n, ho, wo, co] (oneDNN's
// logical order is NCHW / OIHW), then runs `body(geometry, stream)`, turning oneDNN exceptions
// into FFI errors.
template <typename Dims, typename F>
ffi::Error Run(const char* what, Dims xd, Dims kd, Dims yd, int64_t stride, int64_t pad, F body) {
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
  try {
    dnnl::stream s(Engine());
    body(g, s);
    s.wait();
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
  return Run("conv forward", x.dimensions(), k.dimensions(), y->dimensions(), stride, pad,
             [&](const Geometry& g, dnnl::stream& s) {
    auto pd = ForwardDesc(g);
    memory src(pd.src_desc(), Engine(), x.typed_data());
    memory dst(pd.dst_desc(), Engine(), y->typed_data());
    memory wei = Weights(pd.weights_desc(), g, k.typed_data(), s);
    dnnl::convolution_forward(pd).execute(
        s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
  });
}

ffi::Error ConvBwdDataImpl(ffi::Buffer<ffi::F32> gy, ffi::Buffer<ffi::F32> k,
                           ffi::ResultBuffer<ffi::F32> gx, int64_t stride, int64_t pad) {
  return Run("conv backward data", gx->dimensions(), k.dimensions(), gy.dimensions(), stride,
             pad, [&](const Geometry& g, dnnl::stream& s) {
    auto pd = BackwardDesc<dnnl::convolution_backward_data::primitive_desc>(g);
    memory diff_dst(pd.diff_dst_desc(), Engine(), gy.typed_data());
    memory diff_src(pd.diff_src_desc(), Engine(), gx->typed_data());
    memory wei = Weights(pd.weights_desc(), g, k.typed_data(), s);
    dnnl::convolution_backward_data(pd).execute(
        s, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, diff_src}});
  });
}

ffi::Error ConvBwdWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> gy,
                              ffi::ResultBuffer<ffi::F32> gk, int64_t stride, int64_t pad) {
  return Run("conv backward weights", x.dimensions(), gk->dimensions(), gy.dimensions(), stride,
             pad, [&](const Geometry& g, dnnl::stream& s) {
    auto pd = BackwardDesc<dnnl::convolution_backward_weights::primitive_desc>(g);
    memory src(pd.src_desc(), Engine(), x.typed_data());
    memory diff_dst(pd.diff_dst_desc(), Engine(), gy.typed_data());
    memory user(memory::desc(g.wei, dt::f32, tag::hwio), Engine(), gk->typed_data());
    bool direct = pd.diff_weights_desc() == user.get_desc();
    memory diff_wei = direct ? user : memory(pd.diff_weights_desc(), Engine());
    dnnl::convolution_backward_weights(pd).execute(
        s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_wei}});
    if (!direct) dnnl::reorder(diff_wei, user).execute(s, diff_wei, user);
  });
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
