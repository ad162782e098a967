//! Helpers for the model parity tests: fixture paths, golden files, error measures.

use std::collections::HashMap;
use std::path::PathBuf;

use tch::{Kind, Tensor};

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// A golden file from `tools/make_fixtures.py`.
pub struct Golden {
    pub name: String,
    tensors: HashMap<String, Tensor>,
}

impl Golden {
    /// Reads `tests/fixtures/golden/<name>.safetensors`.
    pub fn load(name: &str) -> Golden {
        let path = fixture(&format!("golden/{name}.safetensors"));
        let tensors = Tensor::read_safetensors(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (regenerate with tools/make_fixtures.py)", path.display()));
        Golden { name: name.to_string(), tensors: tensors.into_iter().collect() }
    }

    /// The tensor `key`; panics naming the golden file if absent.
    pub fn get(&self, key: &str) -> Tensor {
        match self.tensors.get(key) {
            Some(t) => t.shallow_clone(),
            None => panic!("golden {} has no tensor {key}", self.name),
        }
    }

    /// Whether `key` is present.
    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// An int64 scalar.
    pub fn int(&self, key: &str) -> i64 {
        self.get(key).int64_value(&[])
    }
}

/// max |a − b| over all elements (in f64); panics on a shape mismatch.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}
