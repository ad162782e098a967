//! Settings of the paper's stages (sections 3.1–3.3, 4.3–4.4), as plain data. Every loss weight
//! and switch the paper names is a field here, so the Table III ablations are config overrides,
//! not code paths. The paper gives no optimiser settings; the defaults are common AST/wav2vec2
//! fine-tuning values, and the experiment files state what they use.

use serde::{Deserialize, Serialize};

/// Numeric precision of training: fp32, or bf16 autocast on the CPU or CUDA (see
/// [`crate::precision`]; weights, optimiser state and reductions stay fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Bf16,
}

/// Stage 0 (multimodal only, paper 4.4): fine-tune the text encoder as an emotion classifier,
/// then freeze it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stage0 {
    pub enabled: bool,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
}

impl Default for Stage0 {
    fn default() -> Self {
        Stage0 { enabled: false, epochs: 3, batch_size: 16, lr: 1e-5 }
    }
}

/// Stage 1: audio encoder + linear classifier, with cross-modal alignment (eq. 1–7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stage1 {
    pub epochs: usize,
    pub batch_size: usize,
    /// AdamW learning rate of the pretrained audio encoder.
    pub lr_backbone: f64,
    /// AdamW learning rate of the classifier and projection heads.
    pub lr_head: f64,
    pub weight_decay: f64,
    /// Linear warm-up, as a fraction of all optimiser steps.
    pub warmup_ratio: f64,
    /// Gradient-norm clipping threshold (0 disables it).
    pub grad_clip: f64,
    pub precision: Precision,
    /// Weight of the CLAP-style contrastive loss between t and h (eq. 5). 0 disables it.
    pub lambda_cl: f64,
    /// Weight of the InfoNCE loss between t and W_t h + b_t (eq. 6–7). 0 disables it.
    pub lambda_mi: f64,
    /// Temperature of both contrastive losses.
    pub temperature: f64,
}

impl Default for Stage1 {
    fn default() -> Self {
        Stage1 {
            epochs: 10,
            batch_size: 16,
            lr_backbone: 1e-5,
            lr_head: 1e-3,
            weight_decay: 0.01,
            warmup_ratio: 0.1,
            grad_clip: 1.0,
            precision: Precision::Fp32,
            lambda_cl: 1.0,
            lambda_mi: 1.0,
            temperature: 0.07,
        }
    }
}

/// Stage 2: InfoGAN on features (paper 3.2, 4.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stage2 {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr_generator: f64,
    pub lr_discriminator: f64,
    /// Dimension of the noise z.
    pub z_dim: usize,
    /// Condition G on the text feature t (false: G(z, c), and no L_It).
    pub text_condition: bool,
    /// Weight of the label MI loss L_Iy (cross-entropy through the stage-1 classifier, eq. 15–16).
    pub lambda_iy: f64,
    /// Weight of the text MI loss L_It (InfoNCE through W_t, eq. 17–18).
    pub lambda_it: f64,
    /// Fine-tune the MI heads (W_y, W_t) during stage 2, or keep them frozen.
    pub finetune_mi_heads: bool,
    /// Mix-up for D and G (ref. [6]).
    pub mixup: bool,
    /// Beta(α, α) parameter of the mix-up coefficient.
    pub mixup_alpha: f64,
    /// On NaN/Inf or collapse, retry this many times with the learning rates halved (0: fail).
    pub retries: usize,
}

impl Default for Stage2 {
    fn default() -> Self {
        Stage2 {
            epochs: 100,
            batch_size: 64,
            lr_generator: 2e-4,
            lr_discriminator: 2e-4,
            z_dim: 128,
            text_condition: true,
            lambda_iy: 1.0,
            lambda_it: 1.0,
            finetune_mi_heads: false,
            mixup: true,
            mixup_alpha: 0.2,
            retries: 1,
        }
    }
}

/// How stage 3 augments the classifier's training set (paper 3.3, 4.4, 5.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Augment {
    /// No augmentation: the stage-1 model is the result (Table III's last row).
    None,
    /// SER: one generated feature per training utterance (2×).
    Double,
    /// Multimodal: a fusion classifier on all 4 (h | ĥ) × (t | t') combinations (4×).
    Multimodal,
    /// Multimodal plus class-balanced generation of minority classes (MSP-Podcast).
    ClassBalanced,
}

/// Where the text condition of class-balanced generation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalanceText {
    /// A real text feature of a training utterance of the same class, drawn at random.
    ClassSample,
    /// The mean text feature of the class.
    ClassMean,
}

/// Stage 3: retrain only the classifier on real plus generated features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stage3 {
    pub augment: Augment,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub balance_text: BalanceText,
}

impl Default for Stage3 {
    fn default() -> Self {
        Stage3 {
            augment: Augment::Double,
            epochs: 30,
            batch_size: 64,
            lr: 1e-3,
            balance_text: BalanceText::ClassSample,
        }
    }
}

/// All stage settings of one job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageSettings {
    pub stage0: Stage0,
    pub stage1: Stage1,
    pub stage2: Stage2,
    pub stage3: Stage3,
}
