//! Audit signals as pure functions of a k-NN graph (plus exact pixel hashes): duplicate groups,
//! distance-weighted label votes and the mislabel posterior built on them, class-conditional
//! distances, off-distribution groups and class statistics. No libtorch here.

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;

use crate::definitions::Distance;
use crate::knn::Neighbour;

/// Union-find over sample indices.
pub struct Groups {
    parent: Vec<usize>,
}

impl Groups {
    pub fn new(n: usize) -> Self {
        Groups {
            parent: (0..n).collect(),
        }
    }

    pub fn find(&mut self, i: usize) -> usize {
        let mut root = i;
        while self.parent[root] != root {
            root = self.parent[root];
        }
        let mut i = i;
        while self.parent[i] != root {
            let next = self.parent[i];
            self.parent[i] = root;
            i = next;
        }
        root
    }

    pub fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent[ra.max(rb)] = ra.min(rb);
        }
    }

    /// Groups with at least two members, each sorted, ordered by their first member.
    pub fn multi(&mut self) -> Vec<Vec<usize>> {
        let mut by_root: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for i in 0..self.parent.len() {
            let r = self.find(i);
            by_root.entry(r).or_default().push(i);
        }
        by_root.into_values().filter(|g| g.len() > 1).collect()
    }
}

/// Duplicate groups: identical pixel hashes, plus k-NN edges no longer than `fraction` of the
/// corpus's median nearest-neighbour distance. The bar is relative because a trained
/// embedding draws a class together: there, distinct images of one class can lie closer than
/// any fixed similarity a user would call a duplicate, while copies still lie far closer than
/// typical neighbours. Also returns how many groups the hashes alone form.
pub fn duplicate_groups(
    hashes: &[Option<String>],
    graph: &[Vec<Neighbour>],
    fraction: f64,
) -> (Vec<Vec<usize>>, usize) {
    let mut groups = Groups::new(hashes.len());
    let mut first_with: HashMap<&str, usize> = HashMap::new();
    for (i, h) in hashes.iter().enumerate() {
        if let Some(h) = h {
            match first_with.get(h.as_str()) {
                Some(&j) => groups.union(i, j),
                None => {
                    first_with.insert(h, i);
                }
            }
        }
    }
    let exact = groups.multi().len();
    let mut nearest: Vec<f64> = graph
        .iter()
        .filter_map(|list| list.first())
        .map(|nb| Distance::Euclidean.from_dot(nb.dot) as f64)
        .collect();
    let limit = fraction * median(&mut nearest);
    for (i, list) in graph.iter().enumerate() {
        for nb in list
            .iter()
            .filter(|nb| (Distance::Euclidean.from_dot(nb.dot) as f64) <= limit)
        {
            groups.union(i, nb.index);
        }
    }
    (groups.multi(), exact)
}

/// Mean Euclidean distance of each sample to its neighbours in the graph.
pub fn mean_knn_distance(graph: &[Vec<Neighbour>]) -> Vec<f64> {
    graph
        .iter()
        .map(|list| {
            let d: f64 = list
                .iter()
                .map(|nb| Distance::Euclidean.from_dot(nb.dot) as f64)
                .sum();
            d / list.len().max(1) as f64
        })
        .collect()
}

/// A sample's neighbours' labels, each weighted by a Gaussian kernel of its distance, the
/// weights normalised to sum to the number of neighbours: the labels of near neighbours count
/// more than those at the edge of the neighbourhood.
pub type Votes = Vec<(u32, f64)>;

/// The votes of every sample. The kernel's bandwidth is the corpus's median distance to the
/// k-th neighbour, so the weighting follows the embedding's own scale.
pub fn weighted_votes(graph: &[Vec<Neighbour>], labels: &[u32]) -> Vec<Votes> {
    let mut kth: Vec<f64> = graph
        .iter()
        .filter_map(|list| list.last())
        .map(|nb| Distance::Euclidean.from_dot(nb.dot) as f64)
        .collect();
    kth.sort_by(f64::total_cmp);
    let sigma = kth.get(kth.len() / 2).copied().unwrap_or(1.0).max(1e-6);
    graph
        .iter()
        .map(|list| {
            let mut votes: Votes = Vec::new();
            for nb in list {
                let d = Distance::Euclidean.from_dot(nb.dot) as f64 / sigma;
                let w = (-0.5 * d * d).exp();
                match votes.iter_mut().find(|(l, _)| *l == labels[nb.index]) {
                    Some((_, sum)) => *sum += w,
                    None => votes.push((labels[nb.index], w)),
                }
            }
            let total: f64 = votes.iter().map(|(_, w)| w).sum();
            let scale = if total > 0.0 {
                list.len() as f64 / total
            } else {
                0.0
            };
            votes.iter_mut().for_each(|(_, w)| *w *= scale);
            votes
        })
        .collect()
}

/// The weight of `label` in `votes`, as a fraction of all of them.
pub fn share(votes: &Votes, label: u32) -> f64 {
    let total: f64 = votes.iter().map(|(_, w)| w).sum();
    let own = votes
        .iter()
        .find(|(l, _)| *l == label)
        .map_or(0.0, |(_, w)| *w);
    if total > 0.0 {
        own / total
    } else {
        0.0
    }
}

/// What the neighbours say about one sample's label.
#[derive(Debug, Clone, PartialEq)]
pub struct Posterior {
    /// Probability that the given label is wrong.
    pub mislabelled: f64,
    /// ln(P(wrong) / P(right)): ranks samples whose probability rounds to 1.
    pub log_odds: f64,
    /// The likeliest other label and its probability.
    pub suggested: u32,
    pub suggested_probability: f64,
}

/// The mislabel model fitted to a corpus: its estimated noise rate and every sample's posterior.
#[derive(Debug, Clone)]
pub struct LabelModel {
    pub noise_rate: f64,
    pub posteriors: Vec<Posterior>,
}

/// How far the neighbour votes are trusted as independent evidence. Neighbours are correlated
/// (they are each other's neighbours too): on Fashion-MNIST embeddings the variance of a
/// class's own-label vote share was 2.3 to 4.5 times the binomial one, so each neighbour
/// counts for a quarter of an independent draw. A fixed tempering (rather than one estimated
/// per corpus) keeps the count of flags falling as the embedding gets worse.
pub const VOTE_TEMPERING: f64 = 0.25;

/// The prior probability that a label is wrong.
pub const PRIOR_NOISE_RATE: f64 = 0.01;

const EM_ITERATIONS: usize = 10;

/// Posterior probability of each sample's label being wrong under a noisy-label mixture (the
/// confident-learning idea, Northcutt et al., JAIR 2021, as a likelihood): a sample whose true
/// class is t draws its neighbours' labels from row t of a class-confusion matrix, and its
/// given label is wrong with prior probability [`PRIOR_NOISE_RATE`]. The confusion matrix is
/// estimated from the corpus by expectation-maximisation (each sample counts towards the rows
/// of the classes it probably belongs to), so the evidence a flag needs adapts to the model:
/// where the model often confuses two classes, votes for the other class are expected and
/// prove little; where it rarely errs, a few contrary votes prove a lot. A weak model's
/// diffuse confusion leaves every posterior near the prior, so the number of flags falls as
/// the model gets worse. Only labels that some neighbour carries are candidates for the true
/// class. `noise_rate` is the mean posterior: the estimated share of wrong labels.
pub fn mislabel_posteriors(votes: &[Votes], labels: &[u32]) -> LabelModel {
    let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
    let n = labels.len().max(1) as f64;
    let mut prior = vec![0.0; classes];
    for &l in labels {
        prior[l as usize] += 1.0 / n;
    }
    // Each sample's probability over candidate true classes; the given label first.
    let mut beliefs: Vec<Vec<(u32, f64)>> = labels.iter().map(|&l| vec![(l, 1.0)]).collect();
    let mut log_odds = vec![f64::NEG_INFINITY; labels.len()];
    for _ in 0..EM_ITERATIONS {
        let mut counts: HashMap<(u32, u32), f64> = HashMap::new();
        let mut totals = vec![0.0; classes];
        for (belief, v) in beliefs.iter().zip(votes) {
            for &(t, p) in belief {
                for &(c, w) in v {
                    *counts.entry((t, c)).or_default() += p * w;
                }
                totals[t as usize] += p * v.iter().map(|(_, w)| w).sum::<f64>();
            }
        }
        // Smoothed by one vote spread as the class prior.
        let confusion = |t: u32, c: u32| {
            (counts.get(&(t, c)).copied().unwrap_or(0.0) + prior[c as usize])
                / (totals[t as usize] + 1.0)
        };
        (beliefs, log_odds) = labels
            .par_iter()
            .zip(votes)
            .map(|(&own, v)| {
                let mut candidates: Vec<u32> = vec![own];
                candidates.extend(v.iter().map(|(c, _)| *c).filter(|&c| c != own));
                let other_mass = (1.0 - prior[own as usize]).max(1e-12);
                let log_post: Vec<f64> = candidates
                    .iter()
                    .map(|&t| {
                        let log_prior = if t == own {
                            (1.0 - PRIOR_NOISE_RATE).ln()
                        } else {
                            (PRIOR_NOISE_RATE * prior[t as usize] / other_mass).ln()
                        };
                        let log_likelihood: f64 =
                            v.iter().map(|&(c, w)| w * confusion(t, c).ln()).sum();
                        log_prior + VOTE_TEMPERING * log_likelihood
                    })
                    .collect();
                let top = log_post.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = log_post.iter().map(|lp| (lp - top).exp()).collect();
                let sum: f64 = weights.iter().sum();
                let odds = (sum - weights[0]).ln() - weights[0].ln();
                let belief = candidates
                    .into_iter()
                    .zip(weights)
                    .map(|(t, w)| (t, w / sum))
                    .collect();
                (belief, odds)
            })
            .unzip();
    }
    let noise_rate = beliefs.iter().map(|b| 1.0 - b[0].1).sum::<f64>() / n;
    let posteriors = beliefs
        .into_iter()
        .zip(log_odds)
        .map(|(b, log_odds)| {
            let (suggested, suggested_probability) = b[1..]
                .iter()
                .copied()
                .max_by(|a, c| a.1.total_cmp(&c.1).then(c.0.cmp(&a.0)))
                .unwrap_or((b[0].0, 0.0));
            Posterior {
                mislabelled: 1.0 - b[0].1,
                log_odds,
                suggested,
                suggested_probability,
            }
        })
        .collect();
    LabelModel {
        noise_rate,
        posteriors,
    }
}

/// A class's centroid and the robust scale of its members' distances to it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassSpread {
    pub centroid: Vec<f64>,
    pub size: usize,
    /// Mean and median distance of the members to the centroid.
    pub mean: f64,
    pub median: f64,
    /// 1.4826 × the median absolute deviation of those distances (σ for a normal
    /// distribution), floored so that a class of identical members does not divide by zero.
    pub scale: f64,
}

impl ClassSpread {
    /// How many robust standard deviations `x` lies beyond the class's median distance: the
    /// modified z-score of Iglewicz and Hoaglin.
    pub fn z(&self, x: &[f32]) -> f64 {
        (euclidean(x, &self.centroid) - self.median) / self.scale
    }
}

fn euclidean(x: &[f32], c: &[f64]) -> f64 {
    x.iter()
        .zip(c)
        .map(|(v, m)| (*v as f64 - m).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let m = values.len() / 2;
    if values.is_empty() {
        0.0
    } else if values.len() % 2 == 1 {
        values[m]
    } else {
        (values[m - 1] + values[m]) / 2.0
    }
}

/// The spread of every class, indexed by label id (`labels` are ids 0..C).
pub fn class_spreads(data: &[f32], dim: usize, labels: &[u32]) -> Vec<ClassSpread> {
    let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        members[l as usize].push(i);
    }
    let row = |i: usize| &data[i * dim..(i + 1) * dim];
    members
        .par_iter()
        .map(|m| {
            let mut centroid = vec![0.0; dim];
            for &i in m {
                centroid
                    .iter_mut()
                    .zip(row(i))
                    .for_each(|(c, v)| *c += *v as f64);
            }
            centroid
                .iter_mut()
                .for_each(|c| *c /= m.len().max(1) as f64);
            let mut d: Vec<f64> = m.iter().map(|&i| euclidean(row(i), &centroid)).collect();
            let mean = d.iter().sum::<f64>() / m.len().max(1) as f64;
            let med = median(&mut d);
            let mut dev: Vec<f64> = d.iter().map(|x| (x - med).abs()).collect();
            let mad = median(&mut dev);
            // The floor: a hundredth of the median distance, or of a unit when that is 0 too.
            let floor = if med > 0.0 { med / 100.0 } else { 0.01 };
            ClassSpread {
                centroid,
                size: m.len(),
                mean,
                median: med,
                scale: (1.4826 * mad).max(floor),
            }
        })
        .collect()
}

/// Classes smaller than this are measured against the corpus-wide distribution instead of
/// their own: a median and MAD of a handful of values say little.
pub const MIN_CLASS_FOR_STATS: usize = 8;

/// Robust z-score of each value against its own class's values: (x − median) / (1.4826·MAD).
/// NaN values (samples without a score) stay NaN and are left out of the statistics.
pub fn class_robust_z(values: &[f64], labels: &[u32]) -> Vec<f64> {
    let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
    let mut by_class: Vec<Vec<f64>> = vec![Vec::new(); classes];
    let mut all = Vec::new();
    for (&v, &l) in values.iter().zip(labels) {
        if !v.is_nan() {
            by_class[l as usize].push(v);
            all.push(v);
        }
    }
    let stats = |v: &mut Vec<f64>| {
        let m = median(v);
        let mut dev: Vec<f64> = v.iter().map(|x| (x - m).abs()).collect();
        let scale = 1.4826 * median(&mut dev);
        (m, scale.max(m.abs() / 100.0).max(1e-9))
    };
    let corpus = stats(&mut all);
    let per_class: Vec<(f64, f64)> = by_class
        .iter_mut()
        .map(|v| {
            if v.len() >= MIN_CLASS_FOR_STATS {
                stats(v)
            } else {
                corpus
            }
        })
        .collect();
    values
        .iter()
        .zip(labels)
        .map(|(&v, &l)| {
            let (m, scale) = per_class[l as usize];
            (v - m) / scale
        })
        .collect()
}

/// Groups of samples that are each other's neighbours: connected components of the graph whose
/// edges join two samples each among the other's `depth` nearest. Only groups of `min_size`
/// to `max_size` members are returned, each sorted.
pub fn mutual_groups(
    graph: &[Vec<Neighbour>],
    depth: usize,
    min_size: usize,
    max_size: usize,
) -> Vec<Vec<usize>> {
    let near = |i: usize, j: usize| graph[i].iter().take(depth).any(|nb| nb.index == j);
    let mut groups = Groups::new(graph.len());
    for (i, list) in graph.iter().enumerate() {
        for nb in list.iter().take(depth) {
            if near(nb.index, i) {
                groups.union(i, nb.index);
            }
        }
    }
    groups
        .multi()
        .into_iter()
        .filter(|g| (min_size..=max_size).contains(&g.len()))
        .collect()
}

/// The share of a group's members' nearest neighbours that are members too, counting for
/// each member only as many neighbours as the group has other members.
pub fn cohesion(group: &[usize], graph: &[Vec<Neighbour>]) -> f64 {
    let others = group.len().saturating_sub(1).max(1);
    let inside: usize = group
        .iter()
        .map(|&i| {
            graph[i]
                .iter()
                .take(others)
                .filter(|nb| group.binary_search(&nb.index).is_ok())
                .count()
        })
        .sum();
    inside as f64 / (group.len() * others) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_find_groups() {
        let mut g = Groups::new(6);
        g.union(4, 1);
        g.union(1, 3);
        g.union(0, 5);
        assert_eq!(g.multi(), vec![vec![0, 5], vec![1, 3, 4]]);
    }

    fn nb(index: usize, dot: f32) -> Neighbour {
        Neighbour { index, dot }
    }

    #[test]
    fn votes_weigh_near_neighbours_more_and_sum_to_k() {
        let labels = [0, 1, 1, 2];
        // Sample 0: one neighbour of label 1 very near, two of label 1/2 far.
        let graph = vec![
            vec![nb(1, 0.99), nb(2, 0.2), nb(3, 0.2)],
            vec![nb(0, 0.99), nb(2, 0.9), nb(3, 0.5)],
            vec![nb(1, 0.9), nb(0, 0.2), nb(3, 0.1)],
            vec![nb(1, 0.5), nb(0, 0.2), nb(2, 0.1)],
        ];
        let votes = weighted_votes(&graph, &labels);
        for v in &votes {
            let total: f64 = v.iter().map(|(_, w)| w).sum();
            assert!((total - 3.0).abs() < 1e-9);
        }
        // Label 1 holds the nearest and one far neighbour: more than 2/3 of the weight.
        assert!(share(&votes[0], 1) > 2.0 / 3.0);
        assert!(share(&votes[0], 2) < 1.0 / 3.0);
        assert_eq!(share(&votes[0], 0), 0.0);
    }

    /// A k-NN graph by brute force.
    fn graph_of(data: &[f32], dim: usize, k: usize) -> Vec<Vec<Neighbour>> {
        let n = data.len() / dim;
        let row = |i: usize| &data[i * dim..(i + 1) * dim];
        (0..n)
            .map(|i| {
                let mut all: Vec<Neighbour> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| nb(j, crate::definitions::dot(row(i), row(j))))
                    .collect();
                all.sort_by(|a, b| b.dot.total_cmp(&a.dot).then(a.index.cmp(&b.index)));
                all.truncate(k);
                all
            })
            .collect()
    }

    /// 8 classes of 40: every 20th sample relabelled to the next class.
    fn relabelled(spread: f64) -> (Vec<f32>, Vec<u32>, Vec<usize>) {
        let (data, mut labels) = crate::knn::testing::clustered(8, 40, 16, spread, 11);
        let planted: Vec<usize> = (5..labels.len()).step_by(20).collect();
        for &i in &planted {
            labels[i] = (labels[i] + 1) % 8;
        }
        (data, labels, planted)
    }

    #[test]
    fn the_posterior_finds_relabelled_samples_and_clears_the_rest() {
        let (data, labels, planted) = relabelled(0.3);
        let graph = graph_of(&data, 16, 10);
        let model = mislabel_posteriors(&weighted_votes(&graph, &labels), &labels);
        let flagged: Vec<usize> = (0..labels.len())
            .filter(|&i| model.posteriors[i].mislabelled >= 0.5)
            .collect();
        assert_eq!(flagged, planted);
        for &i in &planted {
            // The suggestion is the class the sample was taken from.
            assert_eq!(model.posteriors[i].suggested, (labels[i] + 7) % 8);
        }
        let rate = planted.len() as f64 / labels.len() as f64;
        assert!(
            (model.noise_rate - rate).abs() < 0.02,
            "{}",
            model.noise_rate
        );
    }

    #[test]
    fn a_weaker_embedding_flags_fewer_samples() {
        let mut counts = Vec::new();
        for spread in [0.3, 1.5, 4.0, 20.0] {
            let (data, labels, _) = relabelled(spread);
            let graph = graph_of(&data, 16, 10);
            let model = mislabel_posteriors(&weighted_votes(&graph, &labels), &labels);
            counts.push(
                model
                    .posteriors
                    .iter()
                    .filter(|p| p.mislabelled >= 0.5)
                    .count(),
            );
        }
        assert!(
            counts.windows(2).all(|w| w[1] <= w[0]),
            "flags by growing spread: {counts:?}"
        );
        assert!(
            counts[3] <= 2,
            "an embedding that knows nothing flags {counts:?}"
        );
    }

    #[test]
    fn class_spread_is_robust() {
        // Class 0: four points at distance 1 from the centroid (the origin) and one on it.
        let data = [1.0, 0.0, -1.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 5.0, 5.0];
        let labels = [0, 0, 0, 0, 0, 1];
        let spreads = class_spreads(&data, 2, &labels);
        assert_eq!(spreads.len(), 2);
        assert_eq!(spreads[0].size, 5);
        assert!((spreads[0].median - 1.0).abs() < 1e-9);
        assert!((spreads[0].mean - 0.8).abs() < 1e-9);
        // Deviations 0,0,0,0,1 → MAD 0, so the floor (a hundredth of the median) applies.
        assert!((spreads[0].scale - 0.01).abs() < 1e-12);
        assert!(spreads[0].z(&[3.0, 0.0]) > 100.0);
        assert!(spreads[0].z(&[1.0, 0.0]).abs() < 1e-9);
    }

    #[test]
    fn robust_z_is_per_class_and_small_classes_use_the_corpus() {
        // Class 0: ten values 1..=10 and one at 100; class 1: two values (too few for stats).
        let mut values: Vec<f64> = (1..=10).map(f64::from).collect();
        values.extend([100.0, 5.0, f64::NAN]);
        let mut labels = vec![0; 11];
        labels.extend([1, 1]);
        let z = class_robust_z(&values, &labels);
        assert!(z[10] > 10.0, "{}", z[10]);
        assert!(z[4].abs() < 0.5 && z[5].abs() < 0.5);
        assert!(z[12].is_nan());
        // Class 1 is measured against all 12 values, whose median is 5.5.
        assert!(z[11] < 0.0);
    }

    #[test]
    fn mutual_groups_and_cohesion() {
        // 0-1-2 are each other's nearest; 3 lists 0 but 0 does not list 3.
        let graph = vec![
            vec![nb(1, 0.9), nb(2, 0.8)],
            vec![nb(0, 0.9), nb(2, 0.8)],
            vec![nb(1, 0.9), nb(0, 0.8)],
            vec![nb(0, 0.5), nb(4, 0.4)],
            vec![nb(3, 0.4), nb(0, 0.1)],
        ];
        assert_eq!(mutual_groups(&graph, 2, 3, 10), vec![vec![0, 1, 2]]);
        assert_eq!(mutual_groups(&graph, 2, 2, 2), vec![vec![3, 4]]);
        assert_eq!(cohesion(&[0, 1, 2], &graph), 1.0);
        assert_eq!(cohesion(&[3, 4], &graph), 0.5);
    }
}
