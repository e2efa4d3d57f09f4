//! `tripmine audit`: duplicates, label conflicts, split leakage, likely mislabels, outliers
//! and class statistics, all from one k-NN graph over the embeddings plus exact pixel hashes.
//! tripmine never deletes a file: `dedupe.csv` is a dry run and `exclude.csv` feeds `mine`.

mod report;
pub mod signals;

pub use report::REPORT_HTML;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;
use tch::Device;

use crate::corpus::{self, decode_image, CorpusError, Problem, PROBLEM_HEADER};
use crate::definitions::{dot, Distance};
use crate::embed::{embed_corpus, EmbedError, ModelChoice};
use crate::knn::{
    ExactIndex, HnswParams, KnnChoice, Neighbour, NeighbourIndex, Points, Restriction,
};
use crate::output::{crash_point, is_foreign, publish_dir, staging_dir};
use crate::output::{write_csv, write_json};
use crate::store::{self, sha256_hex, EmbeddingSet, EmbeddingsInput, StoreError};
use signals::{duplicate_groups, label_vote, mean_knn_distance, percentile_ranks, upper_fence};

/// Documented defaults, in plain units.
#[derive(Debug, Clone, Serialize)]
pub struct Thresholds {
    /// Neighbours per sample in the k-NN graph.
    pub k: usize,
    /// Cosine similarity from which two samples are near-duplicates.
    pub near_duplicate_similarity: f32,
    /// A sample is a likely mislabel when at most this fraction of its neighbours share its
    /// label ...
    pub mislabel_agreement: f64,
    /// ... and at least this fraction agree on another label.
    pub mislabel_support: f64,
    /// Classes smaller than this are "tiny".
    pub tiny_class: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            k: 10,
            near_duplicate_similarity: 0.995,
            mislabel_agreement: 0.2,
            mislabel_support: 0.5,
            tiny_class: 5,
        }
    }
}

#[derive(Debug, Clone)]
pub enum AuditSource {
    Model(PathBuf),
    Embeddings {
        input: EmbeddingsInput,
        normalise: bool,
    },
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub corpus: PathBuf,
    pub source: AuditSource,
    pub out: PathBuf,
    pub knn: KnnChoice,
    pub hnsw: HnswParams,
    pub device: Device,
    pub batch_size: usize,
    pub thresholds: Thresholds,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
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

impl AuditError {
    pub fn is_input_error(&self) -> bool {
        match self {
            AuditError::Corpus(_) | AuditError::Mismatch { .. } | AuditError::NotOurs(_) => true,
            AuditError::Store(e) => e.is_input_error(),
            AuditError::Embed(e) => e.is_input_error(),
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
    /// Fraction of the k nearest neighbours that share the label: low is suspicious.
    pub score: f64,
    /// Fraction of the neighbours that carry the suggested label.
    pub support: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outlier {
    pub path: String,
    pub label: String,
    /// Percentile rank of the mean distance to the k nearest neighbours: high is isolated.
    pub score: f64,
    pub mean_knn_distance: f64,
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
}

pub fn run(cfg: &AuditConfig) -> Result<AuditSummary, AuditError> {
    if is_foreign(&cfg.out, "audit.json") {
        return Err(AuditError::NotOurs(cfg.out.clone()));
    }
    let corpus = corpus::open(&cfg.corpus)?;
    let (set, problems) = match &cfg.source {
        AuditSource::Model(dir) => {
            let e = embed_corpus(
                &cfg.corpus,
                &ModelChoice::Checkpoint(dir.clone()),
                cfg.device,
                cfg.batch_size,
                false,
            )?;
            (e.set, e.problems)
        }
        AuditSource::Embeddings { input, normalise } => {
            let set = store::open(input, *normalise)?;
            let problems: Vec<Problem> = match input {
                EmbeddingsInput::Dir(dir) => csv::Reader::from_path(dir.join(store::SKIPPED_CSV))
                    .map(|mut r| r.deserialize().filter_map(Result::ok).collect())
                    .unwrap_or_default(),
                EmbeddingsInput::Files { .. } => Vec::new(),
            };
            (set, problems)
        }
    };
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
    if let (Some(first), AuditSource::Embeddings { input, .. }) = (missing.first(), &cfg.source) {
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

    // Exact duplicates: identical decoded pixels (and size).
    let hashes: Vec<Option<String>> = set
        .samples
        .par_iter()
        .map(|s| {
            let img = decode_image(files[s.path.as_str()]).ok()?.into_rgba8();
            let mut bytes = img.width().to_le_bytes().to_vec();
            bytes.extend(img.height().to_le_bytes());
            bytes.extend(img.as_raw());
            Some(sha256_hex(&bytes))
        })
        .collect();
    // One k-NN graph serves near-duplicates, label votes and outliers.
    let queries: Vec<usize> = (0..n).collect();
    let k = t.k.min(n.saturating_sub(1)).max(1);
    let (graph, backend) = knn_graph(points, &queries, k, cfg);
    let (dup_groups, exact_groups) = duplicate_groups(&hashes, &graph, t.near_duplicate_similarity);
    let sample = |i: usize| &set.samples[i];
    let mut dup_rows = Vec::new();
    let mut leak_rows = Vec::new();
    let mut dedupe_rows = Vec::new();
    let mut excluded: BTreeMap<usize, &'static str> = BTreeMap::new();
    let mut group_views = Vec::new();
    let (mut conflicts, mut leaks) = (0, 0);
    for (g, members) in dup_groups.iter().enumerate() {
        let group_labels: BTreeSet<&str> =
            members.iter().map(|&i| sample(i).label.as_str()).collect();
        let splits: BTreeSet<&str> = members
            .iter()
            .map(|&i| sample(i).split.as_str())
            .filter(|s| !s.is_empty())
            .collect();
        let mut view = report::GroupView {
            id: g,
            members: Vec::new(),
        };
        for &i in members {
            let similarity = members
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| {
                    if hashes[i].is_some() && hashes[i] == hashes[j] {
                        1.0
                    } else {
                        dot(points.row(i), points.row(j))
                    }
                })
                .fold(f32::NEG_INFINITY, f32::max);
            let s = sample(i);
            dup_rows.push(DuplicateRow {
                group: g,
                path: &s.path,
                label: &s.label,
                split: &s.split,
                similarity,
            });
            view.members.push((i, similarity));
        }
        group_views.push(view);
        if group_labels.len() > 1 {
            conflicts += 1;
            for &i in members {
                excluded.insert(i, "label conflict");
            }
        }
        if splits.len() > 1 {
            leaks += 1;
            for &i in members {
                let s = sample(i);
                leak_rows.push(LeakRow {
                    group: g,
                    path: &s.path,
                    label: &s.label,
                    split: &s.split,
                });
            }
        }
        // Keep the first member (by path) of the group's most common label; drop the rest.
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for &i in members {
            *counts.entry(sample(i).label.as_str()).or_default() += 1;
        }
        let majority = counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(l, _)| *l)
            .expect("non-empty");
        let keep = *members
            .iter()
            .find(|&&i| sample(i).label == majority)
            .expect("majority member");
        for &i in members {
            let s = sample(i);
            let action = if i == keep { "keep" } else { "drop" };
            if i != keep {
                excluded.entry(i).or_insert("duplicate");
            }
            dedupe_rows.push(DedupeRow {
                group: g,
                path: &s.path,
                label: &s.label,
                action,
            });
        }
    }

    let mut label_issues: Vec<LabelIssue> = graph
        .par_iter()
        .enumerate()
        .filter_map(|(i, list)| {
            let vote = label_vote(labels[i], list, &labels);
            let suspicious = vote.majority != labels[i]
                && vote.agreement <= t.mislabel_agreement
                && vote.support >= t.mislabel_support;
            suspicious.then(|| LabelIssue {
                path: sample(i).path.clone(),
                label: sample(i).label.clone(),
                suggested_label: names[vote.majority as usize].to_string(),
                score: vote.agreement,
                support: vote.support,
            })
        })
        .collect();
    label_issues.sort_by(|a, b| {
        a.score
            .total_cmp(&b.score)
            .then(b.support.total_cmp(&a.support))
            .then(a.path.cmp(&b.path))
    });

    let mean_distance = mean_knn_distance(&graph);
    let fence = upper_fence(&mean_distance);
    let ranks = percentile_ranks(&mean_distance);
    let mut outliers: Vec<Outlier> = (0..n)
        .filter(|&i| mean_distance[i] > fence)
        .map(|i| Outlier {
            path: sample(i).path.clone(),
            label: sample(i).label.clone(),
            score: ranks[i],
            mean_knn_distance: mean_distance[i],
        })
        .collect();
    outliers.sort_by(|a, b| b.mean_knn_distance.total_cmp(&a.mean_knn_distance));
    let path_index: HashMap<&str, usize> = set
        .samples
        .iter()
        .enumerate()
        .map(|(i, s)| (s.path.as_str(), i))
        .collect();
    for issue in &label_issues {
        excluded
            .entry(path_index[issue.path.as_str()])
            .or_insert("likely mislabel");
    }
    for o in &outliers {
        excluded
            .entry(path_index[o.path.as_str()])
            .or_insert("outlier");
    }

    let classes = class_rows(&set, &labels, &names, t.tiny_class, cfg.device);
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
                &["path", "label", "suggested_label", "score", "support"],
            ),
        )?;
        write(
            "outliers.csv",
            write_csv(
                &out("outliers.csv"),
                &outliers,
                &["path", "label", "score", "mean_knn_distance"],
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
        };
        let report = serde_json::json!({
            "tripmine_version": env!("CARGO_PKG_VERSION"),
            "corpus": cfg.corpus,
            "samples": n,
            "thresholds": t,
            "outlier_fence_mean_knn_distance": fence,
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
                crate::embed::model_summary(&set.meta.model),
            ),
            (
                "neighbour backend".to_string(),
                backend["backend"].as_str().unwrap_or("?").to_string(),
            ),
        ];
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

fn knn_graph(
    points: Points,
    queries: &[usize],
    k: usize,
    cfg: &AuditConfig,
) -> (Vec<Vec<Neighbour>>, serde_json::Value) {
    let index = crate::knn::build(points, cfg.knn, cfg.hnsw, cfg.device);
    (index.search(queries, k, Restriction::Any), index.describe())
}

fn class_rows(
    set: &EmbeddingSet,
    labels: &[u32],
    names: &[String],
    tiny: usize,
    device: Device,
) -> Vec<ClassRow> {
    let centroids = signals::centroids(&set.data, set.dim, labels);
    let ids: Vec<u32> = (0..names.len() as u32).collect();
    let unit: Vec<f32> = ids
        .iter()
        .flat_map(|id| {
            let c = &centroids[id].0;
            let norm = c.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            c.iter().map(move |v| (v / norm) as f32).collect::<Vec<_>>()
        })
        .collect();
    let closest = if ids.len() > 1 {
        let points = Points {
            data: &unit,
            dim: set.dim,
            labels: &ids,
        };
        ExactIndex::new(points, device).search(
            &(0..ids.len()).collect::<Vec<_>>(),
            1,
            Restriction::Any,
        )
    } else {
        vec![Vec::new()]
    };
    let mut sizes: Vec<usize> = ids.iter().map(|id| centroids[id].1).collect();
    sizes.sort_unstable();
    let median = sizes[sizes.len() / 2] as f64;
    let mut spread = vec![0.0; names.len()];
    for (i, &l) in labels.iter().enumerate() {
        let c = &centroids[&l].0;
        let d: f64 = set
            .row(i)
            .iter()
            .zip(c)
            .map(|(v, m)| (*v as f64 - m).powi(2))
            .sum::<f64>()
            .sqrt();
        spread[l as usize] += d / centroids[&l].1 as f64;
    }
    ids.iter()
        .map(|&id| {
            let size = centroids[&id].1;
            let near = closest[id as usize].first();
            ClassRow {
                label: names[id as usize].to_string(),
                size,
                singleton: size == 1,
                tiny: size < tiny,
                imbalance: size as f64 / median,
                spread: spread[id as usize],
                closest_label: near
                    .map(|nb| names[nb.index].to_string())
                    .unwrap_or_default(),
                closest_distance: near
                    .map_or(f64::NAN, |nb| Distance::Euclidean.from_dot(nb.dot) as f64),
            }
        })
        .collect()
}
