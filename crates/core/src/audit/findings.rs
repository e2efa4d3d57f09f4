//! Every finding of the audit as one pure function of (points, labels, splits, neighbour graph,
//! pixel hashes, thresholds): no files, no libtorch. `audit::run` gathers the inputs and writes
//! what [`compute`] returns.

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;
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
    /// Each class's centroid and spread, indexed by label id.
    pub classes: Vec<signals::ClassSpread>,
    /// Sample index → the first reason it is excluded (conflicts, duplicates, mislabels,
    /// outliers, in that order).
    pub excluded: BTreeMap<usize, &'static str>,
}

/// The findings as records keyed by row index and label id (the Python API's `audit`).
pub fn findings_json(findings: &Findings) -> serde_json::Value {
    let duplicates: Vec<serde_json::Value> = findings
        .duplicates
        .iter()
        .enumerate()
        .flat_map(|(g, group)| {
            group.members.iter().map(move |&(index, similarity)| {
                serde_json::json!({
                    "group": g,
                    "index": index,
                    "similarity": similarity,
                    "conflict": group.conflict,
                    "leak": group.leak,
                    "keep": index == group.keep,
                })
            })
        })
        .collect();
    let mislabels: Vec<serde_json::Value> = findings
        .label_issues
        .iter()
        .map(|f| {
            serde_json::json!({
                "index": f.index,
                "suggested": f.suggested,
                "probability": f.probability,
                "own_share": f.own_share,
                "suggested_share": f.suggested_share,
            })
        })
        .collect();
    let outliers: Vec<serde_json::Value> = findings
        .outliers
        .iter()
        .map(|o| {
            serde_json::json!({
                "index": o.index,
                "signal": o.signal.name(),
                "score": o.score,
                "group": o.group.map(|(id, _)| id),
            })
        })
        .collect();
    let excluded: Vec<serde_json::Value> = findings
        .excluded
        .iter()
        .map(|(index, reason)| serde_json::json!({ "index": index, "reason": reason }))
        .collect();
    serde_json::json!({
        "duplicates": duplicates,
        "likely_mislabels": mislabels,
        "outliers": outliers,
        "model_quality": findings.quality,
        "excluded": excluded,
    })
}

pub fn compute(input: &AuditInput) -> Findings {
    let labels = input.points.labels;
    let t = input.thresholds;
    let (duplicates, exact_duplicate_groups) = duplicates(input);
    let classes = signals::class_spreads(input.points.data, input.points.dim, labels);
    let outliers = outliers(input, &classes);
    // A copy is the same image, not a second opinion: the votes and the model's quality
    // come from each sample's neighbours outside its duplicate group.
    let mut group_of = vec![usize::MAX; labels.len()];
    for (g, group) in duplicates.iter().enumerate() {
        for &(i, _) in &group.members {
            group_of[i] = g;
        }
    }
    let others: Vec<Vec<Neighbour>> = input
        .graph
        .iter()
        .enumerate()
        .map(|(i, list)| {
            list.iter()
                .filter(|nb| group_of[i] == usize::MAX || group_of[nb.index] != group_of[i])
                .copied()
                .collect()
        })
        .collect();
    let votes = signals::weighted_votes(&others, labels);
    let model = signals::mislabel_posteriors(&votes, labels);
    let quality = model_quality(labels, &others, model.noise_rate, t);
    // Each sample is reported under its most specific finding: a member of a label conflict
    // has a copy that says so, and an off-distribution image (a group's, or one whose pixels
    // are unlike any other) has no right label to suggest. A sample merely far from the
    // classes can still carry the wrong one of them.
    let explained: BTreeSet<usize> = duplicates
        .iter()
        .filter(|g| g.conflict)
        .flat_map(|g| g.members.iter().map(|&(i, _)| i))
        .chain(
            outliers
                .iter()
                .filter(|o| o.signal != OutlierSignal::FarFromClasses)
                .map(|o| o.index),
        )
        .collect();
    let mut label_issues: Vec<LabelFinding> = model
        .posteriors
        .iter()
        .enumerate()
        .filter(|(i, p)| p.mislabelled >= t.mislabel_probability && !explained.contains(i))
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
        classes,
        excluded,
    }
}

fn duplicates(input: &AuditInput) -> (Vec<DuplicateGroup>, usize) {
    let (labels, hashes) = (input.points.labels, input.hashes);
    let (groups, exact) = signals::duplicate_groups(
        hashes,
        input.graph,
        input.thresholds.near_duplicate_fraction,
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

/// Distances (samples × classes) the far-from-classes signal may spend on measuring every
/// class; about 4 s on 2 cores at 128 dimensions.
const EVERY_CLASS_BUDGET: usize = 20_000_000;
/// Neighbours that must be mutual for two samples to form an off-distribution group.
const GROUP_DEPTH: usize = 5;
/// A group's members' median isolation (robust z of the embedding's mean k-NN distance within
/// their classes) from which it lies apart from the bulk. Lower than `--outlier-z`: three or
/// more mutual neighbours with mixed labels are evidence of their own.
const GROUP_ISOLATION_Z: f64 = 3.5;
/// Share of a group's members' nearest neighbours that must lie inside it.
const GROUP_COHESION: f64 = 0.8;

fn outliers(input: &AuditInput, spreads: &[signals::ClassSpread]) -> Vec<OutlierFinding> {
    let labels = input.points.labels;
    let t = input.thresholds;
    let mut found: BTreeMap<usize, OutlierFinding> = BTreeMap::new();
    let mut offer = |f: OutlierFinding| {
        let keep = found.get(&f.index).is_none_or(|old| f.score > old.score);
        if keep {
            found.insert(f.index, f);
        }
    };

    let isolation = signals::class_robust_z(&signals::mean_knn_distance(input.graph), labels);
    let mut by_size: Vec<usize> = spreads.iter().map(|c| c.size).filter(|&s| s > 0).collect();
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

    // "Every class" means every class with enough members to have a spread, while that costs
    // at most EVERY_CLASS_BUDGET distances; past it, the classes around the sample (its own
    // and its neighbours').
    let measured = |c: u32| spreads[c as usize].size >= signals::MIN_CLASS_FOR_STATS;
    let all_measured: Vec<u32> = (0..spreads.len() as u32).filter(|&c| measured(c)).collect();
    let every_class = labels.len().saturating_mul(all_measured.len()) <= EVERY_CLASS_BUDGET;
    let far: Vec<(usize, f64)> = (0..labels.len())
        .into_par_iter()
        .filter(|&i| measured(labels[i]))
        .filter_map(|i| {
            let row = input.points.row(i);
            let z = |c: &u32| spreads[*c as usize].z(row);
            let nearest = if every_class {
                all_measured.iter().map(z).fold(f64::INFINITY, f64::min)
            } else {
                let mut around: BTreeSet<u32> =
                    input.graph[i].iter().map(|nb| labels[nb.index]).collect();
                around.insert(labels[i]);
                around
                    .iter()
                    .filter(|&&c| measured(c))
                    .map(z)
                    .fold(f64::INFINITY, f64::min)
            };
            (nearest >= t.outlier_z).then_some((i, nearest))
        })
        .collect();
    for (index, score) in far {
        offer(OutlierFinding {
            index,
            signal: OutlierSignal::FarFromClasses,
            score,
            group: None,
        });
    }
    let mut outliers: Vec<OutlierFinding> = found.into_values().collect();
    outliers.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    outliers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knn::testing::{brute_force, clustered};
    use crate::knn::Restriction;

    const DIM: usize = 16;
    const K: usize = 10;

    fn graph_of(points: Points) -> Vec<Vec<Neighbour>> {
        (0..points.len())
            .map(|i| brute_force(points, i, K, Restriction::Any))
            .collect()
    }

    struct Corpus {
        data: Vec<f32>,
        labels: Vec<u32>,
        splits: Vec<&'static str>,
        hashes: Vec<Option<String>>,
    }

    impl Corpus {
        /// 8 classes of 40 tight clusters, every image distinct, all in `train`.
        fn new(spread: f64) -> Self {
            let (data, labels) = clustered(8, 40, DIM, spread, 5);
            let n = labels.len();
            Corpus {
                data,
                labels,
                splits: vec!["train"; n],
                hashes: (0..n).map(|i| Some(format!("h{i}"))).collect(),
            }
        }

        /// Appends a copy of sample `of` with another label and split.
        fn copy(&mut self, of: usize, label: u32, split: &'static str) -> usize {
            let row = self.data[of * DIM..(of + 1) * DIM].to_vec();
            self.data.extend(row);
            self.labels.push(label);
            self.splits.push(split);
            self.hashes.push(self.hashes[of].clone());
            self.labels.len() - 1
        }

        /// Appends a sample at `row` (normalised).
        fn push(&mut self, row: &[f64], label: u32) -> usize {
            let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
            self.data.extend(row.iter().map(|x| (x / norm) as f32));
            self.labels.push(label);
            self.splits.push("train");
            self.hashes.push(Some(format!("new{}", self.labels.len())));
            self.labels.len() - 1
        }

        fn findings(&self, pixel_graph: Option<&[Vec<Neighbour>]>) -> Findings {
            let points = Points {
                data: &self.data,
                dim: DIM,
                labels: &self.labels,
            };
            let graph = graph_of(points);
            compute(&AuditInput {
                points,
                splits: &self.splits,
                graph: &graph,
                hashes: &self.hashes,
                pixel_graph,
                thresholds: &Thresholds::default(),
            })
        }
    }

    #[test]
    fn copies_form_groups_that_say_conflict_and_leak() {
        let mut c = Corpus::new(0.3);
        let conflict = c.copy(3, 5, "train");
        let leak = c.copy(50, c.labels[50], "test");
        let f = c.findings(None);
        assert_eq!(f.duplicates.len(), 2, "{:?}", f.duplicates);
        assert_eq!(f.exact_duplicate_groups, 2);
        let group_of = |i| {
            f.duplicates
                .iter()
                .find(|g| g.members.iter().any(|m| m.0 == i))
        };
        let g = group_of(conflict).expect("grouped");
        assert!(g.conflict && !g.leak);
        assert_eq!(
            g.members.iter().map(|m| m.0).collect::<Vec<_>>(),
            vec![3, conflict]
        );
        assert!(g.members.iter().all(|m| m.1 == 1.0));
        let g = group_of(leak).expect("grouped");
        assert!(g.leak && !g.conflict);
        assert_eq!(g.keep, 50);
        assert_eq!(f.excluded[&3], LABEL_CONFLICT);
        assert_eq!(f.excluded[&conflict], LABEL_CONFLICT);
        assert_eq!(f.excluded[&leak], DUPLICATE);
        assert!(!f.excluded.contains_key(&50));
        // The conflict is reported as such, not again as a likely mislabel.
        assert!(f
            .label_issues
            .iter()
            .all(|l| l.index != conflict && l.index != 3));
    }

    #[test]
    fn relabelled_samples_are_likely_mislabels_and_a_weak_model_is_not_trusted() {
        let mut c = Corpus::new(0.3);
        let planted: Vec<usize> = (7..c.labels.len()).step_by(40).collect();
        for &i in &planted {
            c.labels[i] = (c.labels[i] + 3) % 8;
        }
        let f = c.findings(None);
        let flagged: Vec<usize> = f.label_issues.iter().map(|l| l.index).collect();
        let mut sorted = flagged.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, planted);
        for l in &f.label_issues {
            assert_eq!(l.suggested, (c.labels[l.index] + 5) % 8);
            assert!(l.probability > 0.9 && l.own_share < 0.1, "{l:?}");
        }
        assert!(f
            .label_issues
            .windows(2)
            .all(|w| w[0].log_odds >= w[1].log_odds));
        assert!(
            f.quality.trusted && f.quality.p_at_1 > 0.95,
            "{:?}",
            f.quality
        );

        // The same labels on an embedding that knows nothing: untrusted, and no flags.
        let mut weak = Corpus::new(50.0);
        weak.labels = c.labels.clone();
        let f = weak.findings(None);
        assert!(!f.quality.trusted, "{:?}", f.quality);
        assert!(f.quality.p_at_1 < 0.3);
        assert!(f.label_issues.len() <= 2, "{} flags", f.label_issues.len());
    }

    #[test]
    fn a_small_mixed_group_apart_from_every_class_is_off_distribution() {
        let mut c = Corpus::new(0.3);
        // Five samples around a point of their own, each under another label.
        let centre: Vec<f64> = (0..DIM)
            .map(|d| if d % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let odd: Vec<usize> = (0..5)
            .map(|j| {
                let row: Vec<f64> = centre
                    .iter()
                    .enumerate()
                    .map(|(d, x)| x + if d == j || d == j + 5 { 0.5 } else { 0.0 })
                    .collect();
                c.push(&row, j as u32)
            })
            .collect();
        let f = c.findings(None);
        let grouped: Vec<usize> = f
            .outliers
            .iter()
            .filter(|o| o.signal == OutlierSignal::OffDistributionGroup)
            .map(|o| o.index)
            .collect();
        assert_eq!(grouped.len(), 5, "{:?}", f.outliers);
        assert!(odd.iter().all(|i| grouped.contains(i)));
        assert!(f
            .outliers
            .iter()
            .filter(|o| o.signal == OutlierSignal::OffDistributionGroup)
            .all(|o| o.group == Some((odd[0], 5))));
        // An outlier is not also a likely mislabel.
        assert!(f.label_issues.iter().all(|l| !odd.contains(&l.index)));
        for &i in &odd {
            assert_eq!(f.excluded[&i], OUTLIER);
        }
    }

    #[test]
    fn pixel_isolation_and_distance_from_every_class_flag_single_samples() {
        let mut c = Corpus::new(0.3);
        let n = c.labels.len();
        // Far from every class in the embedding: a point between no clusters at all.
        let far: Vec<f64> = (0..DIM).map(|d| if d < 8 { 1.0 } else { -1.0 }).collect();
        let lonely = c.push(&far, 2);
        // The pixel graph: sample 10 lies far from everything, the rest close.
        let pixel_graph: Vec<Vec<Neighbour>> = (0..=n)
            .map(|i| {
                let dot = if i == 10 { -0.5 } else { 0.95 };
                (1..=K)
                    .map(|j| Neighbour {
                        index: (i + j) % (n + 1),
                        dot,
                    })
                    .collect()
            })
            .collect();
        let f = c.findings(Some(&pixel_graph));
        let signal_of = |i| f.outliers.iter().find(|o| o.index == i).map(|o| o.signal);
        assert_eq!(signal_of(10), Some(OutlierSignal::PixelIsolated));
        assert_eq!(signal_of(lonely), Some(OutlierSignal::FarFromClasses));
        assert_eq!(f.outliers.len(), 2, "{:?}", f.outliers);
        assert!(f.outliers.windows(2).all(|w| w[0].score >= w[1].score));
    }
}
