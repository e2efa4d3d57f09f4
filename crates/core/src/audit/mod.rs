//! `tripmine audit`: duplicates, label conflicts, split leakage, likely mislabels, outliers
//! and class statistics, all from one k-NN graph over the embeddings plus exact pixel hashes.
//! tripmine never deletes a file: `dedupe.csv` is a dry run and `exclude.csv` feeds `mine`.

pub mod findings;
mod report;
pub mod signals;

pub use report::REPORT_HTML;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::corpus::{self, decode_image, CorpusError, PROBLEM_HEADER};
use crate::definitions::Distance;
use crate::embeddings::{EmbeddingsFrom, Loaded, Network, SourceError};
use crate::knn::{ExactIndex, KnnConfig, Neighbour, NeighbourIndex, Points, Restriction};
use crate::output::{crash_point, is_foreign, publish_dir, staging_dir};
use crate::output::{write_csv, write_json};
use crate::store::{self, sha256_hex, StoreError};
use findings::{AuditInput, ModelQuality};

/// Documented defaults, in plain units.
#[derive(Debug, Clone, Serialize)]
pub struct Thresholds {
    /// Neighbours per sample in the k-NN graph.
    pub k: usize,
    /// Two samples are near-duplicates when their distance is at most this fraction of the
    /// corpus's median nearest-neighbour distance.
    pub near_duplicate_fraction: f64,
    /// A sample is a likely mislabel when the posterior probability that its label is wrong
    /// reaches this.
    pub mislabel_probability: f64,
    /// Label findings are trusted when the leave-one-out P@1 on the corpus reaches this.
    pub min_model_p_at_1: f64,
    /// A sample is an outlier when a signal's robust z-score (against its class) reaches this.
    pub outlier_z: f64,
    /// Classes smaller than this are "tiny".
    pub tiny_class: usize,
}

impl Thresholds {
    /// Every threshold in its range; `name` spells a field as the caller's users know it
    /// (`--outlier-z` on the command line, `outlier_z` in Python).
    pub fn validate(&self, name: impl Fn(&str) -> String) -> Result<(), String> {
        use crate::definitions::{check_number, Allowed};
        if self.k == 0 {
            return Err(format!("{} 0: must be at least 1", name("k")));
        }
        for (field, value, allowed) in [
            (
                "near_duplicate_fraction",
                self.near_duplicate_fraction,
                Allowed::NonNegative,
            ),
            (
                "mislabel_probability",
                self.mislabel_probability,
                Allowed::Fraction,
            ),
            ("min_model_p_at_1", self.min_model_p_at_1, Allowed::Fraction),
            ("outlier_z", self.outlier_z, Allowed::NonNegative),
        ] {
            check_number(&name(field), value, allowed)?;
        }
        Ok(())
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            k: 10,
            near_duplicate_fraction: 0.25,
            mislabel_probability: 0.5,
            min_model_p_at_1: 0.7,
            outlier_z: 5.0,
            tiny_class: 5,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub corpus: PathBuf,
    /// The corpus's embeddings: from files, or `corpus` embedded with a checkpoint.
    pub source: EmbeddingsFrom,
    pub out: PathBuf,
    pub knn: KnnConfig,
    pub thresholds: Thresholds,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("embeddings {dir} name {count} sample(s) that are not in the corpus {corpus}, e.g. {example}")]
    Mismatch {
        dir: PathBuf,
        corpus: PathBuf,
        count: usize,
        example: String,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "refusing to replace {0}: it is not empty and holds no audit.json; choose another --out \
         or empty it"
    )]
    NotOurs(PathBuf),
}

impl crate::exit::Classify for AuditError {
    fn is_input_error(&self) -> bool {
        match self {
            AuditError::Corpus(_) | AuditError::Mismatch { .. } | AuditError::NotOurs(_) => true,
            AuditError::Store(e) => e.is_input_error(),
            AuditError::Source(e) => e.is_input_error(),
            AuditError::Write { .. } => false,
        }
    }
}

#[derive(Debug, Serialize)]
struct DuplicateRow<'a> {
    group: usize,
    path: &'a str,
    label: &'a str,
    split: &'a str,
    /// Highest cosine similarity to another member (1 for identical pixels).
    similarity: f32,
}

#[derive(Debug, Serialize)]
struct LeakRow<'a> {
    group: usize,
    path: &'a str,
    label: &'a str,
    split: &'a str,
}

#[derive(Debug, Serialize)]
struct DedupeRow<'a> {
    group: usize,
    path: &'a str,
    label: &'a str,
    action: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabelIssue {
    pub path: String,
    pub label: String,
    pub suggested_label: String,
    /// Posterior probability that `label` is wrong, and its log-odds (the order of the file).
    pub probability: f64,
    pub log_odds: f64,
    /// Share of the distance-weighted neighbour votes for the label and for the suggestion.
    pub label_share: f64,
    pub suggested_share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outlier {
    pub path: String,
    pub label: String,
    /// Which signal fired: `off-distribution-group`, `pixel-isolated` or `far-from-classes`.
    pub signal: &'static str,
    /// The robust z-score that fired (for a group, its members' median isolation).
    pub score: f64,
    /// The off-distribution group (its id and size), for the group signal.
    pub group: Option<usize>,
    pub group_size: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct ClassRow {
    label: String,
    size: usize,
    singleton: bool,
    tiny: bool,
    /// Size relative to the median class size.
    imbalance: f64,
    /// Mean Euclidean distance of the members to their centroid.
    spread: f64,
    closest_label: String,
    /// Euclidean distance between the normalised centroids.
    closest_distance: f64,
}

#[derive(Debug, Serialize)]
struct ExcludeRow<'a> {
    path: &'a str,
    reason: &'static str,
}

/// Counts and the worst findings, for the one-screen summary.
pub struct AuditSummary {
    pub samples: usize,
    pub duplicate_groups: usize,
    pub exact_duplicate_groups: usize,
    pub conflict_groups: usize,
    pub leak_groups: usize,
    pub label_issues: Vec<LabelIssue>,
    pub outliers: Vec<Outlier>,
    pub decode_problems: usize,
    pub excluded: usize,
    pub tiny_classes: Vec<String>,
    pub model_quality: ModelQuality,
    /// Set when the model is too weak for its label findings to be trusted.
    pub warning: Option<String>,
}

/// `network` embeds the corpus when the source is a checkpoint.
pub fn run(cfg: &AuditConfig, network: Option<&dyn Network>) -> Result<AuditSummary, AuditError> {
    if is_foreign(&cfg.out, "audit.json") {
        return Err(AuditError::NotOurs(cfg.out.clone()));
    }
    let corpus = corpus::open(&cfg.corpus)?;
    let Loaded { set, problems } = cfg.source.load(network, None)?;
    let files: HashMap<&str, &Path> = corpus
        .samples
        .iter()
        .map(|s| (s.path.as_str(), s.file.as_path()))
        .collect();
    let missing: Vec<&str> = set
        .samples
        .iter()
        .map(|s| s.path.as_str())
        .filter(|p| !files.contains_key(p))
        .collect();
    if let (Some(first), EmbeddingsFrom::Files { input, .. }) = (missing.first(), &cfg.source) {
        return Err(AuditError::Mismatch {
            dir: input.path().to_path_buf(),
            corpus: cfg.corpus.clone(),
            count: missing.len(),
            example: first.to_string(),
        });
    }
    let t = &cfg.thresholds;
    let n = set.len();
    let (names, labels) = corpus::label_ids(set.samples.iter().map(|s| s.label.as_str()));
    let points = Points {
        data: &set.data,
        dim: set.dim,
        labels: &labels,
    };
    let views = pixel_views(&set.samples, &files);
    let hashes: Vec<Option<String>> = views
        .iter()
        .map(|v| v.as_ref().map(|(h, _)| h.clone()))
        .collect();
    // One k-NN graph of the embeddings serves every signal but one; the pixel view has its own.
    let queries: Vec<usize> = (0..n).collect();
    let k = t.k.min(n.saturating_sub(1)).max(1);
    let (graph, backend) = knn_graph(points, &queries, k, cfg);
    let side = (PIXEL_VIEW_SIDE * PIXEL_VIEW_SIDE) as usize;
    let pixels: Vec<f32> = views
        .iter()
        .flat_map(|v| v.as_ref().map_or(vec![0.0; side], |(_, p)| p.clone()))
        .collect();
    let pixel_points = Points {
        data: &pixels,
        dim: side,
        labels: &labels,
    };
    let (mut pixel_graph, _) = knn_graph(pixel_points, &queries, k, cfg);
    for (list, view) in pixel_graph.iter_mut().zip(&views) {
        if view.is_none() {
            list.clear();
        }
    }
    let splits: Vec<&str> = set.samples.iter().map(|s| s.split.as_str()).collect();
    let findings = findings::compute(&AuditInput {
        points,
        splits: &splits,
        graph: &graph,
        hashes: &hashes,
        pixel_graph: Some(&pixel_graph),
        thresholds: t,
    });

    let sample = |i: usize| &set.samples[i];
    let mut dup_rows = Vec::new();
    let mut leak_rows = Vec::new();
    let mut dedupe_rows = Vec::new();
    let mut group_views = Vec::new();
    for (g, group) in findings.duplicates.iter().enumerate() {
        for &(i, similarity) in &group.members {
            let s = sample(i);
            dup_rows.push(DuplicateRow {
                group: g,
                path: &s.path,
                label: &s.label,
                split: &s.split,
                similarity,
            });
            if group.leak {
                leak_rows.push(LeakRow {
                    group: g,
                    path: &s.path,
                    label: &s.label,
                    split: &s.split,
                });
            }
            dedupe_rows.push(DedupeRow {
                group: g,
                path: &s.path,
                label: &s.label,
                action: if i == group.keep { "keep" } else { "drop" },
            });
        }
        group_views.push(report::GroupView {
            id: g,
            members: group.members.clone(),
        });
    }
    let label_issues: Vec<LabelIssue> = findings
        .label_issues
        .iter()
        .map(|f| LabelIssue {
            path: sample(f.index).path.clone(),
            label: sample(f.index).label.clone(),
            suggested_label: names[f.suggested as usize].to_string(),
            probability: f.probability,
            log_odds: f.log_odds,
            label_share: f.own_share,
            suggested_share: f.suggested_share,
        })
        .collect();
    let outliers: Vec<Outlier> = findings
        .outliers
        .iter()
        .map(|o| Outlier {
            path: sample(o.index).path.clone(),
            label: sample(o.index).label.clone(),
            signal: o.signal.name(),
            score: o.score,
            group: o.group.map(|(id, _)| id),
            group_size: o.group.map(|(_, size)| size),
        })
        .collect();
    let path_index: HashMap<&str, usize> = set
        .samples
        .iter()
        .enumerate()
        .map(|(i, s)| (s.path.as_str(), i))
        .collect();
    let excluded = &findings.excluded;
    let conflicts = findings.duplicates.iter().filter(|g| g.conflict).count();
    let leaks = findings.duplicates.iter().filter(|g| g.leak).count();
    let dup_groups = &findings.duplicates;
    let exact_groups = findings.exact_duplicate_groups;

    let classes = class_rows(&findings.classes, set.dim, &names, t.tiny_class);
    // The files are one set: they are written into a staging folder beside --out and swapped
    // in whole, so a reader (or `mine --exclude`) never meets an exclude.csv of another run,
    // and a failed or killed re-run leaves the earlier set as it was.
    let staging = staging_dir(&cfg.out);
    let _ = std::fs::remove_dir_all(&staging);
    let written = (|| -> Result<AuditSummary, AuditError> {
        let write = |name: &str, result: std::io::Result<()>| {
            result.map_err(|source| AuditError::Write {
                path: cfg.out.join(name),
                source,
            })
        };
        std::fs::create_dir_all(&staging).map_err(|source| AuditError::Write {
            path: staging.clone(),
            source,
        })?;
        let out = |name: &str| staging.join(name);
        write(
            "duplicates.csv",
            write_csv(
                &out("duplicates.csv"),
                &dup_rows,
                &["group", "path", "label", "split", "similarity"],
            ),
        )?;
        write(
            "leakage.csv",
            write_csv(
                &out("leakage.csv"),
                &leak_rows,
                &["group", "path", "label", "split"],
            ),
        )?;
        write(
            "dedupe.csv",
            write_csv(
                &out("dedupe.csv"),
                &dedupe_rows,
                &["group", "path", "label", "action"],
            ),
        )?;
        write(
            "label_issues.csv",
            write_csv(
                &out("label_issues.csv"),
                &label_issues,
                &[
                    "path",
                    "label",
                    "suggested_label",
                    "probability",
                    "log_odds",
                    "label_share",
                    "suggested_share",
                ],
            ),
        )?;
        write(
            "outliers.csv",
            write_csv(
                &out("outliers.csv"),
                &outliers,
                &["path", "label", "signal", "score", "group", "group_size"],
            ),
        )?;
        let class_header = [
            "label",
            "size",
            "singleton",
            "tiny",
            "imbalance",
            "spread",
            "closest_label",
            "closest_distance",
        ];
        write(
            "classes.csv",
            write_csv(&out("classes.csv"), &classes, &class_header),
        )?;
        let exclude_rows: Vec<ExcludeRow> = excluded
            .iter()
            .map(|(&i, &reason)| ExcludeRow {
                path: &sample(i).path,
                reason,
            })
            .collect();
        write(
            "exclude.csv",
            write_csv(&out("exclude.csv"), &exclude_rows, &["path", "reason"]),
        )?;
        write(
            "skipped.csv",
            write_csv(&out("skipped.csv"), &problems, &PROBLEM_HEADER),
        )?;
        let tiny_classes: Vec<String> = classes
            .iter()
            .filter(|c| c.tiny)
            .map(|c| c.label.clone())
            .collect();
        let summary = AuditSummary {
            samples: n,
            duplicate_groups: dup_groups.len(),
            exact_duplicate_groups: exact_groups,
            conflict_groups: conflicts,
            leak_groups: leaks,
            label_issues,
            outliers,
            decode_problems: problems.len(),
            excluded: exclude_rows.len(),
            tiny_classes,
            model_quality: findings.quality.clone(),
            warning: (!findings.quality.trusted).then(|| untrusted_warning(&findings.quality, t)),
        };
        let report = serde_json::json!({
            "tripmine_version": env!("CARGO_PKG_VERSION"),
            "corpus": cfg.corpus,
            "samples": n,
            "thresholds": t,
            "model_quality": findings.quality,
            "warning": summary.warning,
            "model": set.meta.model,
            "embeddings_sha256": set.meta.sha256,
            "embeddings": set.describe(),
            "corpus_root": corpus::root_of(&cfg.corpus),
            "backend": backend,
            "counts": {
                "duplicate_groups": summary.duplicate_groups,
                "exact_duplicate_groups": summary.exact_duplicate_groups,
                "label_conflict_groups": summary.conflict_groups,
                "split_leak_groups": summary.leak_groups,
                "likely_mislabels": summary.label_issues.len(),
                "outliers": summary.outliers.len(),
                "tiny_classes": summary.tiny_classes.len(),
                "decode_problems": summary.decode_problems,
                "excluded": summary.excluded,
            },
        });
        // audit.json names each CSV's hash: `mine --exclude` checks that exclude.csv is its own.
        let mut files = serde_json::Map::new();
        for name in CSV_FILES {
            let bytes = std::fs::read(out(name)).map_err(|source| AuditError::Write {
                path: cfg.out.join(name),
                source,
            })?;
            files.insert(name.to_string(), sha256_hex(&bytes).into());
        }
        let mut report = report;
        report["files"] = files.into();
        crash_point("audit:half-staged");
        write("audit.json", write_json(&out("audit.json"), &report))?;
        let counts = report["counts"].as_object().expect("counts object");
        let mut facts = vec![
            ("corpus".to_string(), cfg.corpus.display().to_string()),
            ("samples".to_string(), n.to_string()),
            (
                "model".to_string(),
                crate::store::model_summary(&set.meta.model),
            ),
            (
                "neighbour backend".to_string(),
                backend["backend"].as_str().unwrap_or("?").to_string(),
            ),
        ];
        facts.push((
            "model on this corpus".to_string(),
            format!(
                "leave-one-out P@1 {:.3} (chance {:.3}), MAP@R within k {:.3}, estimated noise rate {:.3}",
                summary.model_quality.p_at_1,
                summary.model_quality.chance_p_at_1,
                summary.model_quality.map_at_r_within_k,
                summary.model_quality.noise_rate
            ),
        ));
        if let Some(w) = &summary.warning {
            facts.push((
                "warning".to_string(),
                w.trim_start_matches("warning: ").to_string(),
            ));
        }
        facts.extend(
            counts
                .iter()
                .map(|(k, v)| (k.replace('_', " "), v.to_string())),
        );
        let index_of = |p: &str| path_index[p];
        let input = report::ReportInput {
            corpus: &cfg.corpus,
            samples: &set.samples,
            groups: &group_views,
            label_issues: &summary.label_issues,
            outliers: &summary.outliers,
            graph: &graph,
            index_of: &index_of,
            thresholds: t,
            facts,
            classes: &classes,
            problems: &problems,
        };
        let tiles = crate::report::Tiles::new(&corpus.samples, report::THUMB);
        write(REPORT_HTML, report::write(&staging, &input, &tiles))?;
        Ok(summary)
    })();
    let published = written.and_then(|summary| {
        crash_point("audit:staged");
        publish_dir(&staging, &cfg.out)
            .map(|()| summary)
            .map_err(|source| AuditError::Write {
                path: cfg.out.clone(),
                source,
            })
    });
    if published.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    published
}

/// The CSV files of an audit directory (hashed in `audit.json`).
pub const CSV_FILES: [&str; 8] = [
    "duplicates.csv",
    "leakage.csv",
    "dedupe.csv",
    "label_issues.csv",
    "outliers.csv",
    "classes.csv",
    "exclude.csv",
    "skipped.csv",
];

/// Side of the pixel view's grey thumbnails.
const PIXEL_VIEW_SIDE: u32 = 16;

/// What one decode of each file gives the audit: the SHA-256 of its pixels and size (exact
/// duplicates), and its pixel view: a 16×16 grey thumbnail, centred and scaled to unit
/// length, so that its dot products are correlations, blind to brightness and contrast.
/// `None` when the file cannot be decoded.
fn pixel_views(
    samples: &[store::SampleRow],
    files: &HashMap<&str, &Path>,
) -> Vec<Option<(String, Vec<f32>)>> {
    samples
        .par_iter()
        .map(|s| {
            let img = decode_image(files[s.path.as_str()]).ok()?;
            let rgba = img.to_rgba8();
            let mut bytes = rgba.width().to_le_bytes().to_vec();
            bytes.extend(rgba.height().to_le_bytes());
            bytes.extend(rgba.as_raw());
            let grey = img
                .thumbnail_exact(PIXEL_VIEW_SIDE, PIXEL_VIEW_SIDE)
                .to_luma32f();
            let mut v: Vec<f32> = grey.into_raw();
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            v.iter_mut().for_each(|x| *x -= mean);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
            Some((sha256_hex(&bytes), v))
        })
        .collect()
}

fn untrusted_warning(q: &ModelQuality, t: &Thresholds) -> String {
    format!(
        "warning: the model is too weak for its label findings to be trusted: leave-one-out P@1 \
         on this corpus is {:.3} (below --min-model-p-at-1 {}; chance is {:.3}), MAP@R within \
         k {:.3}. Likely mislabels are few because weak evidence cannot clear the posterior; \
         train longer or audit with a stronger model",
        q.p_at_1, t.min_model_p_at_1, q.chance_p_at_1, q.map_at_r_within_k
    )
}

fn knn_graph(
    points: Points,
    queries: &[usize],
    k: usize,
    cfg: &AuditConfig,
) -> (Vec<Vec<Neighbour>>, serde_json::Value) {
    let index = crate::knn::build(points, &cfg.knn);
    (index.search(queries, k, Restriction::Any), index.describe())
}

fn class_rows(
    spreads: &[signals::ClassSpread],
    dim: usize,
    names: &[String],
    tiny: usize,
) -> Vec<ClassRow> {
    let ids: Vec<u32> = (0..names.len() as u32).collect();
    let unit: Vec<f32> = spreads
        .iter()
        .flat_map(|s| {
            let norm = s
                .centroid
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            s.centroid.iter().map(move |v| (v / norm) as f32)
        })
        .collect();
    let closest = if ids.len() > 1 {
        let points = Points {
            data: &unit,
            dim,
            labels: &ids,
        };
        ExactIndex::new(points).search(&(0..ids.len()).collect::<Vec<_>>(), 1, Restriction::Any)
    } else {
        vec![Vec::new()]
    };
    let mut sizes: Vec<usize> = spreads.iter().map(|s| s.size).collect();
    sizes.sort_unstable();
    let median = sizes[sizes.len() / 2] as f64;
    ids.iter()
        .map(|&id| {
            let class = &spreads[id as usize];
            let near = closest[id as usize].first();
            ClassRow {
                label: names[id as usize].to_string(),
                size: class.size,
                singleton: class.size == 1,
                tiny: class.size < tiny,
                imbalance: class.size as f64 / median,
                spread: class.mean,
                closest_label: near
                    .map(|nb| names[nb.index].to_string())
                    .unwrap_or_default(),
                closest_distance: near
                    .map_or(f64::NAN, |nb| Distance::Euclidean.from_dot(nb.dot) as f64),
            }
        })
        .collect()
}
