//! Building blocks shared by the encoders: linear and layer-norm layers whose parameters sit at
//! HF key paths (`<path>.weight`, `<path>.bias`), the activations HF configs name, dropout that
//! is live only in training, and attention through `scaled_dot_product_attention`.
//!
//! All of them use the fallible `f_*` tch calls so that a shape or device error comes back as an
//! [`Error`](crate::Error) instead of a panic deep in a worker.

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use crate::error::Result;

/// A dense layer `y = x Wᵀ + b` (PyTorch's `nn.Linear`), weight `[out, in]`.
#[derive(Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Creates `p.weight` (normal, std `init_std`, as HF initialises) and optionally `p.bias` (zeros).
    pub fn new(p: &Path, in_dim: i64, out_dim: i64, bias: bool, init_std: f64) -> Result<Self> {
        let weight = p.f_var("weight", &[out_dim, in_dim], Init::Randn { mean: 0.0, stdev: init_std })?;
        let bias = if bias { Some(p.f_var("bias", &[out_dim], Init::Const(0.0))?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// `[…, in]` → `[…, out]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

/// Layer normalisation over the last dimension (`nn.LayerNorm`).
#[derive(Debug)]
pub struct LayerNorm {
    /// `[dim]`, initialised to ones.
    pub weight: Tensor,
    /// `[dim]`, initialised to zeros.
    pub bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    /// Creates `p.weight` and `p.bias`.
    pub fn new(p: &Path, dim: i64, eps: f64) -> Result<Self> {
        let weight = p.f_var("weight", &[dim], Init::Const(1.0))?;
        let bias = p.f_var("bias", &[dim], Init::Const(0.0))?;
        Ok(LayerNorm { weight, bias, dim, eps })
    }

    /// `[…, dim]` → `[…, dim]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs.f_layer_norm([self.dim], Some(&self.weight), Some(&self.bias), self.eps, true)?)
    }
}

/// The activations that HF configs name in `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x·Φ(x)` (HF "gelu").
    Gelu,
    /// The tanh approximation of GELU (HF "gelu_new", "gelu_pytorch_tanh", "gelu_fast").
    GeluTanh,
    /// `x·σ(1.702x)` (HF "quick_gelu").
    QuickGelu,
    Relu,
    /// SiLU / swish.
    Silu,
    Tanh,
}

impl Activation {
    /// Parses a `hidden_act` value; the error lists what is supported.
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "tanh" => Activation::Tanh,
            other => {
                return Err(format!(
                    "unsupported hidden_act \"{other}\" (supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, \
                     quick_gelu, relu, silu, swish, tanh)"
                ));
            }
        })
    }

    /// Applies the activation elementwise.
    pub fn forward(self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Gelu => xs.f_gelu("none")?,
            Activation::GeluTanh => xs.f_gelu("tanh")?,
            Activation::QuickGelu => xs.f_mul(&xs.f_mul_scalar(1.702)?.f_sigmoid()?)?,
            Activation::Relu => xs.f_relu()?,
            Activation::Silu => xs.f_silu()?,
            Activation::Tanh => xs.f_tanh()?,
        })
    }
}

/// Dropout that is the identity outside training (and when `p` is 0, to save the kernel).
pub fn dropout(xs: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if !train || p <= 0.0 {
        return Ok(xs.shallow_clone());
    }
    Ok(xs.f_dropout(p, true)?)
}

/// Multi-head attention core on projected states.
///
/// `q`, `k`, `v`: `[batch, seq, heads·head_dim]`; `key_mask`: `[batch, seq]` (true/1 = a real
/// token) or `None`. Returns `[batch, seq, heads·head_dim]`. Attention dropout is applied only when
/// `train` is set.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: i64,
    key_mask: Option<&Tensor>,
    dropout_p: f64,
    train: bool,
) -> Result<Tensor> {
    let (b, s, d) = q.size3()?;
    let head_dim = d / heads;
    let split = |t: &Tensor| -> Result<Tensor> { Ok(t.f_view([b, -1, heads, head_dim])?.f_transpose(1, 2)?) };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    // A boolean mask (true = attend) needs no dtype matching with q under autocast or bf16, and
    // broadcasts over heads and queries.
    let mask = match key_mask {
        Some(m) => Some(m.f_to_kind(Kind::Bool)?.f_view([b, 1, 1, -1])?),
        None => None,
    };
    let p = if train { dropout_p } else { 0.0 };
    let out = Tensor::f_scaled_dot_product_attention(&q, &k, &v, mask.as_ref(), p, false, None, false)?;
    Ok(out.f_transpose(1, 2)?.f_reshape([b, s, d])?)
}
