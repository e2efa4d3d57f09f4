//! Index-guided batch composition (HTL, Doppelganger mining, BatchSampler): a neighbour graph
//! of the current embeddings decides which samples meet in a P×K batch. Pure functions of the
//! labels, the graph and a seed, so that tripmine's trainer (`--mining neighbour-batches`) and
//! the Python `tripmine.torch.NeighbourBatchSampler` compose the same batches from the same
//! graph: neither re-implements them.
//!
//! With many classes a batch is a seed class, the classes whose samples are most often its
//! samples' neighbours, and a share of random classes; with few classes (fewer than 4·P) a
//! batch is built at image level: seed images, their other-label neighbours from a rank window
//! that skips the nearest few, each with same-label samples near it. Every eligible sample (of
//! a class with at least two) is in exactly one batch of an epoch.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::knn::{NeighbourIndex, Points, Restriction};
use crate::rng::Rng;

/// Half of a neighbour batch's groups come from the graph, half at random
/// (`make bench-train`, README).
pub const DEFAULT_RANDOM_CLASSES: f64 = 0.5;

/// Other-label neighbours kept per sample: enough for the rank window and class affinities.
pub const GRAPH_DEPTH: usize = 16;
/// Below this many training samples the graph's lists are exact (about 10 s a refresh at
/// 100,000 rows of 64 here); from it they come the way the index answers bands, which the
/// classes path does through each sample's candidate classes: a million rows in 200,000
/// classes took over 18 minutes to search exactly.
pub const EXACT_GRAPH_BELOW: usize = 100_000;
/// Below this many classes per batch slot (classes < 4·P), batches are composed per image.
const IMAGE_LEVEL_BELOW: usize = 4;

/// The neighbour graph of one refresh, as training-set indices.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// Per sample, its nearest other-label samples, nearest first.
    pub other: Vec<Vec<usize>>,
    /// Per class, the other classes by how many graph edges reach them, most first.
    pub class_neighbours: Vec<Vec<u32>>,
}

/// How a batch is put together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Composition {
    /// P: groups per batch (a class's chunk, or an image with same-label samples near it).
    pub groups: usize,
    /// K: samples per group.
    pub group_size: usize,
    /// Share of a batch's groups drawn at random rather than from the graph.
    pub random_share: f64,
    /// Other-label neighbours of a seed image passed over (likely duplicates or mislabels).
    pub skip_nearest: usize,
}

impl Composition {
    pub fn image_level(&self, classes: usize) -> bool {
        classes < IMAGE_LEVEL_BELOW * self.groups
    }

    /// Groups per batch chosen from the seed's neighbours (the seed's own group aside).
    fn neighbour_groups(&self) -> usize {
        let guided = (self.groups as f64 * (1.0 - self.random_share)).round() as usize;
        guided.saturating_sub(1).min(self.groups.saturating_sub(1))
    }
}

/// Class affinities from the graph's edges: per class, the classes its samples' neighbours
/// belong to, most frequent first (ties by class id, so the order is deterministic).
pub fn class_neighbours(labels: &[u32], other: &[Vec<usize>], classes: usize) -> Vec<Vec<u32>> {
    let mut counts: Vec<HashMap<u32, usize>> = vec![HashMap::new(); classes];
    for (i, list) in other.iter().enumerate() {
        for &j in list {
            if labels[j] != labels[i] {
                *counts[labels[i] as usize].entry(labels[j]).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .map(|c| {
            let mut ranked: Vec<(u32, usize)> = c.into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            ranked.into_iter().map(|(c, _)| c).collect()
        })
        .collect()
}

/// Batches covering every sample of `available` exactly once. `labels` is indexed by sample.
pub fn compose(
    labels: &[u32],
    available: &[usize],
    graph: &Graph,
    how: &Composition,
    rng: &mut Rng,
) -> Vec<Vec<usize>> {
    let classes = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
    let present = {
        let mut seen = vec![false; classes];
        available
            .iter()
            .for_each(|&i| seen[labels[i] as usize] = true);
        seen.iter().filter(|&&s| s).count()
    };
    if how.image_level(present) {
        compose_images(labels, available, graph, how, rng)
    } else {
        compose_classes(labels, available, graph, how, rng)
    }
}

/// Class level: chunks of K samples per class; a batch is a seed chunk, chunks of the seed
/// class's graph neighbours, and random chunks.
fn compose_classes(
    labels: &[u32],
    available: &[usize],
    graph: &Graph,
    how: &Composition,
    rng: &mut Rng,
) -> Vec<Vec<usize>> {
    let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for &i in available {
        by_class.entry(labels[i]).or_default().push(i);
    }
    let mut chunks: HashMap<u32, VecDeque<Vec<usize>>> = HashMap::new();
    let mut tickets: Vec<u32> = Vec::new();
    for (label, mut members) in by_class {
        rng.shuffle(&mut members);
        let mut parts: Vec<Vec<usize>> = members
            .chunks(how.group_size.max(2))
            .map(<[usize]>::to_vec)
            .collect();
        // A lone leftover joins the previous chunk so that it has a positive.
        if parts.len() > 1 && parts.last().is_some_and(|c| c.len() == 1) {
            let last = parts.pop().expect("checked");
            parts.last_mut().expect("checked").extend(last);
        }
        tickets.extend(std::iter::repeat_n(label, parts.len()));
        chunks.insert(label, parts.into());
    }
    let mut seeds = tickets.clone();
    rng.shuffle(&mut seeds);
    let mut fill = tickets;
    rng.shuffle(&mut fill);
    let mut fill_from = 0;
    let near = how.neighbour_groups();
    let mut batches = Vec::new();
    for seed in seeds {
        if chunks[&seed].is_empty() {
            continue;
        }
        let mut chosen = vec![seed];
        let neighbours = graph
            .class_neighbours
            .get(seed as usize)
            .map_or(&[][..], Vec::as_slice);
        for &c in neighbours {
            if chosen.len() > near {
                break;
            }
            if chunks.get(&c).is_some_and(|q| !q.is_empty()) && !chosen.contains(&c) {
                chosen.push(c);
            }
        }
        let mut j = fill_from;
        while chosen.len() < how.groups && j < fill.len() {
            let c = fill[j];
            if chunks[&c].is_empty() {
                if j == fill_from {
                    fill_from += 1;
                }
            } else if !chosen.contains(&c) {
                chosen.push(c);
            }
            j += 1;
        }
        let batch: Vec<usize> = chosen
            .iter()
            .flat_map(|c| chunks.get_mut(c).and_then(VecDeque::pop_front))
            .flatten()
            .collect();
        batches.push(batch);
    }
    batches
}

/// Image level: a group is an image with up to K−1 random unused samples of its label (random,
/// not nearest: near positives would leave batch-hard nothing to pull together); a batch is a
/// seed image's group, the groups of its other-label neighbours past the nearest
/// `skip_nearest`, and groups of random images.
fn compose_images(
    labels: &[u32],
    available: &[usize],
    graph: &Graph,
    how: &Composition,
    rng: &mut Rng,
) -> Vec<Vec<usize>> {
    let n = labels.len();
    let mut unused = vec![false; n];
    available.iter().for_each(|&i| unused[i] = true);
    let mut spare: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for &i in available {
        spare.entry(labels[i]).or_default().push(i);
    }
    for members in spare.values_mut() {
        rng.shuffle(members);
    }
    let mut seeds = available.to_vec();
    rng.shuffle(&mut seeds);
    let mut fill = seeds.clone();
    rng.shuffle(&mut fill);
    let mut fill_from = 0;
    let near = how.neighbour_groups();
    let k = how.group_size.max(2);
    let mut group = |x: usize, unused: &mut Vec<bool>, batch: &mut Vec<usize>| {
        unused[x] = false;
        batch.push(x);
        let pool = spare.get_mut(&labels[x]).expect("every label has a pool");
        let mut taken = 1;
        while taken < k {
            match pool.pop() {
                Some(j) if unused[j] => {
                    unused[j] = false;
                    batch.push(j);
                    taken += 1;
                }
                Some(_) => {}
                None => break,
            }
        }
    };
    let mut batches = Vec::new();
    for seed in seeds {
        if !unused[seed] {
            continue;
        }
        let mut batch = Vec::with_capacity(how.groups * k);
        let mut groups = 1;
        group(seed, &mut unused, &mut batch);
        let window = graph.other.get(seed).map_or(&[][..], Vec::as_slice);
        for &j in window.iter().skip(how.skip_nearest) {
            if groups > near {
                break;
            }
            if unused[j] {
                group(j, &mut unused, &mut batch);
                groups += 1;
            }
        }
        while groups < how.groups && fill_from < fill.len() {
            let j = fill[fill_from];
            fill_from += 1;
            if unused[j] {
                group(j, &mut unused, &mut batch);
                groups += 1;
            }
        }
        batches.push(batch);
    }
    batches
}

/// The graph of one refresh: each sample's `GRAPH_DEPTH + skip_nearest` nearest other-label
/// samples from `index` over `points`, and the class affinities they imply.
pub fn neighbour_graph(points: Points, index: &dyn NeighbourIndex, skip_nearest: usize) -> Graph {
    let all: Vec<usize> = (0..points.len()).collect();
    let depth = GRAPH_DEPTH + skip_nearest;
    let lists = if points.len() < EXACT_GRAPH_BELOW {
        index.search(&all, depth, Restriction::OtherLabels)
    } else {
        index.nearest_other_labels(&all, depth)
    };
    let other: Vec<Vec<usize>> = lists
        .into_iter()
        .map(|l| l.into_iter().map(|n| n.index).collect())
        .collect();
    let classes = points
        .labels
        .iter()
        .map(|&l| l as usize + 1)
        .max()
        .unwrap_or(0);
    let class_neighbours = class_neighbours(points.labels, &other, classes);
    Graph {
        other,
        class_neighbours,
    }
}

/// Samples that can be trained: those whose class has at least two (a lone sample can form no
/// positive pair), in index order.
pub fn eligible(labels: &[u32]) -> Vec<usize> {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for &l in labels {
        *counts.entry(l).or_default() += 1;
    }
    (0..labels.len())
        .filter(|&i| counts[&labels[i]] >= 2)
        .collect()
}

/// The random stream that composes the batches of `epoch` from its step `step` on (0 for the
/// whole epoch; a refresh inside an epoch recomposes the rest from the step it happens at).
pub fn epoch_rng(seed: u64, epoch: usize, step: usize) -> Rng {
    Rng::for_item(seed ^ 0x4E1B_BA7C, ((epoch as u64) << 20) + step as u64)
}

/// One epoch's batches over every eligible sample, as the trainer composes them at the start
/// of `epoch` from `graph` and `seed`.
pub fn compose_epoch(
    labels: &[u32],
    graph: &Graph,
    how: &Composition,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    compose(
        labels,
        &eligible(labels),
        graph,
        how,
        &mut epoch_rng(seed, epoch, 0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 40 classes of 6 on a ring: a sample's graph neighbours lie in the classes one and two
    /// steps away.
    fn ring_of_classes() -> (Vec<u32>, Graph) {
        let labels: Vec<u32> = (0..240).map(|i| (i / 6) as u32).collect();
        let other: Vec<Vec<usize>> = (0..240)
            .map(|i| {
                let c = labels[i] as usize;
                [c + 1, c + 39, c + 2]
                    .iter()
                    .flat_map(|d| {
                        let n = d % 40;
                        [n * 6 + i % 6, n * 6 + (i + 1) % 6]
                    })
                    .collect()
            })
            .collect();
        let class_neighbours = class_neighbours(&labels, &other, 40);
        let graph = Graph {
            other,
            class_neighbours,
        };
        (labels, graph)
    }

    fn ring_distance(a: u32, b: u32) -> u32 {
        let d = a.abs_diff(b);
        d.min(40 - d)
    }

    fn how(random_share: f64) -> Composition {
        Composition {
            groups: 4,
            group_size: 3,
            random_share,
            skip_nearest: 0,
        }
    }

    fn every_sample_once(batches: &[Vec<usize>], available: &[usize]) {
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, available);
    }

    #[test]
    fn class_level_batches_cover_every_sample_once_and_are_seeded() {
        let (labels, graph) = ring_of_classes();
        let all: Vec<usize> = (0..240).collect();
        let batches = compose(&labels, &all, &graph, &how(0.5), &mut Rng::new(3));
        every_sample_once(&batches, &all);
        assert_eq!(
            batches,
            compose(&labels, &all, &graph, &how(0.5), &mut Rng::new(3))
        );
        assert_ne!(
            batches,
            compose(&labels, &all, &graph, &how(0.5), &mut Rng::new(4))
        );
    }

    #[test]
    fn graph_neighbours_share_batches_and_random_ones_rarely_do() {
        let (labels, graph) = ring_of_classes();
        let all: Vec<usize> = (0..240).collect();
        // Share of the class pairs in batches that are graph neighbours.
        let neighbour_pairs = |share: f64| {
            let batches = compose(&labels, &all, &graph, &how(share), &mut Rng::new(9));
            let (mut near, mut total) = (0usize, 0usize);
            for b in &batches {
                let mut classes: Vec<u32> = b.iter().map(|&i| labels[i]).collect();
                classes.dedup();
                for (x, &a) in classes.iter().enumerate() {
                    for &c in &classes[x + 1..] {
                        total += 1;
                        near += (ring_distance(a, c) <= 2) as usize;
                    }
                }
            }
            near as f64 / total as f64
        };
        let guided = neighbour_pairs(0.25);
        let random = neighbour_pairs(1.0);
        assert!(guided > 0.35, "{guided} of guided pairs are neighbours");
        assert!(random < 0.2, "{random} of random pairs are neighbours");
    }

    #[test]
    fn image_level_groups_neighbours_past_the_skipped_ranks() {
        // 3 classes of 30: fewer than 4·P classes, so batches are built per image.
        let labels: Vec<u32> = (0..90).map(|i| (i % 3) as u32).collect();
        let other: Vec<Vec<usize>> = (0..90)
            .map(|i| (1..=8).map(|d| (i + d * 3 + 1) % 90).collect())
            .collect();
        let graph = Graph {
            class_neighbours: class_neighbours(&labels, &other, 3),
            other,
        };
        let how = Composition {
            groups: 3,
            group_size: 3,
            random_share: 0.0,
            skip_nearest: 2,
        };
        assert!(how.image_level(3));
        let all: Vec<usize> = (0..90).collect();
        let batches = compose(&labels, &all, &graph, &how, &mut Rng::new(1));
        every_sample_once(&batches, &all);
        assert_eq!(
            batches,
            compose(&labels, &all, &graph, &how, &mut Rng::new(1)),
            "deterministic for a seed"
        );
        let seed = batches[0][0];
        let label_of = |g: &[usize]| g.iter().map(|&i| labels[i]).collect::<Vec<_>>();
        assert_eq!(label_of(&batches[0][..3]), vec![labels[seed]; 3]);
        // The next group starts at the first neighbour past the two skipped ones.
        let neighbour = graph.other[seed][2];
        assert_eq!(batches[0][3], neighbour);
        assert_eq!(label_of(&batches[0][3..6]), vec![labels[neighbour]; 3]);
    }

    #[test]
    fn an_epoch_covers_the_eligible_samples_and_differs_by_epoch() {
        let (mut labels, graph) = ring_of_classes();
        labels[239] = 99; // a lone sample: never in a batch
        let how = how(0.5);
        let first = compose_epoch(&labels, &graph, &how, 5, 0);
        every_sample_once(&first, &eligible(&labels));
        assert!(!eligible(&labels).contains(&239));
        assert_eq!(first, compose_epoch(&labels, &graph, &how, 5, 0));
        assert_ne!(first, compose_epoch(&labels, &graph, &how, 5, 1));
    }

    #[test]
    fn the_graph_lists_nearest_other_label_samples_first() {
        // Classes on a line: 0 and 1 close, 2 far away.
        let data = [
            0.0f32, 1.0, 0.1, 0.995, 0.2, 0.98, 0.3, 0.954, 1.0, 0.0, 0.995, 0.1,
        ];
        let norm: Vec<f32> = data
            .chunks(2)
            .flat_map(|r| {
                let n = (r[0] * r[0] + r[1] * r[1]).sqrt();
                [r[0] / n, r[1] / n]
            })
            .collect();
        let labels = [0u32, 0, 1, 1, 2, 2];
        let points = Points {
            data: &norm,
            dim: 2,
            labels: &labels,
        };
        let graph = neighbour_graph(points, &crate::knn::ExactIndex::new(points), 0);
        assert_eq!(graph.other[0], vec![2, 3, 5, 4]);
        assert_eq!(graph.other[4], vec![3, 2, 1, 0]);
        // Every sample reaches all four others, so affinities tie and go by class id.
        assert_eq!(graph.class_neighbours[1], vec![0, 2]);
    }
}
