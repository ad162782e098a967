//! Closed-form losses and gradients of the stage-2 step, for frozen MI heads. Every network in
//! stage 2 is linear, so the gradients are a few small matrix products; without autograd's
//! graph, and with the frozen text head folded into precomputed products ([`TextCritic`]), a
//! generator step costs three `[batch × width]` matmuls instead of five. The tests check every
//! function here against libtorch's autograd.
//!
//! Conventions: `B` is the batch, `d` the audio feature width; losses are batch means, as in
//! [`super::losses`], whose values these functions reproduce.

use tch::nn;
use tch::{Kind, Reduction, Tensor};

use super::losses::{mix_up, normalize};

/// Mean binary cross-entropy of `logits` against `targets` (same shape) and its gradient with
/// respect to the logits, `(σ(l) − target) / numel`.
pub fn bce_with_grad(logits: &Tensor, targets: &Tensor) -> (Tensor, Tensor) {
    let loss = logits.binary_cross_entropy_with_logits::<Tensor>(targets, None, None, Reduction::Mean);
    let grad = (logits.sigmoid() - targets) / logits.numel() as f64;
    (loss, grad)
}

/// Mean cross-entropy of `logits` `[B, k]` against class indices `[B]` and its gradient with
/// respect to the logits, `(softmax − onehot) / B`.
pub fn cross_entropy_with_grad(logits: &Tensor, targets: &Tensor) -> (Tensor, Tensor) {
    let log_p = logits.log_softmax(-1, Kind::Float);
    let loss = log_p.nll_loss(targets);
    let classes = logits.size()[1];
    let grad = (log_p.exp() - targets.onehot(classes).to_kind(Kind::Float)) / logits.size()[0] as f64;
    (loss, grad)
}

/// The parameters of a linear layer in the order of [`linear_grads`]: weight, then bias if any.
pub fn linear_params(l: &nn::Linear) -> Vec<Tensor> {
    std::iter::once(l.ws.shallow_clone()).chain(l.bs.iter().map(Tensor::shallow_clone)).collect()
}

/// Gradients of a linear layer's parameters (as [`linear_params`]) from the gradient of its
/// output `[B, out]` and its input `[B, in]`.
pub fn linear_grads(l: &nn::Linear, grad_out: &Tensor, input: &Tensor) -> Vec<Tensor> {
    let gw = grad_out.tr().matmul(input);
    let gb = l.bs.as_ref().map(|_| grad_out.sum_dim_intlist(0, false, Kind::Float));
    std::iter::once(gw).chain(gb).collect()
}

/// A linear discriminator `D(x) = x wᵀ + b` `[B, d] → [B, 1]`.
pub struct Discriminator<'a>(pub &'a nn::Linear);

impl Discriminator<'_> {
    fn logits(&self, x: &Tensor) -> Tensor {
        x.linear(&self.0.ws, self.0.bs.as_ref())
    }

    /// D's loss ([`super::losses::discriminator_loss`]) on real `h` and generated `fake`
    /// `[B, d]`, and the gradients of D's parameters (as [`linear_params`]). Draws the mix-up λ
    /// like that function.
    pub fn step(&self, h: &Tensor, fake: &Tensor, mixup_alpha: Option<f64>) -> (Tensor, Vec<Tensor>) {
        match mixup_alpha {
            Some(alpha) => {
                let (lambda, mixed) = mix_up(h, fake, alpha);
                let (loss, g) = bce_with_grad(&self.logits(&mixed), &lambda);
                (loss, linear_grads(self.0, &g, &mixed))
            }
            None => {
                let (real, generated) = (self.logits(h), self.logits(fake));
                let (loss_r, g_r) = bce_with_grad(&real, &real.ones_like());
                let (loss_f, g_f) = bce_with_grad(&generated, &generated.zeros_like());
                let grads = linear_grads(self.0, &Tensor::cat(&[g_r, g_f], 0), &Tensor::cat(&[h, fake], 0));
                (loss_r + loss_f, grads)
            }
        }
    }

    /// G's adversarial loss ([`super::losses::generator_loss`]) and its gradient with respect
    /// to `fake` `[B, d]`. Draws the mix-up λ like that function.
    pub fn generator_loss(&self, h: &Tensor, fake: &Tensor, mixup_alpha: Option<f64>) -> (Tensor, Tensor) {
        let (input, fake_share) = match mixup_alpha {
            Some(alpha) => {
                let (lambda, mixed) = mix_up(h, fake, alpha);
                (mixed, Some(1.0 - lambda))
            }
            None => (fake.shallow_clone(), None),
        };
        let logits = self.logits(&input);
        let (loss, g) = bce_with_grad(&logits, &logits.ones_like());
        let grad = g.matmul(&self.0.ws);
        (loss, fake_share.map_or_else(|| grad.shallow_clone(), |s| &grad * s))
    }
}

/// The frozen text MI head as a critic: InfoNCE between the real text features `t` (anchors)
/// and `W_t ĥ + b_t`, with cosine similarity ([`super::losses::info_nce`]). With `t̂` the unit
/// text features and `u = W_t ĥ + b_t`, it precomputes `S = t̂ W_t` `[n, d]`, `t̂ · b_t` `[n]`,
/// `M = W_tᵀ W_t` `[d, d]` and `W_tᵀ b_t`, so that `t̂_i · u_j = S_i · ĥ_j + t̂_i · b_t` and
/// `|u_j|² = ĥ_j M ĥ_jᵀ + 2 (W_tᵀ b_t) · ĥ_j + |b_t|²`: one `[B, d] × [d, d]` product per batch
/// gives both the loss and its gradient, where autograd needs two `[B, d] × [d, d_text]`.
pub struct TextCritic {
    s: Tensor,
    t_dot_b: Tensor,
    m: Tensor,
    wt_b: Tensor,
    b_sq: f64,
    temperature: f64,
}

impl TextCritic {
    /// Precomputes the products for text features `t` `[n, d_text]` and the head `proj`
    /// (`W_t` `[d_text, d]`, `b_t` `[d_text]`).
    pub fn new(t: &Tensor, proj: &nn::Linear, temperature: f64) -> TextCritic {
        tch::no_grad(|| {
            let w_t = &proj.ws;
            let b_t = proj
                .bs
                .as_ref()
                .map_or_else(|| w_t.new_zeros([w_t.size()[0]], (Kind::Float, w_t.device())), Tensor::shallow_clone);
            let unit = normalize(t);
            TextCritic {
                s: unit.matmul(w_t),
                t_dot_b: unit.mv(&b_t),
                m: w_t.tr().matmul(w_t),
                wt_b: b_t.matmul(w_t),
                b_sq: b_t.square().sum(Kind::Double).double_value(&[]),
                temperature,
            }
        })
    }

    /// InfoNCE of the text rows `rows` `[B]` (indices into `t`) against `fake` `[B, d]`, and its
    /// gradient with respect to `fake`.
    pub fn loss_with_grad(&self, rows: &Tensor, fake: &Tensor) -> (Tensor, Tensor) {
        let s = self.s.index_select(0, rows);
        // q_j = M ĥ_j + W_tᵀ b_t = W_tᵀ u_j, and |u_j|² = ĥ_j · q_j + ĥ_j · W_tᵀ b_t + |b_t|².
        let q = fake.matmul(&self.m) + &self.wt_b;
        let norm_sq = (fake * &q).sum_dim_intlist(-1, false, Kind::Float) + fake.mv(&self.wt_b) + self.b_sq;
        let norm = norm_sq.clamp_min(0.0).sqrt().clamp_min(1e-12);
        // logits[i, j] = t̂_i · û_j / τ: anchors i are text rows, candidates j generated rows.
        let logits = (s.matmul(&fake.tr()) + self.t_dot_b.index_select(0, rows).unsqueeze(1))
            / (norm.unsqueeze(0) * self.temperature);
        let targets = Tensor::arange(logits.size()[0], (Kind::Int64, logits.device()));
        let (loss, a) = cross_entropy_with_grad(&logits, &targets);
        // ∂L/∂ĥ_j = Σ_i a_ij S_i / (τ |u_j|) − c_j q_j / |u_j|², with c_j = Σ_i a_ij logits_ij
        // (the radial part that the normalisation removes).
        let c = (&a * &logits).sum_dim_intlist(0, false, Kind::Float);
        let a_scaled = a.tr() / (norm.unsqueeze(1) * self.temperature);
        let grad = (q * (-c / norm.square()).unsqueeze(1)).addmm(&a_scaled, &s);
        (loss, grad)
    }
}
