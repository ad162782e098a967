//! Adam on plain tensors with the gradients handed in, so that stage 2 can update its networks
//! from closed-form gradients ([`super::gan_grads`]) as well as from autograd. The update is
//! PyTorch's single-tensor Adam without weight decay or AMSGrad (`torch.optim.Adam`: `lerp_`,
//! then `addcdiv_`); it agrees with `tch::nn::Adam` to rounding.
//!
//! On the CPU the update runs as one pass over each parameter (a fused loop) instead of eight
//! tensor ops: the generator's weight, its gradient and the two moments do not fit in L2, so the
//! separate ops are bound by memory traffic.

use tch::{Device, Kind, Tensor};

/// Adam state for a fixed list of parameters.
#[derive(Debug)]
pub struct Adam {
    params: Vec<Tensor>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    step: i32,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    fused: bool,
}

impl Adam {
    /// Adam over `params`, which are updated in place outside autograd.
    pub fn new(params: Vec<Tensor>, lr: f64, (beta1, beta2): (f64, f64), eps: f64) -> Adam {
        let zeros = |p: &Tensor| p.zeros_like();
        let exp_avg = params.iter().map(zeros).collect();
        let exp_avg_sq = params.iter().map(zeros).collect();
        let fused = params.iter().all(|p| p.device() == Device::Cpu && p.kind() == Kind::Float && p.is_contiguous());
        Adam { params, exp_avg, exp_avg_sq, step: 0, lr, beta1, beta2, eps, fused }
    }

    /// The same optimiser updating through libtorch tensor ops (the path other devices take).
    pub fn with_tensor_ops(mut self) -> Adam {
        self.fused = false;
        self
    }

    /// The parameters, in the order [`Adam::step`] expects their gradients.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// One update; `grads[i]` is the gradient of `params[i]` (same shape).
    pub fn step(&mut self, grads: &[Tensor]) {
        assert_eq!(grads.len(), self.params.len(), "one gradient per parameter");
        self.step += 1;
        let c = Coefficients {
            w1: 1.0 - self.beta1,
            w2: 1.0 - self.beta2,
            bias_correction2_sqrt: (1.0 - self.beta2.powi(self.step)).sqrt(),
            eps: self.eps,
            // addcdiv_ has no scale in tch, so the step size goes into the denominator.
            inv_step: -(1.0 - self.beta1.powi(self.step)) / self.lr,
        };
        tch::no_grad(|| {
            for (((p, g), m), v) in self.params.iter().zip(grads).zip(&mut self.exp_avg).zip(&mut self.exp_avg_sq) {
                if self.fused {
                    fused_step(p, &g.to_kind(Kind::Float).contiguous(), m, v, &c);
                } else {
                    tensor_step(p, g, m, v, &c);
                }
            }
        });
    }
}

/// One step's scalars in f64: 1 − β is taken before any rounding to f32, as torch does.
struct Coefficients {
    w1: f64,
    w2: f64,
    bias_correction2_sqrt: f64,
    eps: f64,
    inv_step: f64,
}

fn tensor_step(p: &Tensor, g: &Tensor, m: &mut Tensor, v: &mut Tensor, c: &Coefficients) {
    let _ = m.lerp_(g, c.w1);
    let _ = v.lerp_(&g.square(), c.w2);
    let mut denom = v.sqrt();
    let _ = denom.g_div_scalar_(c.bias_correction2_sqrt).g_add_scalar_(c.eps).g_mul_scalar_(c.inv_step);
    let _ = p.shallow_clone().addcdiv_(m, &denom);
}

/// `torch.lerp(a, b, w)` as ATen computes it (two forms for accuracy near either end).
#[inline(always)]
fn lerp(a: f32, b: f32, w: f32) -> f32 {
    if w < 0.5 { a + w * (b - a) } else { b - (b - a) * (1.0 - w) }
}

#[inline(always)]
fn kernel(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &Coefficients) {
    let (w1, w2, bc2, eps, inv_step) =
        (c.w1 as f32, c.w2 as f32, c.bias_correction2_sqrt as f32, c.eps as f32, c.inv_step as f32);
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m = lerp(*m, g, w1);
        *v = lerp(*v, g * g, w2);
        let denom = (v.sqrt() / bc2 + eps) * inv_step;
        *p += *m / denom;
    }
}

/// The same loop compiled for AVX2 (8 lanes instead of SSE2's 4); no FMA contraction, so the
/// numbers do not depend on which version runs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn kernel_avx2(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &Coefficients) {
    kernel(p, g, m, v, c)
}

fn fused_step(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, c: &Coefficients) {
    let n = p.numel();
    assert!(g.numel() == n && g.is_contiguous() && g.kind() == Kind::Float && g.device() == Device::Cpu);
    // SAFETY: `p`, `m` and `v` are contiguous f32 CPU tensors of `n` elements (checked when the
    // optimiser was built; they are never resized), with storages of their own: `m` and `v` were
    // made by `zeros_like`, and `g` is a gradient, a fresh tensor. Nothing else touches them
    // during this call, which runs on the calling thread.
    let (p, g, m, v) = unsafe {
        (
            std::slice::from_raw_parts_mut(p.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts(g.data_ptr() as *const f32, n),
            std::slice::from_raw_parts_mut(m.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts_mut(v.data_ptr() as *mut f32, n),
        )
    };
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is available on this CPU (checked just above).
        return unsafe { kernel_avx2(p, g, m, v, c) };
    }
    kernel(p, g, m, v, c)
}
