//! Classification metrics of one test fold: UAR (the paper's headline metric, i.e. balanced
//! accuracy), WA (plain accuracy), macro-F1, per-class recall and the confusion matrix. Classes
//! absent from the test fold are left out of UAR and macro-F1 (a recall of 0/0 is undefined, not 0).

use serde::{Deserialize, Serialize};

/// Metrics of predictions against labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Unweighted average recall over the classes present in the labels.
    pub uar: f64,
    /// Weighted accuracy: correct / total.
    pub wa: f64,
    /// Mean F1 over the classes present in the labels.
    pub macro_f1: f64,
    /// Recall per class (None where the class has no test utterance).
    pub recall: Vec<Option<f64>>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// Number of test utterances.
    pub n: usize,
}

impl Metrics {
    /// Computes the metrics of `predicted` against `truth`, both class indices below `classes`.
    pub fn compute(truth: &[usize], predicted: &[usize], classes: usize) -> Metrics {
        let mut confusion = vec![vec![0usize; classes]; classes];
        for (&t, &p) in truth.iter().zip(predicted) {
            if t < classes && p < classes {
                confusion[t][p] += 1;
            }
        }
        let n: usize = confusion.iter().flatten().sum();
        let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
        let recall: Vec<Option<f64>> = (0..classes)
            .map(|c| {
                let support: usize = confusion[c].iter().sum();
                (support > 0).then(|| confusion[c][c] as f64 / support as f64)
            })
            .collect();
        let present: Vec<usize> = (0..classes).filter(|&c| recall[c].is_some()).collect();
        let mean = |xs: &[f64]| if xs.is_empty() { 0.0 } else { xs.iter().sum::<f64>() / xs.len() as f64 };
        let uar = mean(&present.iter().filter_map(|&c| recall[c]).collect::<Vec<_>>());
        let f1: Vec<f64> = present
            .iter()
            .map(|&c| {
                let tp = confusion[c][c] as f64;
                let predicted_c: usize = (0..classes).map(|t| confusion[t][c]).sum();
                let support: usize = confusion[c].iter().sum();
                let denom = predicted_c as f64 + support as f64;
                if denom == 0.0 { 0.0 } else { 2.0 * tp / denom }
            })
            .collect();
        Metrics {
            uar,
            wa: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
            macro_f1: mean(&f1),
            recall,
            confusion,
            n,
        }
    }
}

/// Mean and sample standard deviation (n − 1) of `xs`; std is None for fewer than two values.
pub fn mean_std(xs: &[f64]) -> (f64, Option<f64>) {
    if xs.is_empty() {
        return (f64::NAN, None);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, None);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, Some(var.sqrt()))
}
