//! Pretrained encoders in tch, computing what transformers computes: the Kaldi fbank front end
//! and AST for audio, BERT and RoBERTa for text, and the HuggingFace checkpoint loader they share.
//!
//! One file per family. Each `Config` mirrors its `config.json` field for field (serde defaults
//! for absent fields), each HF submodule is one struct, and VarStore paths equal the HF keys, so a
//! checkpoint loads with [`hf::HfDir::load_weights`] and nothing is renamed by hand.

pub mod ast;
pub mod bert;
pub mod fbank;
pub mod hf;
pub mod nn;
pub mod text;
pub mod wav2vec2;
