//! Stage 2: an InfoGAN on stage-1 features (paper 3.2, 4.3). The generator `G(z, c, t)` and the
//! discriminator `D(h)` are single linear layers; the mutual-information heads are the stage-1
//! classifier `W_y` (cross-entropy on the label, eq. 15–16) and text projection `W_t` (InfoNCE on
//! the text feature, eq. 17–18), frozen or fine-tuned. Every epoch records the MI observables the
//! paper proposes as the quality signal of generated samples.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::adam::Adam;
use super::gan_grads::{Discriminator, TextCritic, cross_entropy_with_grad, linear_grads, linear_params};
use super::heads::Heads;
use super::losses::{cross_entropy, generator_loss, info_nce};
use crate::error::{Error, Result};
use crate::spec::stages::Stage2;

/// Real training features for the GAN.
pub struct GanData<'a> {
    /// Audio features `[n, audio_dim]`.
    pub h: &'a Tensor,
    /// Class indices `[n]` (int64).
    pub y: &'a Tensor,
    /// Text features `[n, text_dim]`, if the generator is text-conditioned.
    pub t: Option<&'a Tensor>,
    /// Number of classes.
    pub classes: i64,
    /// Temperature of the InfoNCE term (the stage-1 value, since W_t was trained with it).
    pub temperature: f64,
}

/// The linear generator `ĥ = W [z; onehot(c); t] + b`.
#[derive(Debug)]
pub struct Generator {
    pub vs: nn::VarStore,
    pub linear: nn::Linear,
    pub z_dim: i64,
    pub classes: i64,
    /// Text condition width; None for `G(z, c)`.
    pub text_dim: Option<i64>,
}

impl Generator {
    /// A fresh generator producing `[*, audio_dim]`.
    pub fn new(z_dim: i64, classes: i64, text_dim: Option<i64>, audio_dim: i64, device: Device) -> Generator {
        let vs = nn::VarStore::new(device);
        let input = z_dim + classes + text_dim.unwrap_or(0);
        let linear = nn::linear(vs.root() / "generator", input, audio_dim, Default::default());
        Generator { vs, linear, z_dim, classes, text_dim }
    }

    /// Generates features for class indices `y` `[n]` and text features `t` `[n, text_dim]`,
    /// drawing `z ~ N(0, I)` from libtorch's generator: `[n, audio_dim]`.
    pub fn generate(&self, y: &Tensor, t: Option<&Tensor>) -> Tensor {
        self.linear.forward(&self.input(y, t))
    }

    /// The linear map `head ∘ G` as (weight, bias): `head(G(x)) = x Wᵀ + b` for inputs `x` of
    /// [`Generator::input`].
    pub fn compose(&self, head: &nn::Linear) -> (Tensor, Tensor) {
        let weight = head.ws.matmul(&self.linear.ws);
        let bias = match (&self.linear.bs, &head.bs) {
            (Some(bg), Some(bh)) => head.ws.mv(bg) + bh,
            (Some(bg), None) => head.ws.mv(bg),
            (None, Some(bh)) => bh.shallow_clone(),
            (None, None) => weight.new_zeros([weight.size()[0]], (weight.kind(), weight.device())),
        };
        (weight, bias)
    }

    /// The generator's input `[z; onehot(c); t]` `[n, z_dim + classes (+ text_dim)]`, drawing
    /// `z ~ N(0, I)`.
    pub fn input(&self, y: &Tensor, t: Option<&Tensor>) -> Tensor {
        let n = y.size()[0];
        let z = Tensor::randn([n, self.z_dim], (Kind::Float, self.vs.device()));
        let c = y.onehot(self.classes).to_kind(Kind::Float);
        match (self.text_dim, t) {
            (Some(_), Some(t)) => Tensor::cat(&[z, c, t.shallow_clone()], 1),
            _ => Tensor::cat(&[z, c], 1),
        }
    }
}

/// The MI observables and losses of one epoch (nats).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    /// Mean discriminator and generator (adversarial part) losses over the epoch.
    pub d_loss: f64,
    pub g_loss: f64,
    /// `L_Iy` on generated samples (eq. 16) and on real ones.
    pub l_iy_generated: f64,
    pub l_iy_real: f64,
    /// `L_It` on generated samples (eq. 18) and on real ones; None without text.
    pub l_it_generated: Option<f64>,
    pub l_it_real: Option<f64>,
    /// Lower bound on I(c; ĥ): `H(c) − L_Iy`.
    pub iy_lower_bound: f64,
    /// Lower bound on I(t; ĥ): `log B − L_It`, B the evaluation batch size.
    pub it_lower_bound: Option<f64>,
    /// Accuracy of the stage-1 classifier on generated samples (their label is the condition c).
    pub generated_accuracy: f64,
    /// Mean distance from a generated sample to its nearest real one, over the mean
    /// nearest-neighbour distance among real samples: near 0 means memorisation.
    pub nearest_real_ratio: f64,
}

/// What stage 2 produces.
#[derive(Debug)]
pub struct GanOutput {
    pub generator: Generator,
    /// The MI heads after stage 2 (unchanged unless `finetune_mi_heads`).
    pub heads: Heads,
    pub curve: Vec<EpochLog>,
    /// Learning-rate halvings used after NaN/Inf or collapse.
    pub retries: usize,
}

/// Trains the InfoGAN. `heads` are the stage-1 heads (copied, never modified in place).
pub fn train(data: &GanData, heads: &Heads, s: &Stage2, seed: u64, on_epoch: super::EpochHook) -> Result<GanOutput> {
    let mut attempt = 0;
    loop {
        let scale = 0.5f64.powi(attempt as i32);
        match train_once(data, heads, s, seed, scale, &mut *on_epoch) {
            Ok(mut out) => {
                out.retries = attempt;
                return Ok(out);
            }
            Err(Diverged { epoch, what }) if what.is_empty() => return Err(Error::Interrupted { stage: 2, epoch }),
            Err(Diverged { epoch, what }) if attempt < s.retries => {
                tracing::warn!(epoch, %what, "stage 2 diverged; retrying with halved learning rates");
                attempt += 1;
            }
            Err(Diverged { epoch, what }) => {
                return Err(Error::Train {
                    stage: 2,
                    epoch,
                    message: format!(
                        "{what} (after {attempt} retr{} with halved learning rates; lower stage2.lr_generator / \
                         lr_discriminator or raise stage2.retries)",
                        if attempt == 1 { "y" } else { "ies" }
                    ),
                });
            }
        }
    }
}

struct Diverged {
    epoch: usize,
    what: String,
}

/// A failed run: `what` says why; empty means the caller stopped it.
fn train_once(
    data: &GanData,
    heads: &Heads,
    s: &Stage2,
    seed: u64,
    lr_scale: f64,
    on_epoch: super::EpochHook,
) -> Result<GanOutput, Diverged> {
    let fail = |epoch, what: String| Diverged { epoch, what };
    tch::manual_seed(seed as i64);
    let device = data.h.device();
    let (n, audio_dim) = (data.h.size()[0], data.h.size()[1]);
    let text = if s.text_condition { data.t } else { None };
    let generator = Generator::new(s.z_dim as i64, data.classes, text.map(|t| t.size()[1]), audio_dim, device);
    let mut disc_vs = nn::VarStore::new(device);
    let disc = nn::linear(disc_vs.root() / "discriminator", audio_dim, 1, Default::default());
    // D is updated from its closed-form gradients only; autograd never needs its parameters.
    disc_vs.freeze();
    let d_fn = |x: &Tensor| disc.forward(x);
    let mut mi_heads = heads.duplicate().map_err(|e| fail(0, e.to_string()))?;
    if !s.finetune_mi_heads {
        mi_heads.vs.freeze();
    }
    let adam = |params: Vec<Tensor>, lr: f64| Adam::new(params, lr * lr_scale, (0.5, 0.999), 1e-8);
    let mut opt_g = adam(linear_params(&generator.linear), s.lr_generator);
    let mut opt_d = adam(linear_params(&disc), s.lr_discriminator);
    let mut opt_q = s.finetune_mi_heads.then(|| adam(mi_heads.vs.trainable_variables(), s.lr_generator));
    // Frozen heads: the generator step in closed form, with W_t folded into the text critic.
    let critic = match (&opt_q, text, &mi_heads.text_proj) {
        (None, Some(t), Some(proj)) if s.lambda_it > 0.0 => Some(TextCritic::new(t, proj, data.temperature)),
        _ => None,
    };
    let mixup = s.mixup.then_some(s.mixup_alpha);
    let bs = (s.batch_size as i64).min(n).max(2);
    let h_c = label_entropy(data.y, data.classes);
    let mut curve = Vec::with_capacity(s.epochs);
    let nearest = tch::no_grad(|| NearestReal::new(data.h));
    let real_spread = tch::no_grad(|| spread(data.h));
    let frozen_real = (!s.finetune_mi_heads).then(|| tch::no_grad(|| real_terms(data, text, &mi_heads, bs)));
    for epoch in 1..=s.epochs {
        let perm = Tensor::randperm(n, (Kind::Int64, device));
        let (mut d_sum, mut g_sum, mut steps) = (0.0, 0.0, 0usize);
        for start in (0..n - bs + 1).step_by(bs as usize) {
            let idx = perm.narrow(0, start, bs);
            let h = data.h.index_select(0, &idx);
            let y = data.y.index_select(0, &idx);
            let t = text.map(|t| t.index_select(0, &idx));
            let x = generator.input(&y, t.as_ref());
            let fake = match opt_q {
                None => tch::no_grad(|| generator.linear.forward(&x)),
                Some(_) => generator.linear.forward(&x),
            };
            let (d_loss, d_grads) = tch::no_grad(|| Discriminator(&disc).step(&h, &fake, mixup));
            opt_d.step(&d_grads);

            let adv = match &mut opt_q {
                None => tch::no_grad(|| {
                    let (adv, mut grad) = Discriminator(&disc).generator_loss(&h, &fake, mixup);
                    if s.lambda_iy > 0.0 {
                        let (_, g) = cross_entropy_with_grad(&mi_heads.logits(&fake), &y);
                        grad += s.lambda_iy * g.matmul(&mi_heads.classifier.ws);
                    }
                    if let Some(critic) = &critic {
                        grad += s.lambda_it * critic.loss_with_grad(&idx, &fake).1;
                    }
                    opt_g.step(&linear_grads(&generator.linear, &grad, &x));
                    adv
                }),
                Some(opt_q) => {
                    let adv = generator_loss(&d_fn, &h, &fake, mixup);
                    // A copy: the in-place `+=` below must leave `adv`, the logged adversarial part,
                    // alone.
                    let mut g_loss = adv.copy();
                    if s.lambda_iy > 0.0 {
                        g_loss += s.lambda_iy * cross_entropy(&mi_heads.logits(&fake), &y);
                    }
                    if let (true, Some(t)) = (s.lambda_it > 0.0, &t)
                        && let Some(t_hat) = mi_heads.project_text(&fake)
                    {
                        g_loss += s.lambda_it * info_nce(t, &t_hat, data.temperature);
                    }
                    // Fine-tuned heads also keep their stage-1 job on real samples (paper 3.2.2).
                    g_loss += cross_entropy(&mi_heads.logits(&h), &y);
                    if let (Some(t), Some(t_hat)) = (&t, mi_heads.project_text(&h)) {
                        g_loss += info_nce(t, &t_hat, data.temperature);
                    }
                    g_loss.backward();
                    step_from_autograd(&mut opt_g);
                    step_from_autograd(opt_q);
                    adv
                }
            };
            let (dl, gl) = (d_loss.double_value(&[]), adv.double_value(&[]));
            if !dl.is_finite() || !gl.is_finite() {
                return Err(fail(
                    epoch,
                    format!("loss became {} (D {dl}, G {gl})", if dl.is_nan() || gl.is_nan() { "NaN" } else { "Inf" }),
                ));
            }
            d_sum += dl;
            g_sum += gl;
            steps += 1;
        }
        let log = tch::no_grad(|| {
            let real = frozen_real.unwrap_or_else(|| real_terms(data, text, &mi_heads, bs));
            observe(data, text, &generator, &mi_heads, bs, (h_c, &nearest), real)
        });
        let log = EpochLog { epoch, d_loss: d_sum / steps.max(1) as f64, g_loss: g_sum / steps.max(1) as f64, ..log };
        if !log.l_iy_generated.is_finite() {
            return Err(fail(epoch, "generated samples give a non-finite L_Iy".into()));
        }
        if log.nearest_real_ratio.is_finite() && collapsed(&generator, data, text, real_spread) {
            return Err(fail(epoch, "the generator collapsed: generated samples have (almost) no spread".into()));
        }
        tracing::info!(
            epoch,
            d = log.d_loss,
            g = log.g_loss,
            l_iy = log.l_iy_generated,
            l_it = log.l_it_generated,
            acc = log.generated_accuracy,
            "stage 2"
        );
        curve.push(log);
        if !on_epoch(epoch) {
            return Err(fail(epoch, String::new()));
        }
    }
    Ok(GanOutput { generator, heads: mi_heads, curve, retries: 0 })
}

/// An Adam step from the gradients autograd left on the parameters, which it then clears.
fn step_from_autograd(opt: &mut Adam) {
    let grads: Vec<Tensor> = opt
        .params()
        .iter()
        .map(|p| {
            let mut g = p.grad();
            if !g.defined() {
                return p.zeros_like();
            }
            let copy = g.copy();
            let _ = g.zero_();
            copy
        })
        .collect();
    opt.step(&grads);
}

/// Entropy of the empirical label distribution, in nats.
fn label_entropy(y: &Tensor, classes: i64) -> f64 {
    let counts = y.bincount::<Tensor>(None, classes).to_kind(Kind::Double);
    let p = &counts / counts.sum(Kind::Double);
    let nz = p.masked_select(&p.gt(0.0));
    -(&nz * nz.log()).sum(Kind::Double).double_value(&[])
}

/// The MI heads on real features: `(L_Iy, L_It)` over the training set in batches of `bs`. With
/// frozen heads these never change, so they are computed once per training run.
fn real_terms(data: &GanData, text: Option<&Tensor>, heads: &Heads, bs: i64) -> (f64, Option<f64>) {
    let n = data.h.size()[0];
    let (mut iy, mut it, mut batches) = (0.0, 0.0, 0usize);
    for start in (0..n - bs + 1).step_by(bs as usize) {
        let h = data.h.narrow(0, start, bs);
        iy += cross_entropy(&heads.logits(&h), &data.y.narrow(0, start, bs)).double_value(&[]);
        if let (Some(t), Some(tr)) = (text, heads.project_text(&h)) {
            it += info_nce(&t.narrow(0, start, bs), &tr, data.temperature).double_value(&[]);
        }
        batches += 1;
    }
    let b = batches.max(1) as f64;
    (iy / b, (text.is_some() && heads.text_proj.is_some()).then_some(it / b))
}

/// MI observables of the generator at the end of an epoch, over the training set in batches of
/// `bs` (a fresh draw of z); `h_c` is H(c), `real` the heads' losses on real features. The
/// caller sets the epoch and the training losses.
fn observe(
    data: &GanData,
    text: Option<&Tensor>,
    g: &Generator,
    heads: &Heads,
    bs: i64,
    (h_c, nearest): (f64, &NearestReal),
    real: (f64, Option<f64>),
) -> EpochLog {
    let n = data.h.size()[0];
    let batches = n / bs;
    let (mut iy_g, mut it_g, mut correct) = (0.0, 0.0, 0i64);
    let mut kept = None;
    // G and the heads are linear, so the heads' outputs on ĥ = G(x) come from the composed maps
    // (W_y G and W_t G, composed once per epoch) without computing ĥ for every row; ĥ itself is
    // needed only for the memorisation check's rows. Whole batches go in chunks of about
    // OBSERVE_ROWS rows, so the products are large matmuls; the losses are still per batch of
    // `bs`, InfoNCE's negatives too.
    let classify = g.compose(&heads.classifier);
    let project = heads.text_proj.as_ref().map(|p| g.compose(p));
    let per_chunk = (OBSERVE_ROWS / bs).max(1);
    for first in (0..batches).step_by(per_chunk as usize) {
        let rows = per_chunk.min(batches - first) * bs;
        let y = data.y.narrow(0, first * bs, rows);
        let t = text.map(|t| t.narrow(0, first * bs, rows));
        let x = g.input(&y, t.as_ref());
        let logits = x.linear(&classify.0, Some(&classify.1));
        correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
        let t_hat = t.as_ref().and(project.as_ref()).map(|(w, b)| x.linear(w, Some(b)));
        for start in (0..rows).step_by(bs as usize) {
            let batch = |x: &Tensor| x.narrow(0, start, bs);
            iy_g += cross_entropy(&batch(&logits), &batch(&y)).double_value(&[]);
            if let (Some(t), Some(tf)) = (&t, &t_hat) {
                it_g += info_nce(&batch(t), &batch(tf), data.temperature).double_value(&[]);
            }
        }
        kept.get_or_insert_with(|| g.linear.forward(&x.narrow(0, 0, rows.min(NEAREST_ROWS))));
    }
    let b = batches.max(1) as f64;
    let has_text = real.1.is_some();
    EpochLog {
        epoch: 0,
        d_loss: 0.0,
        g_loss: 0.0,
        l_iy_generated: iy_g / b,
        l_iy_real: real.0,
        l_it_generated: has_text.then_some(it_g / b),
        l_it_real: real.1,
        iy_lower_bound: h_c - iy_g / b,
        it_lower_bound: has_text.then(|| (bs as f64).ln() - it_g / b),
        generated_accuracy: correct as f64 / (batches * bs).max(1) as f64,
        nearest_real_ratio: kept.map_or(f64::NAN, |fake| nearest.ratio(&fake)),
    }
}

/// Rows per chunk of the end-of-epoch observation pass.
const OBSERVE_ROWS: i64 = 4096;

/// Rows compared by the memorisation check.
const NEAREST_ROWS: i64 = 512;

/// The memorisation check: the mean distance from a generated sample to its nearest real one,
/// over the mean real-to-real nearest-neighbour distance (self excluded), on at most
/// [`NEAREST_ROWS`] rows of each (the first rows). The real side is fixed, so it is measured once.
pub struct NearestReal {
    real: Tensor,
    real_nn: f64,
}

impl NearestReal {
    /// Measures the real features' own nearest-neighbour distance.
    pub fn new(real: &Tensor) -> NearestReal {
        let real = real.narrow(0, 0, real.size()[0].min(NEAREST_ROWS));
        let real_nn = if real.size()[0] < 2 {
            f64::NAN
        } else {
            let rr = Tensor::cdist(&real, &real, 2.0, None);
            let eye = Tensor::eye(rr.size()[0], (Kind::Float, rr.device())) * 1e30;
            (rr + eye).min_dim(1, false).0.mean(Kind::Double).double_value(&[])
        };
        NearestReal { real, real_nn }
    }

    /// The ratio for generated features `fake` `[n, d]`: near 0 means memorisation; NaN when
    /// either side is too small to measure.
    pub fn ratio(&self, fake: &Tensor) -> f64 {
        let fake = fake.narrow(0, 0, fake.size()[0].min(NEAREST_ROWS));
        if self.real_nn.is_nan() || self.real_nn <= 0.0 || fake.size()[0] == 0 {
            return f64::NAN;
        }
        let gen_nn =
            Tensor::cdist(&fake, &self.real, 2.0, None).min_dim(1, false).0.mean(Kind::Double).double_value(&[]);
        gen_nn / self.real_nn
    }
}

/// Rows compared by the collapse check.
const COLLAPSE_ROWS: i64 = 256;

/// Mean per-dimension standard deviation of the first [`COLLAPSE_ROWS`] rows of `x` `[n, d]`.
fn spread(x: &Tensor) -> f64 {
    let x = x.narrow(0, 0, x.size()[0].min(COLLAPSE_ROWS));
    x.std_dim([0].as_slice(), true, false).mean(Kind::Double).double_value(&[])
}

/// Collapse: the generated samples' spread is below 1e-4 of the real one (`real_spread`).
fn collapsed(g: &Generator, data: &GanData, text: Option<&Tensor>, real_spread: f64) -> bool {
    tch::no_grad(|| {
        let n = data.h.size()[0].min(COLLAPSE_ROWS);
        let fake = g.generate(&data.y.narrow(0, 0, n), text.map(|t| t.narrow(0, 0, n)).as_ref());
        spread(&fake) < 1e-4 * real_spread
    })
}
