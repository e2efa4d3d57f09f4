//! Audit signals as pure functions of a k-NN graph (plus exact pixel hashes): duplicate groups,
//! label votes, outlier scores and class statistics. No libtorch here.

use std::collections::{BTreeMap, HashMap};

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

/// Duplicate groups: identical pixel hashes, plus k-NN edges with a cosine similarity of at
/// least `min_similarity`. Also returns how many groups the hashes alone form.
pub fn duplicate_groups(
    hashes: &[Option<String>],
    graph: &[Vec<Neighbour>],
    min_similarity: f32,
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
    for (i, list) in graph.iter().enumerate() {
        for nb in list.iter().filter(|nb| nb.dot >= min_similarity) {
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

/// The out-of-sample label vote of one sample among its neighbours (itself excluded).
#[derive(Debug, Clone, PartialEq)]
pub struct Vote {
    /// Fraction of neighbours sharing the sample's label: low is suspicious.
    pub agreement: f64,
    /// The neighbourhood's majority label (ties: the smallest id) and its share.
    pub majority: u32,
    pub support: f64,
}

pub fn label_vote(own: u32, neighbours: &[Neighbour], labels: &[u32]) -> Vote {
    if neighbours.is_empty() {
        return Vote {
            agreement: 1.0,
            majority: own,
            support: 0.0,
        };
    }
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for n in neighbours {
        *counts.entry(labels[n.index]).or_default() += 1;
    }
    let k = neighbours.len() as f64;
    let (&majority, &top) = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .expect("non-empty");
    Vote {
        agreement: counts.get(&own).copied().unwrap_or(0) as f64 / k,
        majority,
        support: top as f64 / k,
    }
}

/// Tukey's upper fence Q3 + 1.5·IQR of `values`.
pub fn upper_fence(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let pos = p * (v.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    };
    let (q1, q3) = (q(0.25), q(0.75));
    q3 + 1.5 * (q3 - q1)
}

/// The rank of each value as a fraction in [0, 1] (1 = the largest).
pub fn percentile_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let denom = (values.len().max(2) - 1) as f64;
    for (rank, i) in order.into_iter().enumerate() {
        ranks[i] = rank as f64 / denom;
    }
    ranks
}

/// Class centroids (unnormalised means) of row-major `data`.
pub fn centroids(data: &[f32], dim: usize, labels: &[u32]) -> HashMap<u32, (Vec<f64>, usize)> {
    let mut sums: HashMap<u32, (Vec<f64>, usize)> = HashMap::new();
    for (i, &l) in labels.iter().enumerate() {
        let entry = sums.entry(l).or_insert_with(|| (vec![0.0; dim], 0));
        for (s, v) in entry.0.iter_mut().zip(&data[i * dim..(i + 1) * dim]) {
            *s += *v as f64;
        }
        entry.1 += 1;
    }
    for (sum, n) in sums.values_mut() {
        sum.iter_mut().for_each(|s| *s /= *n as f64);
    }
    sums
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

    #[test]
    fn vote_excludes_nothing_it_is_not_given_and_breaks_ties_by_label() {
        let labels = [0, 1, 1, 2, 2];
        let n = |i| Neighbour { index: i, dot: 0.0 };
        let v = label_vote(0, &[n(1), n(2), n(3), n(4)], &labels);
        assert_eq!((v.agreement, v.majority, v.support), (0.0, 1, 0.5));
    }

    #[test]
    fn fence_and_ranks() {
        let v = [1.0, 2.0, 3.0, 4.0, 100.0];
        assert!(upper_fence(&v) < 100.0 && upper_fence(&v) > 4.0);
        assert_eq!(percentile_ranks(&v), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }
}
