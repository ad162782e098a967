//! The losses of the paper's three stages, as tch ops on batches.

use tch::{Kind, Reduction, Tensor};

/// InfoNCE with cosine similarity (paper eq. 5, 7 and 18): for each anchor `a_i` the positive is
/// `b_i` and the negatives are the other `b_j` of the batch,
/// `−log exp(sim(a_i, b_i)/τ) / Σ_j exp(sim(a_i, b_j)/τ)`, averaged over the batch.
/// `a`, `b`: `[batch, dim]` (same dim). The direction follows the paper (anchor = text feature).
pub fn info_nce(a: &Tensor, b: &Tensor, temperature: f64) -> Tensor {
    let logits = cosine_logits(a, b, temperature);
    let targets = Tensor::arange(logits.size()[0], (Kind::Int64, logits.device()));
    logits.cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, -100, 0.0)
}

/// `sim(a_i, b_j) / τ` for all pairs: `[batch_a, batch_b]`.
pub fn cosine_logits(a: &Tensor, b: &Tensor, temperature: f64) -> Tensor {
    let a = normalize(a);
    let b = normalize(b);
    a.matmul(&b.transpose(0, 1)) / temperature
}

pub(crate) fn normalize(x: &Tensor) -> Tensor {
    // Clamp like torch.nn.functional.normalize, so a zero vector gives zeros rather than NaN.
    let norm = x.norm_scalaropt_dim(2.0, [-1].as_slice(), true).clamp_min(1e-12);
    x / norm
}

/// Mean cross-entropy of `logits` `[batch, classes]` against class indices `[batch]` (eq. 3, 16).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits.cross_entropy_for_logits(targets)
}

/// Binary cross-entropy of discriminator logits against (possibly soft) targets in [0, 1].
pub fn bce_logits(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits.binary_cross_entropy_with_logits::<Tensor>(targets, None, None, Reduction::Mean)
}

/// Samples mix-up coefficients λ ~ Beta(α, α), one per row: `[n, 1]` (Zhang et al., ref. [6]),
/// as X / (X + Y) with X, Y ~ Gamma(α) from libtorch's seeded generator.
fn beta_mixup(n: i64, alpha: f64, device: tch::Device) -> Tensor {
    let a = Tensor::full([n, 1], alpha, (Kind::Float, device));
    let x = a.internal_standard_gamma();
    let y = a.internal_standard_gamma();
    &x / (&x + &y).clamp_min(1e-12)
}

/// Mix-up of a real and a generated batch `[batch, dim]`: draws λ ~ Beta(α, α) per row and
/// returns `(λ [batch, 1], λ h + (1 − λ) ĥ)`.
pub fn mix_up(real: &Tensor, fake: &Tensor, alpha: f64) -> (Tensor, Tensor) {
    let lambda = beta_mixup(real.size()[0], alpha, real.device());
    let mixed = &lambda * real + (1.0 - &lambda) * fake;
    (lambda, mixed)
}

/// Discriminator loss. Without mix-up: the non-saturating GAN loss
/// `BCE(D(h), 1) + BCE(D(ĥ), 0)`. With mix-up: D sees `λ h + (1 − λ) ĥ` and regresses λ, the
/// GAN form of mix-up in ref. [6]. `real`, `fake`: `[batch, dim]`; `fake` should be detached.
pub fn discriminator_loss(
    d: &dyn Fn(&Tensor) -> Tensor,
    real: &Tensor,
    fake: &Tensor,
    mixup_alpha: Option<f64>,
) -> Tensor {
    match mixup_alpha {
        None => {
            let lr = d(real);
            let lf = d(fake);
            bce_logits(&lr, &lr.ones_like()) + bce_logits(&lf, &lf.zeros_like())
        }
        Some(alpha) => {
            let (lambda, mixed) = mix_up(real, fake, alpha);
            bce_logits(&d(&mixed), &lambda)
        }
    }
}

/// Generator loss, non-saturating: G wants D to call its samples real. With mix-up, the mixed
/// sample `λ h + (1 − λ) ĥ` should be called fully real, which needs ĥ to look real.
pub fn generator_loss(d: &dyn Fn(&Tensor) -> Tensor, real: &Tensor, fake: &Tensor, mixup_alpha: Option<f64>) -> Tensor {
    let input = match mixup_alpha {
        None => fake.shallow_clone(),
        Some(alpha) => mix_up(real, fake, alpha).1,
    };
    let logits = d(&input);
    bce_logits(&logits, &logits.ones_like())
}
