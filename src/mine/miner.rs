//! The miner: a function of (embeddings, labels, neighbour index, rules). Positives are chosen
//! exactly inside the anchor's class; negatives come from other-label neighbours, searched
//! deeper (×4) while an anchor still lacks negatives of the requested kind.

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;
use serde::Serialize;

use super::rules::{MiningRules, NegativeOrder, PositiveRule, Selection};
use crate::definitions::{Distance, TripletKind};
use crate::knn::{Neighbour, NeighbourIndex, Points, Restriction};
use crate::rng::Rng;

/// Indices into the mined points, with the distances that decided the kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Triplet {
    pub anchor: usize,
    pub positive: usize,
    pub negative: usize,
    pub d_ap: f32,
    pub d_an: f32,
    pub kind: TripletKind,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MineStats {
    pub anchors: usize,
    pub anchors_with_triplets: usize,
    /// Anchors that got some, but fewer negatives than requested.
    pub anchors_short: usize,
    pub triplets: usize,
    pub per_kind: BTreeMap<TripletKind, usize>,
    /// Anchors that yielded no triplet, by reason.
    pub skipped: BTreeMap<String, usize>,
    /// How many anchors were settled at each search depth.
    pub settled_at_depth: BTreeMap<usize, usize>,
}

/// Anchors are processed in chunks so that neighbour lists never exist for the whole corpus.
const ANCHOR_CHUNK: usize = 8192;

pub fn mine(
    points: Points,
    index: &dyn NeighbourIndex,
    rules: &MiningRules,
) -> (Vec<Triplet>, MineStats) {
    let members = members_by_label(points.labels);
    let anchors = choose_anchors(points, &members, rules);
    let mut stats = MineStats {
        anchors: anchors.len(),
        ..Default::default()
    };
    let mut triplets = Vec::new();
    let bar = crate::progress::bar(anchors.len() as u64, "mining");
    for chunk in anchors.chunks(ANCHOR_CHUNK) {
        let plans: Vec<AnchorPlan> = chunk
            .par_iter()
            .map(|&a| AnchorPlan::new(points, a, &members, rules))
            .collect();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; plans.len()];
        let mut pending: Vec<usize> = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            if plan.pairs.is_empty() {
                outcomes[i] = Some(Outcome::skipped(
                    "label has a single sample (no positive)".into(),
                    0,
                ));
            } else {
                pending.push(i);
            }
        }
        let mut depth = rules
            .start_depth
            .max(2 * rules.negatives_per_anchor)
            .min(rules.max_depth);
        while !pending.is_empty() {
            let queries: Vec<usize> = pending.iter().map(|&i| plans[i].anchor).collect();
            let lists = index.search(&queries, depth, Restriction::OtherLabels);
            let last_round = depth >= rules.max_depth;
            let settled: Vec<(usize, Option<Outcome>)> = pending
                .par_iter()
                .zip(lists)
                .map(|(&i, list)| (i, plans[i].settle(points, &list, depth, last_round, rules)))
                .collect();
            pending.clear();
            for (i, outcome) in settled {
                match outcome {
                    Some(o) => outcomes[i] = Some(o),
                    None => pending.push(i),
                }
            }
            depth = (depth * 4).min(rules.max_depth);
        }
        for outcome in outcomes.into_iter().flatten() {
            stats.record(&outcome);
            triplets.extend(outcome.triplets);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    (triplets, stats)
}

impl MineStats {
    fn record(&mut self, o: &Outcome) {
        *self.settled_at_depth.entry(o.depth).or_default() += 1;
        if let Some(reason) = &o.skip_reason {
            *self.skipped.entry(reason.clone()).or_default() += 1;
            return;
        }
        self.anchors_with_triplets += 1;
        self.anchors_short += o.short as usize;
        self.triplets += o.triplets.len();
        for t in &o.triplets {
            *self.per_kind.entry(t.kind).or_default() += 1;
        }
    }
}

fn members_by_label(labels: &[u32]) -> HashMap<u32, Vec<usize>> {
    let mut members: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, &l) in labels.iter().enumerate() {
        members.entry(l).or_default().push(i);
    }
    members
}

/// All samples, or `anchors_per_class` of each class drawn with the seed; sorted.
fn choose_anchors(
    points: Points,
    members: &HashMap<u32, Vec<usize>>,
    rules: &MiningRules,
) -> Vec<usize> {
    let Some(per_class) = rules.anchors_per_class else {
        return (0..points.len()).collect();
    };
    let mut anchors: Vec<usize> = members
        .iter()
        .flat_map(|(&label, m)| {
            let mut m = m.clone();
            Rng::for_item(rules.seed ^ 0xA11C_0000, label as u64).shuffle(&mut m);
            m.truncate(per_class);
            m
        })
        .collect();
    anchors.sort_unstable();
    anchors
}

/// One anchor's positives, each with the selections its K negatives should come from.
struct AnchorPlan {
    anchor: usize,
    pairs: Vec<PairPlan>,
    seed: u64,
}

struct PairPlan {
    positive: usize,
    d_ap: f32,
    /// Per selection, how many negatives; in strategy order.
    wanted: Vec<(Selection, usize)>,
}

#[derive(Debug, Clone)]
struct Outcome {
    triplets: Vec<Triplet>,
    skip_reason: Option<String>,
    short: bool,
    depth: usize,
}

impl Outcome {
    fn skipped(reason: String, depth: usize) -> Self {
        Outcome {
            triplets: Vec::new(),
            skip_reason: Some(reason),
            short: false,
            depth,
        }
    }
}

impl AnchorPlan {
    fn new(
        points: Points,
        anchor: usize,
        members: &HashMap<u32, Vec<usize>>,
        rules: &MiningRules,
    ) -> Self {
        let seed = rules.seed;
        let mut rng = Rng::for_item(seed, anchor as u64);
        let d = |j: usize| rules.distance.between(points.row(anchor), points.row(j));
        let same: Vec<(usize, f32)> = members[&points.labels[anchor]]
            .iter()
            .filter(|&&j| j != anchor)
            .map(|&j| (j, d(j)))
            .collect();
        let positives: Vec<(usize, f32)> = match rules.positives {
            _ if same.is_empty() => Vec::new(),
            PositiveRule::Hardest => same
                .iter()
                .copied()
                .max_by(|x, y| x.1.total_cmp(&y.1))
                .into_iter()
                .collect(),
            PositiveRule::Easiest => same
                .iter()
                .copied()
                .min_by(|x, y| x.1.total_cmp(&y.1))
                .into_iter()
                .collect(),
            PositiveRule::Random => vec![same[rng.below(same.len())]],
            PositiveRule::All => same,
        };
        let pairs = positives
            .into_iter()
            .map(|(positive, d_ap)| {
                let mut wanted: Vec<(Selection, usize)> =
                    rules.strategy.parts.iter().map(|&(s, _)| (s, 0)).collect();
                for _ in 0..rules.negatives_per_anchor {
                    let slot = draw_weighted(&mut rng, &rules.strategy.parts);
                    wanted[slot].1 += 1;
                }
                wanted.retain(|&(_, n)| n > 0);
                PairPlan {
                    positive,
                    d_ap,
                    wanted,
                }
            })
            .collect();
        AnchorPlan {
            anchor,
            pairs,
            seed,
        }
    }

    /// Triplets of this anchor if `list` (other-label neighbours, nearest first, `depth` asked)
    /// is deep enough, or on the last round; `None` asks for a deeper search.
    fn settle(
        &self,
        points: Points,
        list: &[Neighbour],
        depth: usize,
        last_round: bool,
        rules: &MiningRules,
    ) -> Option<Outcome> {
        let exhaustive = list.len() < depth;
        let dist = rules.distance;
        let cand: Vec<(usize, f32)> = list
            .iter()
            .map(|n| (n.index, dist.from_dot(n.dot)))
            .collect();
        let farthest = cand.last().map_or(f32::NEG_INFINITY, |c| c.1);
        let complete =
            |sel: Selection, d_ap: f32| exhaustive || farthest > sel.upper(d_ap, rules.margin);
        let random_easy = |sel: Selection| {
            sel == Selection::Kind(TripletKind::Easy)
                && rules.negative_order == NegativeOrder::Random
        };
        let enough = self.pairs.iter().all(|p| {
            p.wanted.iter().all(|&(sel, n)| {
                random_easy(sel)
                    || complete(sel, p.d_ap)
                    || (rules.negative_order == NegativeOrder::Nearest
                        && cand
                            .iter()
                            .filter(|c| {
                                sel.accepts(TripletKind::classify(p.d_ap, c.1, rules.margin))
                            })
                            .count()
                            >= n)
            })
        });
        if !enough && !last_round {
            return None;
        }
        let mut rng = Rng::for_item(self.seed ^ 0x4E47, self.anchor as u64);
        let mut triplets = Vec::new();
        let mut short = false;
        let mut first_missing = None;
        for p in &self.pairs {
            let mut taken: Vec<usize> = Vec::new();
            for &(sel, n) in &p.wanted {
                let picked = if random_easy(sel) {
                    sample_easy(points, self.anchor, p.d_ap, n, &taken, &mut rng, rules)
                } else {
                    let mut matching: Vec<usize> = cand
                        .iter()
                        .filter(|c| {
                            !taken.contains(&c.0)
                                && sel.accepts(TripletKind::classify(p.d_ap, c.1, rules.margin))
                        })
                        .map(|c| c.0)
                        .collect();
                    if rules.negative_order == NegativeOrder::Random {
                        rng.shuffle(&mut matching);
                    }
                    matching.truncate(n);
                    matching
                };
                if picked.len() < n {
                    short = true;
                    first_missing.get_or_insert(sel);
                }
                taken.extend(&picked);
            }
            for negative in taken {
                triplets.push(exact_triplet(
                    points,
                    dist,
                    rules.margin,
                    self.anchor,
                    p.positive,
                    negative,
                ));
            }
        }
        if triplets.is_empty() {
            let sel = first_missing.expect("no triplet means some selection fell short");
            let reason = if exhaustive {
                format!("no {sel} negative exists")
            } else {
                format!("no {sel} negative among the {depth} nearest other-label neighbours")
            };
            return Some(Outcome::skipped(reason, depth));
        }
        Some(Outcome {
            triplets,
            skip_reason: None,
            short,
            depth,
        })
    }
}

/// Distances recomputed from the vectors, so the exported kind agrees with what anyone
/// recomputing from `embeddings.npy` finds.
fn exact_triplet(
    points: Points,
    dist: Distance,
    margin: f32,
    anchor: usize,
    positive: usize,
    negative: usize,
) -> Triplet {
    let a = points.row(anchor);
    let d_ap = dist.between(a, points.row(positive));
    let d_an = dist.between(a, points.row(negative));
    Triplet {
        anchor,
        positive,
        negative,
        d_ap,
        d_an,
        kind: TripletKind::classify(d_ap, d_an, margin),
    }
}

/// Easy negatives in random order: uniform other-label samples beyond the margin, by rejection.
fn sample_easy(
    points: Points,
    anchor: usize,
    d_ap: f32,
    n: usize,
    taken: &[usize],
    rng: &mut Rng,
    rules: &MiningRules,
) -> Vec<usize> {
    let mut picked = Vec::new();
    for _ in 0..64 * n {
        if picked.len() == n {
            break;
        }
        let j = rng.below(points.len());
        if points.labels[j] == points.labels[anchor] || taken.contains(&j) || picked.contains(&j) {
            continue;
        }
        let d_an = rules.distance.between(points.row(anchor), points.row(j));
        if TripletKind::classify(d_ap, d_an, rules.margin) == TripletKind::Easy {
            picked.push(j);
        }
    }
    picked
}

fn draw_weighted(rng: &mut Rng, parts: &[(Selection, f64)]) -> usize {
    let mut x = rng.next_f64();
    for (i, (_, w)) in parts.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    parts.len() - 1
}
