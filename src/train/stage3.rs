//! Stage 3: augmentation (paper 3.3, 4.4, 5.2.3). Everything is frozen except the classifiers,
//! which are retrained on real plus generated features:
//! - SER (`double`): one `ĥ = G(z, c_i, t_i)` per training utterance, so the classifier sees 2×.
//! - multimodal: synthesised text features `t' = W_t ĥ`; a fusion classifier on `[audio; text]`
//!   trained on all four combinations (h | ĥ) × (t | t'), i.e. 4×, plus audio-only (h, ĥ) and
//!   text-only (t, t') classifiers for the three columns of Tables IV–VI.
//! - class-balanced: additionally, minority classes are generated from the label alone up to the
//!   majority count; the text condition is a real text feature of a training utterance of that
//!   class (`class-sample`, default) or the class's mean text feature (`class-mean`).
//!
//! "Before augmentation" metrics come from the same classifiers trained on real features only
//! (for SER: the stage-1 classifier itself), so both columns come from one job.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::classifier::{FitSettings, Fitted, Labelled, fit};
use super::heads::Heads;
use super::stage2::Generator;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::spec::stages::{Augment, BalanceText, Stage3};

/// Features of one split of a fold.
pub struct Split {
    /// Audio features `[n, audio_dim]`.
    pub h: Tensor,
    /// Text features `[n, text_dim]`.
    pub t: Option<Tensor>,
    /// Class indices `[n]`.
    pub y: Tensor,
}

/// The features of a fold after stage 1.
pub struct FoldFeatures {
    pub train: Split,
    pub validation: Option<Split>,
    pub test: Split,
    pub classes: i64,
}

/// Metrics per modality (text and fusion only in multimodal jobs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModalityMetrics {
    pub audio: Metrics,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Metrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion: Option<Metrics>,
}

/// How each stage-3 classifier was selected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub best_epoch: usize,
    pub validation_uar: Option<f64>,
    /// Training rows (real + generated).
    pub train_rows: i64,
}

/// What stage 3 produces.
pub struct Stage3Output {
    /// Multimodal: metrics of the classifiers trained on real features only (no augmentation).
    /// None for SER, whose metrics before augmentation are the stage-1 classifier's.
    pub before: Option<ModalityMetrics>,
    pub after: ModalityMetrics,
    /// The retrained audio classifier (the SER model of the paper).
    pub audio: Fitted,
    pub text: Option<Fitted>,
    pub fusion: Option<Fitted>,
    /// Generated training features `ĥ` (and `t'`), `[n_generated, dim]`, with their labels.
    pub generated_h: Tensor,
    pub generated_t: Option<Tensor>,
    pub generated_y: Tensor,
    pub selection: Vec<(String, Selection)>,
}

/// Runs stage 3. `heads` are the MI heads after stage 2 (the classifier starting point and W_t).
pub fn run(f: &FoldFeatures, heads: &Heads, generator: &Generator, s: &Stage3, seed: u64) -> Result<Stage3Output> {
    if s.augment == Augment::None {
        return Err(Error::Train { stage: 3, epoch: 0, message: "stage3.augment = \"none\" has no stage 3".into() });
    }
    tch::manual_seed(seed as i64 ^ 0x5e3a);
    let cond_t = if generator.text_dim.is_some() { f.train.t.as_ref() } else { None };
    let (mut gen_h, mut gen_y) = tch::no_grad(|| (generator.generate(&f.train.y, cond_t), f.train.y.shallow_clone()));
    if s.augment == Augment::ClassBalanced {
        let (bh, by) = tch::no_grad(|| balance(f, generator, s.balance_text))?;
        gen_h = Tensor::cat(&[gen_h, bh], 0);
        gen_y = Tensor::cat(&[gen_y, by], 0);
    }
    let multimodal = matches!(s.augment, Augment::Multimodal | Augment::ClassBalanced);
    let gen_t = if multimodal { tch::no_grad(|| heads.project_text(&gen_h)) } else { None };
    if multimodal && (gen_t.is_none() || f.train.t.is_none()) {
        return Err(Error::Train {
            stage: 3,
            epoch: 0,
            message: "multimodal augmentation needs text features and the stage-1 text projection W_t".into(),
        });
    }
    let fit_s = FitSettings { epochs: s.epochs, batch_size: s.batch_size, lr: s.lr, seed };
    let classes = f.classes;
    let n = classes as usize;
    let val = |x: Tensor| f.validation.as_ref().map(|v| (x, v.y.shallow_clone()));
    let val_audio = || f.validation.as_ref().map(|v| (v.h.shallow_clone(), v.y.shallow_clone()));
    let mut selection = Vec::new();
    let mut train_one = |name: &str,
                         x: Tensor,
                         y: Tensor,
                         vx: Option<(Tensor, Tensor)>,
                         init: Option<(&Tensor, &Tensor)>| {
        let fitted = fit(
            &Labelled { x: &x, y: &y },
            vx.as_ref().map(|(x, y)| Labelled { x, y }).as_ref(),
            classes,
            init,
            fit_s,
        )?;
        selection.push((
            name.to_string(),
            Selection { best_epoch: fitted.best_epoch, validation_uar: fitted.validation_uar, train_rows: x.size()[0] },
        ));
        Ok::<Fitted, Error>(fitted)
    };

    // Audio: h ∪ ĥ, starting from the stage-1 classifier (the only module left trainable).
    let w = heads.classifier.ws.shallow_clone();
    let b = heads
        .classifier
        .bs
        .as_ref()
        .map(Tensor::shallow_clone)
        .unwrap_or_else(|| Tensor::zeros([classes], (Kind::Float, w.device())));
    let audio = train_one(
        "audio",
        Tensor::cat(&[&f.train.h, &gen_h], 0),
        Tensor::cat(&[&f.train.y, &gen_y], 0),
        val_audio(),
        Some((&w, &b)),
    )?;
    let audio_after = audio.evaluate(&Labelled { x: &f.test.h, y: &f.test.y }, n);
    if !multimodal {
        // The metrics before augmentation are the stage-1 classifier's, which the caller has.
        return Ok(Stage3Output {
            before: None,
            after: ModalityMetrics { audio: audio_after, text: None, fusion: None },
            audio,
            text: None,
            fusion: None,
            generated_h: gen_h,
            generated_t: None,
            generated_y: gen_y,
            selection,
        });
    }

    let (Some(t), Some(gt)) = (&f.train.t, &gen_t) else {
        return Err(missing_text("training"));
    };
    let test_t = f.test.t.as_ref().ok_or_else(|| missing_text("test"))?;
    let val_t = match &f.validation {
        Some(v) => Some(v.t.as_ref().ok_or_else(|| missing_text("validation"))?.shallow_clone()),
        None => None,
    };
    let cat2 = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 1);
    // Text: t ∪ t'.
    let text = train_one(
        "text",
        Tensor::cat(&[t, gt], 0),
        Tensor::cat(&[&f.train.y, &gen_y], 0),
        val_t.as_ref().and_then(|vt| val(vt.shallow_clone())),
        None,
    )?;
    // Fusion: (h, t), (ĥ, t), (h, t'), (ĥ, t'). Generated rows pair with the text of the
    // utterance they were generated from; balanced extras only exist as (ĥ, t').
    let n_train = f.train.h.size()[0];
    let gh_paired = gen_h.narrow(0, 0, n_train);
    let gt_paired = gt.narrow(0, 0, n_train);
    let real_fusion = cat2(&f.train.h, t);
    let fx = [&real_fusion, &cat2(&gh_paired, t), &cat2(&f.train.h, &gt_paired), &cat2(&gen_h, gt)];
    let fy = [&f.train.y, &f.train.y, &f.train.y, &gen_y];
    let fusion_val = match (&f.validation, &val_t) {
        (Some(v), Some(vt)) => val(cat2(&v.h, vt)),
        _ => None,
    };
    let fusion = train_one(
        "fusion",
        Tensor::cat(&fx, 0),
        Tensor::cat(&fy, 0),
        fusion_val.as_ref().map(|(x, y)| (x.shallow_clone(), y.shallow_clone())),
        None,
    )?;
    let test_fusion = cat2(&f.test.h, test_t);
    let after = ModalityMetrics {
        audio: audio_after,
        text: Some(text.evaluate(&Labelled { x: test_t, y: &f.test.y }, n)),
        fusion: Some(fusion.evaluate(&Labelled { x: &test_fusion, y: &f.test.y }, n)),
    };

    // Before: the same three classifiers on real features only.
    let a0 = train_one(
        "audio-real-only",
        f.train.h.shallow_clone(),
        f.train.y.shallow_clone(),
        val_audio(),
        Some((&w, &b)),
    )?;
    let t0 = train_one(
        "text-real-only",
        t.shallow_clone(),
        f.train.y.shallow_clone(),
        val_t.as_ref().and_then(|vt| val(vt.shallow_clone())),
        None,
    )?;
    let f0 = train_one("fusion-real-only", real_fusion, f.train.y.shallow_clone(), fusion_val, None)?;
    let before = ModalityMetrics {
        audio: a0.evaluate(&Labelled { x: &f.test.h, y: &f.test.y }, n),
        text: Some(t0.evaluate(&Labelled { x: test_t, y: &f.test.y }, n)),
        fusion: Some(f0.evaluate(&Labelled { x: &test_fusion, y: &f.test.y }, n)),
    };
    Ok(Stage3Output {
        before: Some(before),
        after,
        audio,
        text: Some(text),
        fusion: Some(fusion),
        generated_h: gen_h,
        generated_t: gen_t,
        generated_y: gen_y,
        selection,
    })
}

fn missing_text(split: &str) -> Error {
    Error::Train { stage: 3, epoch: 0, message: format!("the {split} split has no text features") }
}

/// Extra generated samples that bring every class up to the majority count, from the label alone.
fn balance(f: &FoldFeatures, g: &Generator, how: BalanceText) -> Result<(Tensor, Tensor)> {
    let device = f.train.y.device();
    let counts = Vec::<i64>::try_from(f.train.y.bincount::<Tensor>(None, f.classes).to_device(tch::Device::Cpu))
        .map_err(Error::Torch)?;
    let max = counts.iter().copied().max().unwrap_or(0);
    let (mut hs, mut ys) = (Vec::new(), Vec::new());
    for (c, &count) in counts.iter().enumerate() {
        let extra = max - count;
        if extra == 0 || count == 0 {
            continue;
        }
        let y = Tensor::full([extra], c as i64, (Kind::Int64, device));
        let t = match (g.text_dim, &f.train.t) {
            (Some(_), Some(t)) => {
                let members = f.train.y.eq(c as i64).nonzero().squeeze_dim(1);
                let class_t = t.index_select(0, &members);
                Some(match how {
                    BalanceText::ClassSample => {
                        let pick = Tensor::randint(count, [extra], (Kind::Int64, device));
                        class_t.index_select(0, &pick)
                    }
                    BalanceText::ClassMean => class_t
                        .mean_dim([0].as_slice(), true, Kind::Float)
                        .expand([extra, t.size()[1]], false)
                        .contiguous(),
                })
            }
            _ => None,
        };
        hs.push(g.generate(&y, t.as_ref()));
        ys.push(y);
    }
    if hs.is_empty() {
        let dim = f.train.h.size()[1];
        return Ok((Tensor::zeros([0, dim], (Kind::Float, device)), Tensor::zeros([0], (Kind::Int64, device))));
    }
    Ok((Tensor::cat(&hs, 0), Tensor::cat(&ys, 0)))
}
