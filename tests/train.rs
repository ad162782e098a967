//! Losses, metrics, the stage-3 classifier fit and the stage-2 InfoGAN, on hand-computed values and
//! synthetic features whose structure is known.

use sera::metrics::{Metrics, mean_std};
use sera::spec::stages::Stage2;
use sera::train::classifier::{FitSettings, Labelled, fit};
use sera::train::heads::Heads;
use sera::train::losses::info_nce;
use sera::train::stage2::{GanData, train};
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor};

use crate::common::torch_rng;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn info_nce_matches_hand_computation() {
    // Identity pairs at τ = 1: logits [[1, 0], [0, 1]], loss = −log(e / (e + 1)) = ln(1 + e⁻¹).
    let a = Tensor::from_slice2(&[[1.0f32, 0.0], [0.0, 1.0]]);
    let want = (1.0 + (-1.0f64).exp()).ln();
    assert!(close(info_nce(&a, &a, 1.0).double_value(&[]), want, 1e-6));
    // Cosine similarity ignores scale.
    let b = Tensor::from_slice2(&[[2.0f32, 0.0], [0.0, 3.0]]);
    assert!(close(info_nce(&a, &b, 1.0).double_value(&[]), want, 1e-6));
    // τ = 0.5 doubles the logits: ln(1 + e⁻²).
    assert!(close(info_nce(&a, &b, 0.5).double_value(&[]), (1.0 + (-2.0f64).exp()).ln(), 1e-6));
}

#[test]
fn metrics_match_hand_computation() {
    let truth = [0, 0, 1, 1, 2, 2, 2];
    let pred = [0, 1, 1, 1, 2, 0, 2];
    let m = Metrics::compute(&truth, &pred, 4);
    assert_eq!(m.confusion, vec![vec![1, 1, 0, 0], vec![0, 2, 0, 0], vec![1, 0, 2, 0], vec![0, 0, 0, 0]]);
    assert_eq!(m.recall, vec![Some(0.5), Some(1.0), Some(2.0 / 3.0), None]);
    assert!(close(m.uar, (0.5 + 1.0 + 2.0 / 3.0) / 3.0, 1e-12), "class 3 has no support and is left out");
    assert!(close(m.wa, 5.0 / 7.0, 1e-12));
    // F1: class 0 2·1/(2+2) = 0.5, class 1 2·2/(3+2) = 0.8, class 2 2·2/(2+3) = 0.8.
    assert!(close(m.macro_f1, 0.7, 1e-12));
    let (mean, std) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
    assert_eq!(mean, 2.5);
    assert!(close(std.expect("n > 1"), (5.0f64 / 3.0).sqrt(), 1e-12), "sample std (n − 1)");
    assert_eq!(mean_std(&[3.0]).1, None);
}

/// Four Gaussian clusters in 16-d (one per class), and text features that are a fixed linear map
/// of each sample's offset from its class centre plus noise: y is recoverable from h through the
/// centres, t through the offsets. The caller holds the RNG lock.
fn synthetic(n_per_class: i64, seed: i64) -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(seed);
    let centres = Tensor::randn([4, 16], (Kind::Float, Device::Cpu)) * 3.0;
    let map = Tensor::randn([16, 8], (Kind::Float, Device::Cpu));
    let y = Tensor::arange(4, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(n_per_class, 0, None);
    let offsets = Tensor::randn([4 * n_per_class, 16], (Kind::Float, Device::Cpu));
    let h = centres.index_select(0, &y) + &offsets;
    let t = offsets.matmul(&map) + 0.1 * Tensor::randn([4 * n_per_class, 8], (Kind::Float, Device::Cpu));
    (h, y, t)
}

/// Stage-1-like heads: classifier and W_t trained directly on the real features.
fn trained_heads(h: &Tensor, y: &Tensor, t: &Tensor) -> Heads {
    let heads = Heads::new(16, 4, Some(8), Device::Cpu);
    let mut opt = tch::nn::Adam::default().build(&heads.vs, 1e-2).expect("adam");
    for _ in 0..300 {
        let t_hat = heads.project_text(h).expect("text head");
        let loss = heads.logits(h).cross_entropy_for_logits(y) + info_nce(t, &t_hat, 0.1);
        opt.backward_step(&loss);
    }
    heads
}

#[test]
fn classifier_fit_selects_epoch_on_validation() {
    let _rng = torch_rng();
    let (h, y, _) = synthetic(50, 1);
    let (hv, yv, _) = synthetic(20, 1);
    let s = FitSettings { epochs: 5, batch_size: 32, lr: 1e-2, seed: 0 };
    let f = fit(&Labelled { x: &h, y: &y }, Some(&Labelled { x: &hv, y: &yv }), 4, None, s).expect("fit");
    let m = f.evaluate(&Labelled { x: &hv, y: &yv }, 4);
    assert_eq!(f.validation_uar, Some(m.uar), "the kept weights are the selected epoch's");
    assert!(m.uar > 0.95, "separable clusters: UAR {}", m.uar);
    let again = fit(&Labelled { x: &h, y: &y }, Some(&Labelled { x: &hv, y: &yv }), 4, None, s).expect("fit");
    assert!(again.linear.ws.equal(&f.linear.ws), "same seed, same weights");
}

fn gan_settings() -> Stage2 {
    Stage2 { epochs: 80, batch_size: 32, z_dim: 8, lr_generator: 2e-3, lr_discriminator: 2e-3, ..Stage2::default() }
}

#[test]
fn infogan_generates_class_and_text_consistent_features() {
    let _rng = torch_rng();
    let (h, y, t) = synthetic(64, 2);
    let heads = trained_heads(&h, &y, &t);
    let data = GanData { h: &h, y: &y, t: Some(&t), classes: 4, temperature: 0.1 };
    let out = train(&data, &heads, &gan_settings(), 7, &mut |_| true).expect("stage 2");
    let first = &out.curve[0];
    let last = out.curve.last().expect("epochs");
    assert_eq!(out.curve.len(), 80);
    assert!(last.generated_accuracy > 0.9, "L_Iy makes ĥ carry its label: {last:?} (first {first:?})");
    assert!(last.l_iy_generated < first.l_iy_generated);
    // H(c) = ln 4 for balanced classes; the bound is positive once ĥ carries the label.
    assert!(last.iy_lower_bound > 0.5 && last.iy_lower_bound <= 4f64.ln() + 1e-9, "{}", last.iy_lower_bound);
    let it = last.it_lower_bound.expect("text head");
    assert!(it > 0.0 && it <= 32f64.ln(), "{it}");
    assert!(last.nearest_real_ratio > 0.05, "not a copy of the training set: {}", last.nearest_real_ratio);
    // Frozen MI heads stay exactly the stage-1 heads.
    assert!(out.heads.vs.variables()["classifier.weight"].equal(&heads.vs.variables()["classifier.weight"]));

    // Bit-for-bit reproducible on CPU for the same seed.
    let again = train(&data, &heads, &gan_settings(), 7, &mut |_| true).expect("stage 2");
    assert_eq!(again.curve, out.curve);
    assert!(again.generator.linear.ws.equal(&out.generator.linear.ws));
}

#[test]
fn infogan_without_text_condition_has_no_text_observables() {
    let _rng = torch_rng();
    let (h, y, t) = synthetic(32, 3);
    let heads = trained_heads(&h, &y, &t);
    let s = Stage2 { text_condition: false, lambda_it: 0.0, epochs: 3, ..gan_settings() };
    let out = train(&GanData { h: &h, y: &y, t: Some(&t), classes: 4, temperature: 0.1 }, &heads, &s, 1, &mut |_| true)
        .expect("stage 2");
    assert_eq!(out.generator.text_dim, None);
    assert!(out.curve.iter().all(|e| e.l_it_generated.is_none() && e.it_lower_bound.is_none()));
}

#[test]
fn divergence_stops_with_the_stage_and_epoch() {
    let _rng = torch_rng();
    let (h, y, t) = synthetic(32, 4);
    let heads = trained_heads(&h, &y, &t);
    let s =
        Stage2 { lr_generator: 1e30, lr_discriminator: 1e30, retries: 1, mixup: false, epochs: 5, ..gan_settings() };
    let err = train(&GanData { h: &h, y: &y, t: Some(&t), classes: 4, temperature: 0.1 }, &heads, &s, 1, &mut |_| true)
        .expect_err("a learning rate of 1e30 diverges")
        .to_string();
    assert!(err.starts_with("stage 2, epoch "), "{err}");
    assert!(err.contains("after 1 retry"), "{err}");
}

#[test]
fn infogan_with_fine_tuned_heads_trains_them_and_tracks_their_real_losses() {
    let _rng = torch_rng();
    let (h, y, t) = synthetic(32, 6);
    let heads = trained_heads(&h, &y, &t);
    let s = Stage2 { finetune_mi_heads: true, epochs: 3, ..gan_settings() };
    let out = train(&GanData { h: &h, y: &y, t: Some(&t), classes: 4, temperature: 0.1 }, &heads, &s, 1, &mut |_| true)
        .expect("stage 2");
    let moved = |name: &str| !out.heads.vs.variables()[name].equal(&heads.vs.variables()[name]);
    assert!(moved("classifier.weight") && moved("text_proj.weight"), "fine-tuned heads are trained");
    // Their losses on real features are measured again every epoch, so they change.
    assert_ne!(out.curve[0].l_it_real, out.curve[2].l_it_real);
    assert!(out.curve.iter().all(|e| e.l_iy_generated.is_finite() && e.l_it_generated.is_some()));

    // With one batch per epoch, the first epoch's D and adversarial G losses come before any
    // head is updated, so the autograd path (fine-tuned heads) and the closed form (frozen
    // heads) log the same numbers: the adversarial part alone, without the MI terms.
    let one = |finetune_mi_heads| {
        let s = Stage2 { finetune_mi_heads, epochs: 1, batch_size: 128, ..gan_settings() };
        let out =
            train(&GanData { h: &h, y: &y, t: Some(&t), classes: 4, temperature: 0.1 }, &heads, &s, 1, &mut |_| true)
                .expect("stage 2");
        out.curve[0].clone()
    };
    let (tuned, frozen) = (one(true), one(false));
    assert!(close(tuned.d_loss, frozen.d_loss, 1e-5), "{tuned:?} vs {frozen:?}");
    assert!(close(tuned.g_loss, frozen.g_loss, 1e-5), "{tuned:?} vs {frozen:?}");
}

/// Autograd's value and gradient of `loss` at `x`.
fn autograd(x: &Tensor, loss: impl Fn(&Tensor) -> Tensor) -> (f64, Tensor) {
    let x = x.detach().set_requires_grad(true);
    let l = loss(&x);
    let g = Tensor::run_backward(&[&l], &[&x], false, false);
    (l.double_value(&[]), g[0].shallow_clone())
}

/// Largest absolute difference over the largest magnitude of `want`.
fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    (got - want).abs().max().double_value(&[]) / want.abs().max().double_value(&[]).max(1e-30)
}

#[test]
fn closed_form_stage2_gradients_match_autograd() {
    use sera::train::gan_grads::{Discriminator, TextCritic, cross_entropy_with_grad};
    use sera::train::losses::{discriminator_loss, generator_loss};
    use tch::nn::Module;
    let _rng = torch_rng();
    tch::manual_seed(11);
    let (b, d, dt) = (16, 12, 10);
    let randn = |shape: [i64; 2]| Tensor::randn(shape, (Kind::Float, Device::Cpu));
    let (h, fake) = (randn([b, d]), randn([b, d]));
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let disc = tch::nn::linear(vs.root() / "d", d, 1, Default::default());
    let d_bias = disc.bs.as_ref().expect("bias");
    let d_fn = |x: &Tensor| disc.forward(x);
    for mixup in [None, Some(0.2)] {
        // The closed form and the autograd reference draw the same mix-up λ from the same seed.
        tch::manual_seed(5);
        let (loss, grads) = tch::no_grad(|| Discriminator(&disc).step(&h, &fake, mixup));
        tch::manual_seed(5);
        let want = discriminator_loss(&d_fn, &h, &fake, mixup);
        let want_grads = Tensor::run_backward(&[&want], &[&disc.ws, d_bias], false, false);
        assert!(close(loss.double_value(&[]), want.double_value(&[]), 1e-6), "{mixup:?}");
        assert!(rel_err(&grads[0], &want_grads[0]) < 1e-5, "D weight, mix-up {mixup:?}");
        assert!(rel_err(&grads[1], &want_grads[1]) < 1e-5, "D bias, mix-up {mixup:?}");

        tch::manual_seed(6);
        let (adv, grad) = tch::no_grad(|| Discriminator(&disc).generator_loss(&h, &fake, mixup));
        tch::manual_seed(6);
        let (want, want_grad) = autograd(&fake, |f| generator_loss(&d_fn, &h, f, mixup));
        assert!(close(adv.double_value(&[]), want, 1e-6), "{mixup:?}");
        assert!(rel_err(&grad, &want_grad) < 1e-5, "adversarial gradient, mix-up {mixup:?}");
    }

    let logits = randn([b, 4]);
    let y = Tensor::randint(4, [b], (Kind::Int64, Device::Cpu));
    let (loss, grad) = cross_entropy_with_grad(&logits, &y);
    let (want, want_grad) = autograd(&logits, |l| l.cross_entropy_for_logits(&y));
    assert!(close(loss.double_value(&[]), want, 1e-6));
    assert!(rel_err(&grad, &want_grad) < 1e-5, "cross-entropy gradient");

    // The text critic folds W_t into precomputed products; autograd goes through W_t itself.
    let t = randn([40, dt]);
    let proj = tch::nn::linear(vs.root() / "w_t", d, dt, Default::default());
    let rows = Tensor::randperm(40, (Kind::Int64, Device::Cpu)).narrow(0, 0, b);
    for temperature in [0.07, 1.0] {
        let (loss, grad) = TextCritic::new(&t, &proj, temperature).loss_with_grad(&rows, &fake);
        let (want, want_grad) = autograd(&fake, |f| info_nce(&t.index_select(0, &rows), &proj.forward(f), temperature));
        assert!(close(loss.double_value(&[]), want, 1e-5 * want.abs().max(1.0)), "τ {temperature}: {loss:?} vs {want}");
        assert!(
            rel_err(&grad, &want_grad) < 1e-4,
            "InfoNCE gradient at τ {temperature}: {}",
            rel_err(&grad, &want_grad)
        );
    }
}

#[test]
fn a_head_composed_with_the_generator_equals_the_head_after_it() {
    use sera::train::stage2::Generator;
    use tch::nn::Module;
    let _rng = torch_rng();
    tch::manual_seed(12);
    let g = Generator::new(4, 3, Some(5), 6, Device::Cpu);
    let heads = Heads::new(6, 3, Some(5), Device::Cpu);
    let y = Tensor::from_slice(&[0i64, 2, 1, 1]);
    let x = g.input(&y, Some(&Tensor::randn([4, 5], (Kind::Float, Device::Cpu))));
    let fake = g.linear.forward(&x);
    for head in [&heads.classifier, heads.text_proj.as_ref().expect("text head")] {
        let (w, b) = g.compose(head);
        assert!(rel_err(&x.linear(&w, Some(&b)), &head.forward(&fake)) < 1e-5);
    }
}

#[test]
fn adam_matches_libtorch_adam() {
    use sera::train::adam::Adam;
    let _rng = torch_rng();
    tch::manual_seed(3);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let w = vs.root().randn("w", &[300, 70], 0.0, 1.0);
    let b = vs.root().randn("b", &[70], 0.0, 1.0);
    let copy = |x: &Tensor| x.detach().copy();
    let (w0, b0) = (copy(&w), copy(&b));
    let mut fused = Adam::new(vec![copy(&w), copy(&b)], 1e-2, (0.5, 0.999), 1e-8);
    let mut ops = Adam::new(vec![copy(&w), copy(&b)], 1e-2, (0.5, 0.999), 1e-8).with_tensor_ops();
    let mut reference =
        tch::nn::Adam { beta1: 0.5, beta2: 0.999, wd: 0.0, eps: 1e-8, amsgrad: false }.build(&vs, 1e-2).expect("adam");
    for step in 0..6 {
        // Gradients of mixed scales, some zero, as a generator's are.
        let scale = if step % 2 == 0 { 1e-3 } else { 1.0 };
        let gw = Tensor::randn([300, 70], (Kind::Float, Device::Cpu)) * scale;
        let gb = Tensor::randn([70], (Kind::Float, Device::Cpu)).relu();
        fused.step(&[gw.shallow_clone(), gb.shallow_clone()]);
        ops.step(&[gw.shallow_clone(), gb.shallow_clone()]);
        // sum(w · gw) + sum(b · gb) has exactly these gradients.
        reference.zero_grad();
        ((&w * &gw).sum(Kind::Float) + (&b * &gb).sum(Kind::Float)).backward();
        reference.step();
    }
    for (i, (want, start)) in [(&w, &w0), (&b, &b0)].into_iter().enumerate() {
        assert!((want - start).abs().max().double_value(&[]) > 1e-2, "six steps of lr 1e-2 move parameter {i}");
        assert!(rel_err(&fused.params()[i], want) < 1e-6, "fused, parameter {i}");
        assert!(rel_err(&ops.params()[i], want) < 1e-6, "tensor ops, parameter {i}");
    }
}

#[test]
fn class_balanced_generation_fills_minority_classes_up_to_the_majority() {
    use sera::spec::stages::{Augment, Stage3};
    use sera::train::stage2::Generator;
    use sera::train::stage3::{FoldFeatures, Split, run};
    let _rng = torch_rng();
    let (h, y, t) = synthetic(30, 5);
    // Keep 30 neutral, 20 happy, 10 angry, 5 sad rows: imbalanced.
    let keep: Vec<i64> = (0..120i64).filter(|i| (i % 30) < [30, 20, 10, 5][(i / 30) as usize]).collect();
    let idx = Tensor::from_slice(&keep);
    let (h, y, t) = (h.index_select(0, &idx), y.index_select(0, &idx), t.index_select(0, &idx));
    let heads = trained_heads(&h, &y, &t);
    let g = Generator::new(8, 4, Some(8), 16, Device::Cpu);
    let split = |h: &Tensor, y: &Tensor, t: &Tensor| Split {
        h: h.shallow_clone(),
        t: Some(t.shallow_clone()),
        y: y.shallow_clone(),
    };
    let f = FoldFeatures { train: split(&h, &y, &t), validation: None, test: split(&h, &y, &t), classes: 4 };
    let s = Stage3 { augment: Augment::ClassBalanced, epochs: 2, ..Stage3::default() };
    let out = run(&f, &heads, &g, &s, 0).expect("stage 3");
    // One generated row per real row (65), plus 0 + 10 + 20 + 25 to reach 30 per class.
    assert_eq!(out.generated_y.size(), [65 + 55]);
    let counts = Vec::<i64>::try_from(out.generated_y.narrow(0, 65, 55).bincount::<Tensor>(None, 4)).expect("counts");
    assert_eq!(counts, [0, 10, 20, 25]);
    let t_gen = out.generated_t.expect("t' for multimodal");
    assert_eq!(t_gen.size(), [120, 8]);
    assert!(out.after.fusion.is_some() && out.after.text.is_some());
}

#[test]
fn bf16_autocast_runs_matmuls_in_bf16_and_stays_close_to_fp32() {
    let _rng = torch_rng();
    tch::manual_seed(3);
    let a = Tensor::randn([32, 64], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([64, 16], (Kind::Float, Device::Cpu));
    let full = a.matmul(&b);
    let (kind, half) = sera::precision::bf16_autocast(Device::Cpu, || {
        let m = a.matmul(&b);
        (m.kind(), m.to_kind(Kind::Float))
    });
    assert_eq!(kind, Kind::BFloat16, "autocast is on inside the closure");
    assert_eq!(a.matmul(&b).kind(), Kind::Float, "and off after it");
    let rel = ((&full - &half).abs().max().double_value(&[])) / full.abs().max().double_value(&[]);
    assert!(rel < 2e-2, "bf16 rounding only: {rel}");
}
