//! Approximate band search through class centroids. An anchor's other-label neighbours in a
//! band lie almost all in the classes whose centroids are nearest to it: on 100,000 clustered
//! points in 5,000 classes, its 500 nearest class centroids held 99.3% of its true in-band
//! negatives. So each anchor is scored against every centroid, picks its `candidates`
//! nearest classes, and each class is then multiplied once with the anchors that picked it
//! (its members are one run of rows, so only anchors are gathered). The scores pass through
//! the exact backend's fused row scan. Classes that the triangle inequality rules out are never
//! picked, so a band is exact (and says so) whenever the cap cut no class it could reach.

use std::ops::Range;

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::exact::{BandRows, Row};
use super::{Band, BandHits, ExactIndex, Neighbour, NeighbourIndex, Points, Restriction};

/// Slack on the centroid bound for float32 rounding in the scores it is compared with.
const BOUND_SLACK: f32 = 1e-4;

/// From this many classes on, scoring every anchor against every centroid costs more than
/// the search itself (at 50,000 classes, 13 TFLOP for 1M anchors): each class keeps a short
/// list of its [`SHORTLIST_FACTOR`] × `candidates` nearest classes, and its anchors rank
/// only those.
const SHORTLIST_FROM: usize = 8192;
const SHORTLIST_FACTOR: usize = 4;

/// Anchor × centroid scores live at once.
const CENTROID_SCORES_IN_FLIGHT: usize = 8 << 20;

pub struct ClassIndex {
    exact: ExactIndex,
    /// The points with each class's members in one run of rows.
    grouped: Tensor,
    /// Sample index of each row of `grouped`.
    order: Vec<usize>,
    /// Rows of `grouped` per class.
    runs: Vec<Range<usize>>,
    /// Class of each sample, as an index into `runs`.
    class_of: Vec<usize>,
    /// Unnormalised class means, classes × dim.
    centroids: Tensor,
    /// Largest distance of a member from its class mean.
    radius: Vec<f32>,
    /// Present when there are more than [`SHORTLIST_FROM`] classes.
    shortlists: Option<Shortlists>,
    candidates: usize,
}

impl ClassIndex {
    /// Indexes `points` for searching the `candidates` nearest classes of each query class.
    pub fn new(points: Points, candidates: usize, device: Device) -> Self {
        let exact = ExactIndex::new(points, device);
        let mut labels: Vec<u32> = points.labels.to_vec();
        labels.sort_unstable();
        labels.dedup();
        let class_of: Vec<usize> = points
            .labels
            .iter()
            .map(|l| labels.binary_search(l).expect("own label"))
            .collect();
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by_key(|&i| (class_of[i], i));
        let mut runs = vec![0..0; labels.len()];
        let mut start = 0;
        while start < order.len() {
            let class = class_of[order[start]];
            let end = start + order[start..].partition_point(|&i| class_of[i] == class);
            runs[class] = start..end;
            start = end;
        }
        let dim = points.dim;
        let mut means = vec![0f32; labels.len() * dim];
        let mut radius = vec![0f32; labels.len()];
        for (class, run) in runs.iter().enumerate() {
            let mut sum = vec![0f64; dim];
            for &i in &order[run.clone()] {
                for (s, &x) in sum.iter_mut().zip(points.row(i)) {
                    *s += f64::from(x);
                }
            }
            let mean: Vec<f64> = sum.iter().map(|s| s / run.len() as f64).collect();
            radius[class] = order[run.clone()]
                .iter()
                .map(|&i| {
                    let squared: f64 = mean
                        .iter()
                        .zip(points.row(i))
                        .map(|(m, &x)| (f64::from(x) - m).powi(2))
                        .sum();
                    squared.sqrt() as f32
                })
                .fold(0.0, f32::max);
            for (slot, m) in means[class * dim..(class + 1) * dim].iter_mut().zip(&mean) {
                *slot = *m as f32;
            }
        }
        let ids: Vec<i64> = order.iter().map(|&i| i as i64).collect();
        let grouped = exact
            .data
            .index_select(0, &Tensor::from_slice(&ids).to_device(device));
        let centroids = Tensor::from_slice(&means)
            .view([labels.len() as i64, dim as i64])
            .to_device(device);
        let candidates = candidates.max(1);
        let length = SHORTLIST_FACTOR * candidates;
        let shortlists = (labels.len() > SHORTLIST_FROM && length + 1 < labels.len())
            .then(|| tch::no_grad(|| Shortlists::new(&centroids, &radius, length)));
        ClassIndex {
            exact,
            grouped,
            order,
            runs,
            class_of,
            centroids,
            radius,
            shortlists,
            candidates,
        }
    }

    /// Short lists of `length` classes whatever the number of classes (for tests of that path
    /// on small data).
    #[cfg(test)]
    fn with_shortlists(mut self, length: usize) -> Self {
        self.shortlists = Some(Shortlists::new(&self.centroids, &self.radius, length));
        self
    }

    pub fn classes(&self) -> usize {
        self.runs.len()
    }

    /// The rows that search each class (ascending), and whether each row searched every
    /// class its bands could reach. Each row's query is scored against every centroid; the
    /// triangle inequality (a·x ≤ a·μ + r for a member x of a class with mean μ and radius r)
    /// rules classes out, and the nearest `candidates` centroids of the rest are searched.
    fn pick_classes(&self, rows: &[Row]) -> (Vec<Vec<u32>>, Vec<bool>) {
        let device = self.exact.data.device();
        let classes = self.runs.len();
        let mut picked_by: Vec<Vec<u32>> = vec![Vec::new(); classes];
        let mut searched_all = vec![true; rows.len()];
        // Rows that share their centroids: blocks of any rows against every centroid, or
        // the rows of one class against that class's short list.
        let groups: Vec<(Vec<u32>, Option<usize>)> = match &self.shortlists {
            None => {
                let block = (CENTROID_SCORES_IN_FLIGHT / classes).max(1) as u32;
                (0..rows.len() as u32)
                    .step_by(block as usize)
                    .map(|start| {
                        (
                            (start..(start + block).min(rows.len() as u32)).collect(),
                            None,
                        )
                    })
                    .collect()
            }
            Some(_) => {
                let mut of_class: Vec<Vec<u32>> = vec![Vec::new(); classes];
                for (r, row) in (0u32..).zip(rows) {
                    of_class[self.class_of[row.query]].push(r);
                }
                of_class
                    .into_iter()
                    .enumerate()
                    .filter(|(_, ids)| !ids.is_empty())
                    .map(|(c, ids)| (ids, Some(c)))
                    .collect()
            }
        };
        // Plain slices for the worker threads (tensors are not `Sync`).
        let (class_of, radius, limit) = (&self.class_of[..], &self.radius[..], self.candidates);
        for (ids, class) in groups {
            let (listed, beyond): (Option<&[u32]>, f32) = match (&self.shortlists, class) {
                (Some(lists), Some(c)) => (Some(&lists.nearest[c][..]), lists.beyond[c]),
                _ => (None, f32::NEG_INFINITY),
            };
            let centroids = match listed {
                Some(list) => {
                    let list: Vec<i64> = list.iter().map(|&d| i64::from(d)).collect();
                    self.centroids
                        .index_select(0, &Tensor::from_slice(&list).to_device(device))
                }
                None => self.centroids.shallow_clone(),
            };
            let width = listed.map_or(classes, <[u32]>::len);
            let class_at = |s: usize| listed.map_or(s, |l| l[s] as usize);
            let queries: Vec<i64> = ids.iter().map(|&r| rows[r as usize].query as i64).collect();
            let scores = host_floats(
                &self
                    .exact
                    .data
                    .index_select(0, &Tensor::from_slice(&queries).to_device(device))
                    .mm(&centroids.tr()),
            );
            let picks: Vec<(Vec<usize>, bool)> = ids
                .par_iter()
                .zip(scores.par_chunks(width))
                .map(|(&r, scores)| {
                    let row = &rows[r as usize];
                    let own = class_of[row.query];
                    let eligible: Vec<usize> = (0..width)
                        .filter(|&s| {
                            let d = class_at(s);
                            d != own && scores[s] + radius[d] + BOUND_SLACK >= row.threshold
                        })
                        .collect();
                    // Nearest centroid first: ranking by the bound (adding the radius) lost
                    // recall on clustered data.
                    let (picked, capped) = nearest(eligible, limit, |s| scores[s]);
                    let whole = !capped && beyond + BOUND_SLACK < row.threshold;
                    (picked.into_iter().map(class_at).collect(), whole)
                })
                .collect();
            for (&r, (picked, whole)) in ids.iter().zip(picks) {
                searched_all[r as usize] = whole;
                for d in picked {
                    picked_by[d].push(r);
                }
            }
        }
        // Rows were grouped by class; each class's anchors go in ascending order.
        if self.shortlists.is_some() {
            for list in &mut picked_by {
                list.sort_unstable();
            }
        }
        (picked_by, searched_all)
    }
}

/// Each class's nearest classes by centroid, for corpora with too many classes to score
/// every anchor against every centroid.
struct Shortlists {
    nearest: Vec<Vec<u32>>,
    /// The largest bound on an anchor–member dot product over the classes left off a list:
    /// a band whose floor lies above it lost nothing to the list.
    beyond: Vec<f32>,
}

impl Shortlists {
    /// `length` nearest classes of each class. For anchor a of class c (mean μ_c, radius
    /// r_c) and member x of class d: a·x ≤ μ_c·μ_d + r_c‖μ_d‖ + r_d.
    fn new(centroids: &Tensor, radius: &[f32], length: usize) -> Self {
        let classes = radius.len();
        let norms: Vec<f32> = host_floats(
            &centroids
                .square()
                .sum_dim_intlist(1, false, Kind::Float)
                .sqrt(),
        );
        let block = (CENTROID_SCORES_IN_FLIGHT / classes).max(1);
        let mut lists = Vec::with_capacity(classes);
        let mut beyond = Vec::with_capacity(classes);
        for start in (0..classes).step_by(block) {
            let len = block.min(classes - start);
            let scores = host_floats(
                &centroids
                    .narrow(0, start as i64, len as i64)
                    .mm(&centroids.tr()),
            );
            let block_lists: Vec<(Vec<u32>, f32)> = (start..start + len)
                .into_par_iter()
                .zip(scores.par_chunks(classes))
                .map(|(c, scores)| {
                    let others: Vec<usize> = (0..classes).filter(|&d| d != c).collect();
                    let (mut list, _) = nearest(others, length, |d| scores[d]);
                    list.sort_unstable();
                    let mut listed = vec![false; classes];
                    for &d in &list {
                        listed[d] = true;
                    }
                    let bound = (0..classes)
                        .filter(|&d| d != c && !listed[d])
                        .map(|d| scores[d] + radius[c] * norms[d] + radius[d])
                        .fold(f32::NEG_INFINITY, f32::max);
                    (list.into_iter().map(|d| d as u32).collect(), bound)
                })
                .collect();
            for (list, bound) in block_lists {
                lists.push(list);
                beyond.push(bound);
            }
        }
        Shortlists {
            nearest: lists,
            beyond,
        }
    }
}

/// The `limit` items of highest `score` (all when there are fewer), and whether any was cut.
fn nearest(
    mut items: Vec<usize>,
    limit: usize,
    score: impl Fn(usize) -> f32,
) -> (Vec<usize>, bool) {
    let capped = items.len() > limit;
    if capped {
        items.select_nth_unstable_by(limit - 1, |&a, &b| score(b).total_cmp(&score(a)));
        items.truncate(limit);
    }
    (items, capped)
}

impl NeighbourIndex for ClassIndex {
    /// k-NN lists are exact: only band search goes through the classes.
    fn search(&self, queries: &[usize], k: usize, restriction: Restriction) -> Vec<Vec<Neighbour>> {
        self.exact.search(queries, k, restriction)
    }

    /// Two passes: each anchor picks its candidate classes, then each candidate class is
    /// multiplied once with the anchors that picked it (its members are one run of rows, so
    /// only the anchors are gathered) and the scores go through those anchors' rows.
    fn band_search(&self, bands: &[Band], _start_depth: usize, _max_depth: usize) -> Vec<BandHits> {
        let mut band_rows = BandRows::new(bands);
        let device = self.exact.data.device();
        let labels = &self.exact.labels[..];
        let (picked_by, searched_all) = tch::no_grad(|| self.pick_classes(&band_rows.rows));
        // Each row's ceiling and threshold, apart from the rows: most of a class's scores are
        // rejected by them, and the rows' collectors stay out of the cache.
        let mut bounds: Vec<(f32, f32)> = band_rows
            .rows
            .iter()
            .map(|row| (row.ceiling, row.threshold))
            .collect();
        tch::no_grad(|| {
            // The queries once, so that each class gathers its anchors from a cached block.
            let queries: Vec<i64> = band_rows.rows.iter().map(|r| r.query as i64).collect();
            let queries = self
                .exact
                .data
                .index_select(0, &Tensor::from_slice(&queries).to_device(device));
            for (class, rows) in picked_by.iter().enumerate() {
                if rows.is_empty() {
                    continue;
                }
                let run = self.runs[class].clone();
                let columns = &self.order[run.clone()];
                let ids: Vec<i64> = rows.iter().map(|&r| i64::from(r)).collect();
                let anchors = queries.index_select(0, &Tensor::from_slice(&ids).to_device(device));
                let members = self.grouped.narrow(0, run.start as i64, run.len() as i64);
                let scores = host_floats(&anchors.mm(&members.tr()));
                for (&r, scores) in rows.iter().zip(scores.chunks(run.len())) {
                    let r = r as usize;
                    let (ceiling, threshold) = bounds[r];
                    if scores.iter().all(|&x| x < threshold || x > ceiling) {
                        continue;
                    }
                    let row = &mut band_rows.rows[r];
                    row.scan(scores, |c| columns[c], labels);
                    bounds[r].1 = row.threshold;
                }
            }
        });
        band_rows.answers(bands, |r| searched_all[r])
    }

    /// Large enough that each class meets many anchors per call, so that its matrix multiply
    /// is not a sliver.
    fn anchor_chunk(&self) -> usize {
        (self.runs.len() * 8).clamp(8192, 131_072)
    }

    fn band_reach(&self, _max_depth: usize) -> String {
        format!("the members of the {} nearest classes", self.candidates)
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": "classes",
            "device": format!("{:?}", self.exact.data.device()),
            "classes": self.runs.len(),
            "candidate_classes": self.candidates,
        })
    }
}

/// A float tensor's values on the host, in row-major order.
fn host_floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(
        t.to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .view([-1]),
    )
    .expect("float scores")
}

#[cfg(test)]
mod tests {
    use super::super::testing::{brute_force, clustered};
    use super::*;

    fn semi_hard_bands(points: Points, width: f32, k: usize) -> Vec<Band> {
        (0..points.len())
            .step_by(3)
            .map(|q| {
                let nearest = brute_force(points, q, 1, Restriction::OtherLabels)[0].dot;
                Band {
                    query: q,
                    min_dot: nearest - 2.0 * width,
                    max_dot: nearest - width,
                    k,
                }
            })
            .collect()
    }

    fn band_oracle(points: Points, band: &Band) -> Vec<usize> {
        brute_force(points, band.query, usize::MAX, Restriction::OtherLabels)
            .into_iter()
            .filter(|n| n.dot >= band.min_dot && n.dot <= band.max_dot)
            .take(band.k)
            .map(|n| n.index)
            .collect()
    }

    #[test]
    fn every_class_searched_is_exact_and_says_so() {
        let (data, labels) = clustered(9, 11, 16, 0.7, 8);
        let points = Points {
            data: &data,
            dim: 16,
            labels: &labels,
        };
        let bands = semi_hard_bands(points, 0.05, 4);
        for index in [
            ClassIndex::new(points, 9, Device::Cpu),
            ClassIndex::new(points, 9, Device::Cpu).with_shortlists(8),
        ] {
            for (band, got) in bands.iter().zip(index.band_search(&bands, 1, 1)) {
                let got_ids: Vec<usize> = got.hits.iter().map(|n| n.index).collect();
                assert_eq!(got_ids, band_oracle(points, band), "{band:?}");
                assert!(got.complete);
            }
        }
    }

    #[test]
    fn nearest_classes_keep_most_band_members_and_flag_what_the_cap_may_miss() {
        let (data, labels) = clustered(60, 12, 24, 0.9, 2);
        let points = Points {
            data: &data,
            dim: 24,
            labels: &labels,
        };
        let every_centroid = ClassIndex::new(points, 15, Device::Cpu);
        assert!(every_centroid.shortlists.is_none());
        assert_recall_and_honesty(points, &every_centroid);
        let short_lists = ClassIndex::new(points, 15, Device::Cpu).with_shortlists(30);
        assert_recall_and_honesty(points, &short_lists);
    }

    /// Over 90% of the true band members found, every band that says it is complete exact,
    /// and the cap binding somewhere (else the test measures nothing).
    fn assert_recall_and_honesty(points: Points, index: &ClassIndex) {
        let bands = semi_hard_bands(points, 0.05, 5);
        let (mut found, mut wanted, mut incomplete) = (0, 0, 0);
        for (band, got) in bands.iter().zip(index.band_search(&bands, 1, 1)) {
            let truth = band_oracle(points, band);
            let got_ids: Vec<usize> = got.hits.iter().map(|n| n.index).collect();
            found += truth.iter().filter(|i| got_ids.contains(i)).count();
            wanted += truth.len();
            if got.complete {
                assert_eq!(got_ids, truth, "complete but wrong: {band:?}");
            } else {
                incomplete += 1;
            }
            for n in &got.hits {
                assert!(n.dot >= band.min_dot && n.dot <= band.max_dot);
            }
        }
        let recall = found as f64 / wanted as f64;
        assert!(wanted > 500, "too few band members to measure: {wanted}");
        eprintln!(
            "recall {recall:.3}, {incomplete} of {} bands capped",
            bands.len()
        );
        assert!(recall > 0.9, "recall {recall:.3} from 15 of 60 classes");
        assert!(
            incomplete > 0,
            "the cap never bound: the test measures nothing"
        );
    }
}
