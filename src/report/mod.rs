//! The paper's tables from a run directory (`<run>/<job-id>/result.json`): mean ± sample std over
//! folds (and seeds) with n/N present, beside the published rows of `configs/published/<table>.toml`.
//! A cell with missing folds is marked, never silently averaged as if complete.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::metrics::mean_std;
use crate::train::pipeline::JobResult;

/// Output format of `sera results`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Csv,
    Latex,
}

/// Published rows of one paper table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    pub title: String,
    pub columns: Vec<String>,
    #[serde(default)]
    pub rows: Vec<PublishedRow>,
}

/// One published row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedRow {
    pub method: String,
    pub values: Vec<String>,
}

/// One rendered table.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    /// (method, cells, folds cell).
    pub rows: Vec<(String, Vec<String>, String)>,
}

/// Reads every `result.json` one level below `run`, sorted by job id.
pub fn load_results(run: &Path) -> Result<Vec<JobResult>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(run)
        .map_err(|e| Error::io(run, e))?
        .filter_map(|e| e.ok().map(|e| e.path().join("result.json")))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            serde_json::from_str(&text).map_err(|e| Error::config(p, format!("not a sera result: {e}")))
        })
        .collect()
}

/// Which metrics a table shows.
fn columns_of(table: &str) -> Vec<String> {
    match table {
        "III" => vec!["UAR".into()],
        "IV" | "V" | "VI" => vec!["Audio".into(), "Text".into(), "Audio + Text".into()],
        _ => vec!["Without augmentation".into(), "With augmentation".into()],
    }
}

fn cells_of(table: &str, r: &JobResult) -> Vec<Option<f64>> {
    let after = r.after.as_ref();
    match table {
        "III" => vec![Some(after.map_or(r.before.audio.uar, |a| a.audio.uar))],
        "IV" | "V" | "VI" => {
            let m = after.unwrap_or(&r.before);
            vec![Some(m.audio.uar), m.text.as_ref().map(|x| x.uar), m.fusion.as_ref().map(|x| x.uar)]
        }
        _ => vec![Some(r.before.audio.uar), after.map(|a| a.audio.uar)],
    }
}

/// Builds one table per (paper table, dataset) found in `results`. `published` is the directory
/// of published rows (`configs/published`).
pub fn tables(results: &[JobResult], published: &Path) -> Result<Vec<Table>> {
    // (table, dataset) → variant (index, label) → results
    type Groups<'a> = BTreeMap<(String, String), BTreeMap<(usize, String), Vec<&'a JobResult>>>;
    let mut groups: Groups = BTreeMap::new();
    for r in results {
        let table = r.job.table.clone().unwrap_or_else(|| "II".into());
        groups
            .entry((table, r.job.dataset.name.clone()))
            .or_default()
            .entry((r.job.variant.index, r.job.variant.label.clone()))
            .or_default()
            .push(r);
    }
    let mut out = Vec::new();
    for ((table, dataset), variants) in groups {
        let pub_path = published.join(format!("{table}.toml"));
        let published: Option<Published> = if pub_path.is_file() {
            let text = std::fs::read_to_string(&pub_path).map_err(|e| Error::io(&pub_path, e))?;
            Some(toml::from_str(&text).map_err(|e| Error::config(&pub_path, e.to_string()))?)
        } else {
            None
        };
        let columns = columns_of(&table);
        let mut rows: Vec<(String, Vec<String>, String)> = Vec::new();
        if let Some(p) = &published {
            for row in &p.rows {
                rows.push((row.method.clone(), row.values.clone(), "published".into()));
            }
        }
        for ((_, label), rs) in variants {
            let seeds: std::collections::BTreeSet<u64> = rs.iter().map(|r| r.seed).collect();
            let expected = rs[0].job.fold.count * seeds.len().max(1);
            let n = rs.len();
            let cells = (0..columns.len())
                .map(|c| {
                    let xs: Vec<f64> = rs.iter().filter_map(|r| cells_of(&table, r)[c]).map(|v| 100.0 * v).collect();
                    cell(&xs, expected)
                })
                .collect();
            rows.push((format!("sera: {label}"), cells, format!("{n}/{expected}")));
        }
        let title = match &published {
            Some(p) => format!("Table {table}: {} — dataset {dataset}", p.title),
            None => format!("Table {table} — dataset {dataset}"),
        };
        out.push(Table { title, columns, rows });
    }
    Ok(out)
}

/// `mean ± std (n/N)`, marked when folds are missing: every cell says how many folds it averages.
fn cell(xs: &[f64], expected: usize) -> String {
    if xs.is_empty() {
        return format!("- (0/{expected})");
    }
    let (mean, std) = mean_std(xs);
    let base = match std {
        Some(s) => format!("{mean:.2} ± {s:.2} ({}/{expected})", xs.len()),
        None => format!("{mean:.2} ({}/{expected})", xs.len()),
    };
    if xs.len() < expected { format!("{base} (incomplete)") } else { base }
}

/// Renders tables in `format`.
pub fn render(tables: &[Table], format: Format) -> String {
    let mut s = String::new();
    for t in tables {
        match format {
            Format::Markdown => {
                let _ = writeln!(s, "### {}\n", t.title);
                let _ = writeln!(s, "| Method | {} | folds |", t.columns.join(" | "));
                let _ = writeln!(s, "|---|{}---|", "---|".repeat(t.columns.len()));
                for (m, cells, folds) in &t.rows {
                    let _ = writeln!(s, "| {m} | {} | {folds} |", cells.join(" | "));
                }
                s.push('\n');
            }
            Format::Csv => {
                let q = |x: &str| format!("\"{}\"", x.replace('"', "\"\""));
                let _ = writeln!(
                    s,
                    "{},{},{},{}",
                    q("table"),
                    q("method"),
                    t.columns.iter().map(|c| q(c)).collect::<Vec<_>>().join(","),
                    q("folds")
                );
                for (m, cells, folds) in &t.rows {
                    let _ = writeln!(
                        s,
                        "{},{},{},{}",
                        q(&t.title),
                        q(m),
                        cells.iter().map(|c| q(c)).collect::<Vec<_>>().join(","),
                        q(folds)
                    );
                }
            }
            Format::Latex => {
                let esc =
                    |x: &str| x.replace('&', "\\&").replace('%', "\\%").replace('_', "\\_").replace('±', "$\\pm$");
                let _ = writeln!(s, "% {}", t.title);
                let _ = writeln!(s, "\\begin{{tabular}}{{l{}r}}\n\\hline", "c".repeat(t.columns.len()));
                let _ = writeln!(
                    s,
                    "Method & {} & folds \\\\\n\\hline",
                    t.columns.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" & ")
                );
                for (m, cells, folds) in &t.rows {
                    let _ = writeln!(
                        s,
                        "{} & {} & {} \\\\",
                        esc(m),
                        cells.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" & "),
                        esc(folds)
                    );
                }
                let _ = writeln!(s, "\\hline\n\\end{{tabular}}\n");
            }
        }
    }
    s
}
