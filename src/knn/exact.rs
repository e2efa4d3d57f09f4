//! Exact k-NN by blocked matrix multiply in libtorch: a block of queries against a block of the
//! corpus at a time, merging top-k lists, so memory is bounded by the block sizes and an N×N
//! matrix never exists.

use std::collections::HashMap;

use tch::{Device, Tensor};

use super::{Band, BandHits, Neighbour, NeighbourIndex, Points, Restriction};

pub struct ExactIndex {
    data: Tensor,
    labels: Tensor,
    /// Host copies: which cells of a score block to ban is decided here, cell by cell,
    /// because a class is small next to a block and elementwise passes over it are the cost.
    host_labels: Vec<u32>,
    members: HashMap<u32, Vec<usize>>,
    n: usize,
    query_block: usize,
    corpus_block: usize,
}

impl ExactIndex {
    /// Copies the points to `device`. `query_block × corpus_block` scores are live at once.
    pub fn new(points: Points, device: Device) -> Self {
        let n = points.len() as i64;
        let data = Tensor::from_slice(points.data)
            .view([n, points.dim as i64])
            .to_device(device);
        let labels: Vec<i64> = points.labels.iter().map(|&l| l as i64).collect();
        let labels = Tensor::from_slice(&labels).to_device(device);
        let mut members: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, &l) in points.labels.iter().enumerate() {
            members.entry(l).or_default().push(i);
        }
        ExactIndex {
            data,
            labels,
            host_labels: points.labels.to_vec(),
            members,
            n: points.len(),
            query_block: 1024,
            corpus_block: 32768,
        }
    }

    pub fn with_blocks(mut self, query_block: usize, corpus_block: usize) -> Self {
        self.query_block = query_block.max(1);
        self.corpus_block = corpus_block.max(1);
        self
    }

    /// (row, column) cells of a `queries × [start, start + len)` block that the restriction
    /// bans, for the restrictions that ban few cells (the query itself, its own class).
    fn banned_cells(
        &self,
        queries: &[usize],
        start: usize,
        len: usize,
        restriction: Restriction,
    ) -> (Vec<i64>, Vec<i64>) {
        let (mut rows, mut cols) = (Vec::new(), Vec::new());
        let end = start + len;
        for (row, &q) in queries.iter().enumerate() {
            let own: &[usize] = match restriction {
                Restriction::OtherLabels => &self.members[&self.host_labels[q]],
                _ => std::slice::from_ref(&q),
            };
            let from = own.partition_point(|&j| j < start);
            for &j in own[from..].iter().take_while(|&&j| j < end) {
                rows.push(row as i64);
                cols.push((j - start) as i64);
            }
        }
        (rows, cols)
    }

    /// Top-k of one block of queries over the whole corpus. With `ceiling` (each query's
    /// largest allowed dot product, `queries.len() × 1`) scores above it do not count.
    fn search_block(
        &self,
        queries: &[usize],
        k: usize,
        restriction: Restriction,
        ceiling: Option<&Tensor>,
    ) -> Vec<Vec<Neighbour>> {
        let device = self.data.device();
        let ids: Vec<i64> = queries.iter().map(|&q| q as i64).collect();
        let ids = Tensor::from_slice(&ids).to_device(device);
        let q = self.data.index_select(0, &ids);
        let banned_value = Tensor::from(f32::NEG_INFINITY).to_device(device);
        let mut best: Option<(Tensor, Tensor)> = None;
        for start in (0..self.n).step_by(self.corpus_block) {
            let len = self.corpus_block.min(self.n - start);
            let mut scores = q.matmul(&self.data.narrow(0, start as i64, len as i64).tr());
            if restriction == Restriction::SameLabel {
                let q_labels = self.labels.index_select(0, &ids).unsqueeze(1);
                let other = q_labels
                    .ne_tensor(&self.labels.narrow(0, start as i64, len as i64).unsqueeze(0));
                let _ = scores.masked_fill_(&other, f64::NEG_INFINITY);
            }
            let (rows, cols) = self.banned_cells(queries, start, len, restriction);
            if !rows.is_empty() {
                let rows = Tensor::from_slice(&rows).to_device(device);
                let cols = Tensor::from_slice(&cols).to_device(device);
                let _ = scores.index_put_(&[Some(rows), Some(cols)], &banned_value, false);
            }
            if let Some(ceiling) = ceiling {
                let above = scores.gt_tensor(ceiling);
                let _ = scores.masked_fill_(&above, f64::NEG_INFINITY);
            }
            let (vals, idx) = scores.topk(k.min(len) as i64, 1, true, true);
            let idx = idx + start as i64;
            best = Some(match best {
                None => (vals, idx),
                Some((bv, bi)) => {
                    let vals = Tensor::cat(&[bv, vals], 1);
                    let idx = Tensor::cat(&[bi, idx], 1);
                    let keep = k.min(vals.size()[1] as usize) as i64;
                    let (v, pos) = vals.topk(keep, 1, true, true);
                    (v, idx.gather(1, &pos, false))
                }
            });
        }
        let (vals, idx) = best.expect("the corpus is not empty");
        let width = vals.size()[1] as usize;
        let vals = Vec::<f32>::try_from(vals.to_device(Device::Cpu).contiguous().view([-1]))
            .expect("float scores");
        let idx = Vec::<i64>::try_from(idx.to_device(Device::Cpu).contiguous().view([-1]))
            .expect("int64 indices");
        vals.chunks(width)
            .zip(idx.chunks(width))
            .map(|(v, i)| {
                v.iter()
                    .zip(i)
                    .filter(|(v, _)| v.is_finite())
                    .map(|(&dot, &index)| Neighbour {
                        index: index as usize,
                        dot,
                    })
                    .collect()
            })
            .collect()
    }
}

impl NeighbourIndex for ExactIndex {
    fn search(&self, queries: &[usize], k: usize, restriction: Restriction) -> Vec<Vec<Neighbour>> {
        if k == 0 || queries.is_empty() {
            return vec![Vec::new(); queries.len()];
        }
        tch::no_grad(|| {
            queries
                .chunks(self.query_block)
                .flat_map(|b| self.search_block(b, k, restriction, None))
                .collect()
        })
    }

    /// One pass over the corpus tests every band exactly, whatever its depth.
    fn band_search(&self, bands: &[Band], _start_depth: usize, _max_depth: usize) -> Vec<BandHits> {
        let device = self.data.device();
        tch::no_grad(|| {
            bands
                .chunks(self.query_block)
                .flat_map(|block| {
                    let queries: Vec<usize> = block.iter().map(|b| b.query).collect();
                    let ceiling: Vec<f32> = block.iter().map(|b| b.max_dot).collect();
                    let ceiling = Tensor::from_slice(&ceiling).to_device(device).unsqueeze(1);
                    let k = block.iter().map(|b| b.k).max().unwrap_or(0).min(self.n);
                    let lists = if k == 0 {
                        vec![Vec::new(); block.len()]
                    } else {
                        self.search_block(&queries, k, Restriction::OtherLabels, Some(&ceiling))
                    };
                    // The k best under the ceiling: those below the floor mean the band has
                    // fewer than k members, and are dropped here rather than masked on device.
                    block
                        .iter()
                        .zip(lists)
                        .map(|(b, hits)| BandHits {
                            hits: hits
                                .into_iter()
                                .filter(|n| n.dot >= b.min_dot)
                                .take(b.k)
                                .collect(),
                            complete: true,
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        })
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": "exact",
            "device": format!("{:?}", self.data.device()),
            "query_block": self.query_block,
            "corpus_block": self.corpus_block,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{brute_force, clustered};
    use super::*;

    #[test]
    fn matches_brute_force_for_every_restriction_across_blocks() {
        let (data, labels) = clustered(7, 13, 16, 0.6, 5);
        let points = Points {
            data: &data,
            dim: 16,
            labels: &labels,
        };
        let index = ExactIndex::new(points, Device::Cpu).with_blocks(10, 17);
        let queries: Vec<usize> = (0..points.len()).step_by(3).collect();
        for restriction in [
            Restriction::Any,
            Restriction::OtherLabels,
            Restriction::SameLabel,
        ] {
            let got = index.search(&queries, 15, restriction);
            for (q, list) in queries.iter().zip(got) {
                let want = brute_force(points, *q, 15, restriction);
                let got_ids: Vec<_> = list.iter().map(|n| n.index).collect();
                let want_ids: Vec<_> = want.iter().map(|n| n.index).collect();
                assert_eq!(got_ids, want_ids, "query {q} {restriction:?}");
            }
        }
    }

    #[test]
    fn band_search_returns_the_nearest_band_members() {
        let (data, labels) = clustered(6, 10, 8, 0.8, 3);
        let points = Points {
            data: &data,
            dim: 8,
            labels: &labels,
        };
        let index = ExactIndex::new(points, Device::Cpu).with_blocks(7, 11);
        let bands: Vec<Band> = (0..points.len())
            .step_by(4)
            .map(|q| Band {
                query: q,
                min_dot: -0.2,
                max_dot: 0.3,
                k: 4,
            })
            .collect();
        for (band, got) in bands.iter().zip(index.band_search(&bands, 1, 1)) {
            let want: Vec<usize> =
                brute_force(points, band.query, usize::MAX, Restriction::OtherLabels)
                    .into_iter()
                    .filter(|n| n.dot >= band.min_dot && n.dot <= band.max_dot)
                    .take(4)
                    .map(|n| n.index)
                    .collect();
            assert_eq!(got.hits.iter().map(|n| n.index).collect::<Vec<_>>(), want);
            assert!(got.complete);
        }
    }

    #[test]
    fn short_list_when_fewer_samples_are_allowed() {
        let (data, labels) = clustered(2, 4, 8, 0.3, 1);
        let points = Points {
            data: &data,
            dim: 8,
            labels: &labels,
        };
        let got = ExactIndex::new(points, Device::Cpu).search(&[0], 50, Restriction::SameLabel);
        assert_eq!(got[0].len(), 3);
    }
}
