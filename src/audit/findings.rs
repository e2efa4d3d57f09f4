//! Every finding of the audit as one pure function of (points, labels, splits, neighbour graph,
//! pixel hashes, thresholds): no files, no libtorch. `audit::run` gathers the inputs and writes
//! what [`compute`] returns.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::signals;
use super::Thresholds;
use crate::definitions::dot;
use crate::eval;
use crate::knn::{Neighbour, Points};

/// What the findings are computed from. `graph[i]` holds sample i's k nearest neighbours of any
/// label, nearest first, itself excluded; `hashes[i]` its decoded pixels' hash, when readable.
pub struct AuditInput<'a> {
    pub points: Points<'a>,
    pub splits: &'a [&'a str],
    pub graph: &'a [Vec<Neighbour>],
    pub hashes: &'a [Option<String>],
    /// The k-NN graph of a model-free view of the images (small grey thumbnails, centred and
    /// scaled to unit length: their dot products are correlations), with an empty list for a
    /// sample whose file could not be decoded; `None` leaves the pixel signal out.
    pub pixel_graph: Option<&'a [Vec<Neighbour>]>,
    pub thresholds: &'a Thresholds,
}

/// A group of exact or near duplicates.
#[derive(Debug, Clone, PartialEq)]
pub struct DuplicateGroup {
    /// Each member with its highest similarity to another member (1 for identical pixels).
    pub members: Vec<(usize, f32)>,
    /// The members carry different labels.
    pub conflict: bool,
    /// The members lie in different splits.
    pub leak: bool,
    /// The member a dedupe keeps: the first of the group's most common label.
    pub keep: usize,
}

/// A likely mislabel.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelFinding {
    pub index: usize,
    pub suggested: u32,
    /// Posterior probability that the given label is wrong, and its log-odds.
    pub probability: f64,
    pub log_odds: f64,
    /// Share of the distance-weighted neighbour votes for the given and the suggested label.
    pub own_share: f64,
    pub suggested_share: f64,
}

/// Which signal flagged an outlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutlierSignal {
    /// One of a small group of samples with mixed labels that are each other's nearest
    /// neighbours, apart from the bulk of their classes (embedding).
    OffDistributionGroup,
    /// Its pixels are far from every other image's, measured against its own class (the
    /// model-free view: a learned embedding can fold images unlike any class into one).
    PixelIsolated,
    /// Far from its own class and from every class its neighbours belong to (embedding).
    FarFromClasses,
}

impl OutlierSignal {
    pub fn name(self) -> &'static str {
        match self {
            OutlierSignal::OffDistributionGroup => "off-distribution-group",
            OutlierSignal::PixelIsolated => "pixel-isolated",
            OutlierSignal::FarFromClasses => "far-from-classes",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierFinding {
    pub index: usize,
    pub signal: OutlierSignal,
    /// The robust z-score that fired (for a group, the median of its members' isolation).
    pub score: f64,
    /// For a group: its id (its smallest member) and size.
    pub group: Option<(usize, usize)>,
}

/// How well the model separates the corpus's own labels, measured on the audit's graph.
#[derive(Debug, Clone, Serialize)]
pub struct ModelQuality {
    /// Leave-one-out P@1: the nearest other sample shares the label.
    pub p_at_1: f64,
    /// MAP@R with R capped at the graph's k.
    pub map_at_r_within_k: f64,
    /// The P@1 of an embedding that knows nothing (Σ share²).
    pub chance_p_at_1: f64,
    /// The estimated share of wrong labels.
    pub noise_rate: f64,
    /// Label findings are trustworthy: P@1 reaches `--min-model-p-at-1`.
    pub trusted: bool,
}

/// Why a sample is in `exclude.csv`.
pub const LABEL_CONFLICT: &str = "label conflict";
pub const DUPLICATE: &str = "duplicate";
pub const LIKELY_MISLABEL: &str = "likely mislabel";
pub const OUTLIER: &str = "outlier";

#[derive(Debug, Clone)]
pub struct Findings {
    pub duplicates: Vec<DuplicateGroup>,
    /// Groups formed by identical pixels alone.
    pub exact_duplicate_groups: usize,
    /// Most probable first.
    pub label_issues: Vec<LabelFinding>,
    /// Most isolated first (the robust z-score of the signal that fired).
    pub outliers: Vec<OutlierFinding>,
    pub quality: ModelQuality,
    /// Sample index → the first reason it is excluded (conflicts, duplicates, mislabels,
    /// outliers, in that order).
    pub excluded: BTreeMap<usize, &'static str>,
}

pub fn compute(input: &AuditInput) -> Findings {
    let labels = input.points.labels;
    let t = input.thresholds;
    let (duplicates, exact_duplicate_groups) = duplicates(input);
    let votes = signals::weighted_votes(input.graph, labels);
    let model = signals::mislabel_posteriors(&votes, labels);
    let quality = model_quality(labels, input.graph, model.noise_rate, t);
    let mut label_issues: Vec<LabelFinding> = model
        .posteriors
        .iter()
        .enumerate()
        .filter(|(_, p)| p.mislabelled >= t.mislabel_probability)
        .map(|(index, p)| LabelFinding {
            index,
            suggested: p.suggested,
            probability: p.mislabelled,
            log_odds: p.log_odds,
            own_share: signals::share(&votes[index], labels[index]),
            suggested_share: signals::share(&votes[index], p.suggested),
        })
        .collect();
    label_issues.sort_by(|a, b| {
        b.log_odds
            .total_cmp(&a.log_odds)
            .then(a.own_share.total_cmp(&b.own_share))
            .then(a.index.cmp(&b.index))
    });
    let outliers = outliers(input);

    let mut excluded = BTreeMap::new();
    for g in &duplicates {
        if g.conflict {
            for &(i, _) in &g.members {
                excluded.insert(i, LABEL_CONFLICT);
            }
        }
        for &(i, _) in g.members.iter().filter(|(i, _)| *i != g.keep) {
            excluded.entry(i).or_insert(DUPLICATE);
        }
    }
    for issue in &label_issues {
        excluded.entry(issue.index).or_insert(LIKELY_MISLABEL);
    }
    for o in &outliers {
        excluded.entry(o.index).or_insert(OUTLIER);
    }
    Findings {
        duplicates,
        exact_duplicate_groups,
        label_issues,
        outliers,
        quality,
        excluded,
    }
}

fn duplicates(input: &AuditInput) -> (Vec<DuplicateGroup>, usize) {
    let (labels, hashes) = (input.points.labels, input.hashes);
    let (groups, exact) = signals::duplicate_groups(
        hashes,
        input.graph,
        input.thresholds.near_duplicate_distance,
    );
    let groups = groups
        .into_iter()
        .map(|members| {
            let similarity = |i: usize| {
                members
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| {
                        if hashes[i].is_some() && hashes[i] == hashes[j] {
                            1.0
                        } else {
                            dot(input.points.row(i), input.points.row(j))
                        }
                    })
                    .fold(f32::NEG_INFINITY, f32::max)
            };
            let distinct_labels: BTreeSet<u32> = members.iter().map(|&i| labels[i]).collect();
            let splits: BTreeSet<&str> = members
                .iter()
                .map(|&i| input.splits[i])
                .filter(|s| !s.is_empty())
                .collect();
            let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
            for &i in &members {
                *counts.entry(labels[i]).or_default() += 1;
            }
            let majority = counts
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(&l, _)| l)
                .expect("non-empty");
            let keep = *members
                .iter()
                .find(|&&i| labels[i] == majority)
                .expect("a member of the majority label");
            DuplicateGroup {
                members: members.iter().map(|&i| (i, similarity(i))).collect(),
                conflict: distinct_labels.len() > 1,
                leak: splits.len() > 1,
                keep,
            }
        })
        .collect();
    (groups, exact)
}

fn model_quality(
    labels: &[u32],
    graph: &[Vec<Neighbour>],
    noise_rate: f64,
    t: &Thresholds,
) -> ModelQuality {
    let queries: Vec<usize> = (0..labels.len()).collect();
    let metrics = eval::from_neighbours_within(labels, &queries, graph, t.k);
    let mut sizes: BTreeMap<u32, f64> = BTreeMap::new();
    for &l in labels {
        *sizes.entry(l).or_default() += 1.0;
    }
    let n = labels.len().max(1) as f64;
    let chance_p_at_1 = sizes.values().map(|s| (s / n).powi(2)).sum();
    ModelQuality {
        p_at_1: metrics.p_at_1,
        map_at_r_within_k: metrics.map_at_r,
        chance_p_at_1,
        noise_rate,
        trusted: metrics.p_at_1 >= t.min_model_p_at_1,
    }
}

/// Neighbours that must be mutual for two samples to form an off-distribution group.
const GROUP_DEPTH: usize = 5;
/// A group's members' median isolation (robust z of the embedding's mean k-NN distance within
/// their classes) from which it lies apart from the bulk. Lower than `--outlier-z`: three or
/// more mutual neighbours with mixed labels are evidence of their own.
const GROUP_ISOLATION_Z: f64 = 3.5;
/// Share of a group's members' nearest neighbours that must lie inside it.
const GROUP_COHESION: f64 = 0.8;

fn outliers(input: &AuditInput) -> Vec<OutlierFinding> {
    let labels = input.points.labels;
    let t = input.thresholds;
    let mut found: BTreeMap<usize, OutlierFinding> = BTreeMap::new();
    let mut offer = |f: OutlierFinding| {
        let keep = found.get(&f.index).is_none_or(|old| f.score > old.score);
        if keep {
            found.insert(f.index, f);
        }
    };

    let isolation =
        signals::class_robust_z(&signals::mean_knn_distance(input.graph), labels);
    let mut sizes: BTreeMap<u32, usize> = BTreeMap::new();
    for &l in labels {
        *sizes.entry(l).or_default() += 1;
    }
    let mut by_size: Vec<usize> = sizes.values().copied().collect();
    by_size.sort_unstable();
    let median_class = by_size.get(by_size.len() / 2).copied().unwrap_or(0);
    let largest_group = (median_class / 2).max(3);
    for group in signals::mutual_groups(input.graph, GROUP_DEPTH.min(t.k), 3, largest_group) {
        let distinct: BTreeSet<u32> = group.iter().map(|&i| labels[i]).collect();
        let mut z: Vec<f64> = group.iter().map(|&i| isolation[i]).collect();
        z.sort_by(f64::total_cmp);
        let median_z = z[z.len() / 2];
        if distinct.len() >= 2
            && median_z >= GROUP_ISOLATION_Z
            && signals::cohesion(&group, input.graph) >= GROUP_COHESION
        {
            for &i in &group {
                offer(OutlierFinding {
                    index: i,
                    signal: OutlierSignal::OffDistributionGroup,
                    score: median_z,
                    group: Some((group[0], group.len())),
                });
            }
        }
    }

    if let Some(pixel_graph) = input.pixel_graph {
        // A sample without a pixel view (its file did not decode) has no score.
        let distance: Vec<f64> = signals::mean_knn_distance(pixel_graph)
            .into_iter()
            .zip(pixel_graph)
            .map(|(d, list)| if list.is_empty() { f64::NAN } else { d })
            .collect();
        let pixel_isolation = signals::class_robust_z(&distance, labels);
        for (i, &z) in pixel_isolation.iter().enumerate() {
            if z >= t.outlier_z {
                offer(OutlierFinding {
                    index: i,
                    signal: OutlierSignal::PixelIsolated,
                    score: z,
                    group: None,
                });
            }
        }
    }

    let spreads = signals::class_spreads(input.points.data, input.points.dim, labels);
    for (i, list) in input.graph.iter().enumerate() {
        let mut candidates: BTreeSet<u32> = list.iter().map(|nb| labels[nb.index]).collect();
        candidates.insert(labels[i]);
        let z = candidates
            .iter()
            .map(|&c| spreads[c as usize].z(input.points.row(i)))
            .fold(f64::INFINITY, f64::min);
        if z >= t.outlier_z && spreads[labels[i] as usize].size >= signals::MIN_CLASS_FOR_STATS {
            offer(OutlierFinding {
                index: i,
                signal: OutlierSignal::FarFromClasses,
                score: z,
                group: None,
            });
        }
    }
    let mut outliers: Vec<OutlierFinding> = found.into_values().collect();
    outliers.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    outliers
}
