//! The miner: a function of (embeddings, labels, neighbour index, rules). Positives are chosen
//! exactly inside the anchor's class; each requested kind of negative becomes a distance band
//! relative to that anchor–positive pair, which the neighbour index answers (see `Band`).

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;
use serde::Serialize;

use super::rules::{MiningRules, NegativeOrder, PositiveRule, Selection};
use crate::definitions::{Triplet, TripletKind};
use crate::knn::{Band, NeighbourIndex, Points};
use crate::rng::Rng;

#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct MineStats {
    pub anchors: usize,
    pub anchors_with_triplets: usize,
    /// Anchors that got some, but fewer negatives than requested.
    pub anchors_short: usize,
    pub triplets: usize,
    pub per_kind: BTreeMap<TripletKind, usize>,
    /// Anchors that yielded no triplet, by reason.
    pub skipped: BTreeMap<String, usize>,
}

/// Slack on band edges in dot-product units: the index's scores and the exported distances are
/// computed differently, so candidates near an edge are fetched and then judged exactly.
const EDGE_SLACK: f32 = 1e-5;

/// Extra band members fetched per request: a candidate inside the slack that the exact
/// judgement then rejects (say a hard negative just inside the semi-hard band's near edge) must
/// not take the place of the true K-th member. Exact unless more than this many candidates
/// fall within the 2·10⁻⁵-wide edge zones of one band.
const EDGE_EXTRA: usize = 8;

/// Anchors are processed in chunks so that neighbour lists never exist for the whole corpus.
const ANCHOR_CHUNK: usize = 8192;
/// Band answers held at once, in entries (each band may hold up to its `k`): random order
/// asks for `--max-search-depth` per band, so a chunk's bands are searched in groups.
const BAND_ENTRIES: usize = 1 << 23;

/// Consecutive groups of `bands` whose requested entries stay within `budget` (a band larger
/// than the budget is a group of its own).
fn band_groups(bands: &[Band], budget: usize) -> impl Iterator<Item = &[Band]> {
    let mut rest = bands;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut total = 0;
        let end = rest
            .iter()
            .position(|b| {
                total += b.k;
                total > budget
            })
            .unwrap_or(rest.len())
            .max(1);
        let (group, tail) = rest.split_at(end);
        rest = tail;
        Some(group)
    })
}

pub fn mine(
    points: Points,
    index: &dyn NeighbourIndex,
    rules: &MiningRules,
) -> (Vec<Triplet>, MineStats) {
    let members = members_by_label(points.labels);
    let anchors = choose_anchors(points, &members, rules);
    mine_with(points, index, rules, &members, anchors)
}

/// [`mine`] for the given anchors only (a batch's, mined against the whole corpus).
pub fn mine_anchors(
    points: Points,
    index: &dyn NeighbourIndex,
    rules: &MiningRules,
    mut anchors: Vec<usize>,
) -> (Vec<Triplet>, MineStats) {
    anchors.sort_unstable();
    anchors.dedup();
    anchors.retain(|&a| a < points.len());
    mine_with(
        points,
        index,
        rules,
        &members_by_label(points.labels),
        anchors,
    )
}

fn mine_with(
    points: Points,
    index: &dyn NeighbourIndex,
    rules: &MiningRules,
    members: &HashMap<u32, Vec<usize>>,
    mut anchors: Vec<usize>,
) -> (Vec<Triplet>, MineStats) {
    // Class by class, so that a chunk's anchors are neighbours in the classes backend's
    // class-ordered copy of the points (8,192 anchors, 4 MB at 128-d, stay in cache while
    // each class is scored against them: 18.8 s at 100k against 21.3 s with 16,384); the
    // triplets are put back in anchor order below.
    anchors.sort_by_key(|&a| (points.labels[a], a));
    let mut stats = MineStats {
        anchors: anchors.len(),
        ..Default::default()
    };
    let mut triplets = Vec::new();
    let reach = index.band_reach(rules.max_depth);
    // One chunk (the trainer's in-batch mining, every step) has no progress worth showing.
    let bar = (anchors.len() > ANCHOR_CHUNK)
        .then(|| crate::progress::bar(anchors.len() as u64, "mining"));
    for chunk in anchors.chunks(ANCHOR_CHUNK) {
        // The guard's nearest other-label samples of each anchor, never its negatives, found
        // as the neighbour graph's are (on the classes path, in a few nearest classes: an
        // exact search is N² however few classes the bands search).
        let mut guarded = match rules.skip_nearest {
            0 => Vec::new(),
            skip => index.nearest_other_labels(chunk, skip),
        }
        .into_iter();
        let plans: Vec<AnchorPlan> = chunk
            .iter()
            .map(|&a| {
                let skipped = guarded.next().unwrap_or_default();
                (a, skipped.into_iter().map(|n| n.index).collect())
            })
            .collect::<Vec<(usize, Vec<usize>)>>()
            .into_par_iter()
            .map(|(a, skipped)| {
                AnchorPlan::new(points, a, a as u64, points.len(), skipped, members, rules)
            })
            .collect();
        let requests: Vec<Request> = plans
            .iter()
            .enumerate()
            .flat_map(|(p, plan)| plan.requests(p, rules))
            .collect();
        let bands: Vec<Band> = requests.iter().filter_map(|r| r.band).collect();
        let mut answers = band_groups(&bands, BAND_ENTRIES)
            .flat_map(|group| index.band_search(group, rules.start_depth, rules.max_depth))
            .collect::<Vec<_>>()
            .into_iter();
        let mut by_plan: Vec<Vec<(&Request, Option<Answer>)>> =
            plans.iter().map(|_| Vec::new()).collect();
        for r in &requests {
            let answer = r.band.map(|_| {
                let a = answers.next().expect("one answer per band");
                let anchor = points.row(plans[r.plan].anchor);
                Answer {
                    hits: a
                        .hits
                        .iter()
                        .map(|h| (h.index, rules.distance.between(anchor, points.row(h.index))))
                        .collect(),
                    complete: a.complete,
                }
            });
            by_plan[r.plan].push((r, answer));
        }
        let outcomes: Vec<Outcome> = plans
            .par_iter()
            .zip(by_plan)
            .map(|(plan, answered)| plan.assemble(points, &answered, rules, &reach))
            .collect();
        for outcome in outcomes {
            stats.record(&outcome);
            triplets.extend(outcome.triplets);
        }
        if let Some(bar) = &bar {
            bar.inc(chunk.len() as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    triplets.sort_by_key(|t| t.anchor);
    (triplets, stats)
}

impl MineStats {
    pub(super) fn record(&mut self, o: &Outcome) {
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

pub(super) fn members_by_label(labels: &[u32]) -> HashMap<u32, Vec<usize>> {
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
pub(super) struct AnchorPlan {
    /// The anchor's row in the points the plan was made from.
    pub(super) anchor: usize,
    /// The anchor's row in the whole corpus: what its random choices are drawn with, so a
    /// block of the corpus draws what the whole corpus would.
    id: u64,
    pairs: Vec<PairPlan>,
    seed: u64,
    /// Other-label samples the false-negative guard keeps out (`skip_nearest`).
    skipped: Vec<usize>,
}

struct PairPlan {
    positive: usize,
    d_ap: f32,
    /// Per selection, how many negatives; in strategy order.
    wanted: Vec<(Selection, usize)>,
}

/// n negatives of one selection for one anchor–positive pair; `band` is what the index is asked
/// (none for random easy negatives, which are sampled directly).
pub(super) struct Request {
    pub(super) plan: usize,
    pair: usize,
    selection: Selection,
    n: usize,
    pub(super) band: Option<Band>,
}

/// A band's members with their exact distance to the anchor, nearest first.
pub(super) struct Answer {
    pub(super) hits: Vec<(usize, f32)>,
    pub(super) complete: bool,
}

#[derive(Debug, Clone)]
pub(super) struct Outcome {
    pub(super) triplets: Vec<Triplet>,
    skip_reason: Option<String>,
    short: bool,
}

impl AnchorPlan {
    /// `points` holds every member of the anchor's class; `corpus_len` is the whole corpus's
    /// size (what "every negative" means).
    pub(super) fn new(
        points: Points,
        anchor: usize,
        id: u64,
        corpus_len: usize,
        skipped: Vec<usize>,
        members: &HashMap<u32, Vec<usize>>,
        rules: &MiningRules,
    ) -> Self {
        let seed = rules.seed;
        let mut rng = Rng::for_item(seed, id);
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
                if rules.negatives_per_anchor >= corpus_len {
                    // Every negative of each kind: weights share a count, not "everything".
                    wanted.iter_mut().for_each(|w| w.1 = corpus_len);
                } else {
                    for _ in 0..rules.negatives_per_anchor {
                        let slot = draw_weighted(&mut rng, &rules.strategy.parts);
                        wanted[slot].1 += 1;
                    }
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
            id,
            pairs,
            seed,
            skipped,
        }
    }

    /// The guard's rows, once a block's answers name them.
    pub(super) fn skip(&mut self, rows: Vec<usize>) {
        self.skipped = rows;
    }

    /// The band of each request: what the index is asked. The guard's rows are not known yet
    /// when a block of the corpus asks (they come in the same answers), so every band makes
    /// room for `skip_nearest` of them; extra members are farther ones, never taken before a
    /// nearer one.
    pub(super) fn requests(&self, plan: usize, rules: &MiningRules) -> Vec<Request> {
        let mut out = Vec::new();
        for (pair, p) in self.pairs.iter().enumerate() {
            for &(selection, n) in &p.wanted {
                let band = (!random_easy(selection, rules)).then(|| {
                    let (near, far) = selection.distance_range(p.d_ap, rules.margin);
                    let near = near.max(rules.floor(p.d_ap));
                    Band {
                        query: self.anchor,
                        min_dot: rules.distance.to_dot(far) - EDGE_SLACK,
                        max_dot: rules.distance.to_dot(near) + EDGE_SLACK,
                        // Random order draws from the band's first max_depth members.
                        k: if rules.negative_order == NegativeOrder::Nearest {
                            n + EDGE_EXTRA + rules.skip_nearest
                        } else {
                            rules.max_depth
                        },
                    }
                });
                out.push(Request {
                    plan,
                    pair,
                    selection,
                    n,
                    band,
                });
            }
        }
        out
    }

    /// This anchor's triplets from the answers to its requests; `points` is needed only for
    /// random easy negatives (requests without a band).
    pub(super) fn assemble(
        &self,
        points: Points,
        answered: &[(&Request, Option<Answer>)],
        rules: &MiningRules,
        reach: &str,
    ) -> Outcome {
        if self.pairs.is_empty() {
            let reason = "label has a single sample (no positive)".to_string();
            return Outcome {
                triplets: Vec::new(),
                skip_reason: Some(reason),
                short: false,
            };
        }
        let mut rng = Rng::for_item(self.seed ^ 0x4E47, self.id);
        let mut triplets: Vec<Triplet> = Vec::new();
        let mut short = false;
        let mut first_missing: Option<String> = None;
        for (request, answer) in answered {
            let pair = &self.pairs[request.pair];
            // Negatives already taken for this pair, and those the guard keeps out.
            let taken: Vec<usize> = triplets
                .iter()
                .filter(|t| t.positive == pair.positive)
                .map(|t| t.negative)
                .chain(self.skipped.iter().copied())
                .collect();
            let floor = rules.floor(pair.d_ap);
            let mut found: Vec<Triplet> = match answer {
                None => sample_easy(
                    points,
                    self.anchor,
                    pair.d_ap,
                    request.n,
                    &taken,
                    &mut rng,
                    rules,
                )
                .into_iter()
                .map(|n| exact_triplet(points, rules, self.anchor, pair.positive, n))
                .filter(|t| t.d_an >= floor)
                .collect(),
                Some(a) => a
                    .hits
                    .iter()
                    .filter(|(negative, _)| !taken.contains(negative))
                    .map(|&(negative, d_an)| Triplet {
                        anchor: self.anchor,
                        positive: pair.positive,
                        negative,
                        d_ap: pair.d_ap,
                        d_an,
                        kind: TripletKind::classify(pair.d_ap, d_an, rules.margin),
                    })
                    .filter(|t| request.selection.accepts(t.kind) && t.d_an >= floor)
                    .collect(),
            };
            if rules.negative_order == NegativeOrder::Random {
                rng.shuffle(&mut found);
            }
            found.truncate(request.n);
            if found.len() < request.n {
                short = true;
                if found.is_empty() && first_missing.is_none() {
                    let sel = request.selection;
                    first_missing = Some(match answer {
                        Some(a) if !a.complete => format!("no {sel} negative among {reach}"),
                        _ => format!("no {sel} negative exists"),
                    });
                }
            }
            triplets.extend(found);
        }
        if triplets.is_empty() {
            return Outcome {
                triplets,
                skip_reason: first_missing,
                short: false,
            };
        }
        Outcome {
            triplets,
            skip_reason: None,
            short,
        }
    }
}

pub(super) fn random_easy(selection: Selection, rules: &MiningRules) -> bool {
    selection == Selection::Kind(TripletKind::Easy) && rules.negative_order == NegativeOrder::Random
}

/// Distances recomputed from the vectors, so the exported kind agrees with what anyone
/// recomputing from `embeddings.npy` finds.
fn exact_triplet(
    points: Points,
    rules: &MiningRules,
    anchor: usize,
    positive: usize,
    negative: usize,
) -> Triplet {
    let a = points.row(anchor);
    let d_ap = rules.distance.between(a, points.row(positive));
    let d_an = rules.distance.between(a, points.row(negative));
    Triplet {
        anchor,
        positive,
        negative,
        d_ap,
        d_an,
        kind: TripletKind::classify(d_ap, d_an, rules.margin),
    }
}

/// Easy negatives in random order: uniform other-label samples beyond the margin, by rejection;
/// when 64·n draws did not find n, the rest are taken by a scan of every sample from a random
/// start, so that "no easy negative exists" is only said when none does.
fn sample_easy(
    points: Points,
    anchor: usize,
    d_ap: f32,
    n: usize,
    taken: &[usize],
    rng: &mut Rng,
    rules: &MiningRules,
) -> Vec<usize> {
    let usable = |j: usize, picked: &[usize]| {
        points.labels[j] != points.labels[anchor]
            && !taken.contains(&j)
            && !picked.contains(&j)
            && TripletKind::classify(
                d_ap,
                rules.distance.between(points.row(anchor), points.row(j)),
                rules.margin,
            ) == TripletKind::Easy
    };
    let mut picked = Vec::new();
    for _ in 0..64 * n {
        if picked.len() == n {
            break;
        }
        let j = rng.below(points.len());
        if usable(j, &picked) {
            picked.push(j);
        }
    }
    if picked.len() < n {
        let start = rng.below(points.len());
        for j in (start..points.len()).chain(0..start) {
            if picked.len() == n {
                break;
            }
            if usable(j, &picked) {
                picked.push(j);
            }
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

#[cfg(test)]
mod tests {
    //! The miner against a brute-force oracle: for every anchor, the farthest same-label
    //! positive and the K nearest other-label negatives of the requested kind, found by a
    //! plain loop over all triples; skip reasons and short counts follow from the same loop.
    use super::*;
    use crate::knn::testing::{brute_force, clustered};
    use crate::knn::{ExactIndex, Neighbour, Restriction};

    #[test]
    fn a_rare_easy_negative_is_found_where_rejection_sampling_gives_up() {
        // Anchor and positive at the same point; 2,000 negatives right beside them (hard) and
        // one far away (easy): 64 random draws miss it about 97% of the time.
        let dim = 2;
        let mut data = vec![1.0, 0.0, 1.0, 0.0];
        let mut labels = vec![0u32, 0];
        for _ in 0..2000 {
            data.extend([0.999, 0.0447]);
        }
        labels.extend(std::iter::repeat_n(1, 2000));
        data.extend([-1.0, 0.0]);
        labels.push(2);
        let points = Points {
            data: &data,
            dim,
            labels: &labels,
        };
        let rules = MiningRules::default();
        for seed in 0..5 {
            let picked = sample_easy(points, 0, 0.0, 1, &[], &mut Rng::new(seed), &rules);
            assert_eq!(picked, [labels.len() - 1], "seed {seed}");
        }
    }

    /// Exact neighbour lists with the default (widening) band search.
    struct Brute<'a>(Points<'a>);

    impl NeighbourIndex for Brute<'_> {
        fn search(&self, queries: &[usize], k: usize, r: Restriction) -> Vec<Vec<Neighbour>> {
            queries
                .iter()
                .map(|&q| brute_force(self.0, q, k, r))
                .collect()
        }

        fn describe(&self) -> serde_json::Value {
            "brute force".into()
        }
    }

    /// Overlapping clusters (every kind occurs) plus one singleton label.
    fn data() -> (Vec<f32>, Vec<u32>) {
        let (mut data, mut labels) = clustered(4, 6, 8, 0.7, 11);
        let (one, _) = clustered(1, 1, 8, 0.0, 99);
        data.extend(one);
        labels.push(99);
        (data, labels)
    }

    fn rules(strategy: &str, k: usize) -> MiningRules {
        MiningRules {
            strategy: strategy.parse().unwrap(),
            negatives_per_anchor: k,
            start_depth: 2,
            max_depth: 10_000,
            ..MiningRules::default()
        }
    }

    struct Expected {
        /// anchor → (positive, negatives nearest first)
        triplets: BTreeMap<usize, (usize, Vec<usize>)>,
        short: usize,
        skipped: BTreeMap<String, usize>,
    }

    fn oracle(points: Points, rules: &MiningRules) -> Expected {
        let selection = rules.strategy.parts[0].0;
        let d = |a: usize, b: usize| rules.distance.between(points.row(a), points.row(b));
        let mut out = Expected {
            triplets: BTreeMap::new(),
            short: 0,
            skipped: BTreeMap::new(),
        };
        for a in 0..points.len() {
            let positive = (0..points.len())
                .filter(|&p| p != a && points.labels[p] == points.labels[a])
                .max_by(|&x, &y| d(a, x).total_cmp(&d(a, y)));
            let Some(p) = positive else {
                *out.skipped
                    .entry("label has a single sample (no positive)".into())
                    .or_default() += 1;
                continue;
            };
            let mut negatives: Vec<usize> = (0..points.len())
                .filter(|&n| points.labels[n] != points.labels[a])
                .filter(|&n| {
                    selection.accepts(TripletKind::classify(d(a, p), d(a, n), rules.margin))
                })
                .collect();
            negatives.sort_by(|&x, &y| d(a, x).total_cmp(&d(a, y)).then(x.cmp(&y)));
            negatives.truncate(rules.negatives_per_anchor);
            match negatives.len() {
                0 => {
                    *out.skipped
                        .entry(format!("no {selection} negative exists"))
                        .or_default() += 1;
                }
                n => {
                    out.short += (n < rules.negatives_per_anchor) as usize;
                    out.triplets.insert(a, (p, negatives));
                }
            }
        }
        out
    }

    fn check(index: &dyn NeighbourIndex, points: Points, strategy: &str, k: usize) {
        let r = rules(strategy, k);
        let (mined, stats) = mine(points, index, &r);
        let want = oracle(points, &r);
        let mut got: BTreeMap<usize, (usize, Vec<usize>)> = BTreeMap::new();
        for t in &mined {
            let entry = got.entry(t.anchor).or_insert((t.positive, Vec::new()));
            assert_eq!(entry.0, t.positive, "one positive per anchor");
            entry.1.push(t.negative);
            assert_eq!(t.kind, TripletKind::classify(t.d_ap, t.d_an, r.margin));
        }
        for (a, (p, negatives)) in &want.triplets {
            let (gp, gn) = got
                .get(a)
                .unwrap_or_else(|| panic!("{strategy} K={k}: anchor {a} not mined"));
            assert_eq!(gp, p, "{strategy} K={k}: anchor {a} positive");
            let mut gs = gn.clone();
            gs.sort_unstable();
            let mut ws = negatives.clone();
            ws.sort_unstable();
            assert_eq!(gs, ws, "{strategy} K={k}: anchor {a} negatives");
        }
        assert_eq!(got.len(), want.triplets.len(), "{strategy} K={k}: anchors");
        assert_eq!(stats.anchors, points.len());
        assert_eq!(stats.anchors_with_triplets, want.triplets.len());
        assert_eq!(stats.anchors_short, want.short, "{strategy} K={k}: short");
        assert_eq!(stats.skipped, want.skipped, "{strategy} K={k}: skipped");
        let total: usize = want.triplets.values().map(|(_, n)| n.len()).sum();
        assert_eq!(stats.triplets, total);
    }

    #[test]
    fn every_kind_matches_the_brute_force_oracle() {
        let (data, labels) = data();
        let points = Points {
            data: &data,
            dim: 8,
            labels: &labels,
        };
        let exact = ExactIndex::new(points);
        for strategy in ["hard", "semihard", "easy", "violating"] {
            let want = oracle(points, &rules(strategy, 3));
            // The data must exercise the oracle: some anchors mined, and for K = 50 short ones.
            assert!(!want.triplets.is_empty(), "{strategy}: nothing to mine");
            for k in [1, 3, 50] {
                check(&Brute(points), points, strategy, k);
                check(&exact, points, strategy, k);
            }
            assert!(oracle(points, &rules(strategy, 50)).short > 0);
        }
        // Some anchor has no hard negative at all: that reason is counted.
        let hard = oracle(points, &rules("hard", 1));
        assert!(hard.skipped.contains_key("no hard negative exists"));
    }

    /// On the unit circle: a hard negative whose dot product lies within `EDGE_SLACK` of the
    /// positive's must not take the only place of the nearest semi-hard negative.
    #[test]
    fn a_candidate_inside_the_edge_slack_does_not_take_a_place() {
        let at = |theta: f64| [theta.cos() as f32, theta.sin() as f32];
        let angles = [0.0, 1.0, 1.0 - 5e-6, 1.05, 1.1];
        let data: Vec<f32> = angles.iter().flat_map(|&t| at(t)).collect();
        let labels = [0, 0, 1, 1, 1];
        let points = Points {
            data: &data,
            dim: 2,
            labels: &labels,
        };
        let exact = ExactIndex::new(points);
        let (mined, _) = mine(points, &exact, &rules("semihard", 1));
        let from_anchor: Vec<&Triplet> = mined.iter().filter(|t| t.anchor == 0).collect();
        assert_eq!(from_anchor.len(), 1, "{mined:?}");
        assert_eq!((from_anchor[0].positive, from_anchor[0].negative), (1, 3));
        assert_eq!(from_anchor[0].kind, TripletKind::Semihard);
    }

    #[test]
    fn a_depth_limit_is_reported_as_such() {
        let (data, labels) = data();
        let points = Points {
            data: &data,
            dim: 8,
            labels: &labels,
        };
        let r = MiningRules {
            start_depth: 1,
            max_depth: 2,
            ..rules("easy", 1)
        };
        let (mined, stats) = mine(points, &Brute(points), &r);
        let limited = "no easy negative among the 2 nearest other-label neighbours";
        assert!(
            stats.skipped.get(limited).copied().unwrap_or(0) > 0,
            "{:?}",
            stats.skipped
        );
        for t in mined {
            let near = brute_force(points, t.anchor, 2, Restriction::OtherLabels);
            assert!(near.iter().any(|n| n.index == t.negative));
        }
    }

    /// The false-negative guard holds for every negative: none among the anchor's
    /// `skip_nearest` nearest other-label samples, none closer than `negative_floor`·d(a,p);
    /// and it removes negatives that would be mined without it.
    #[test]
    fn the_false_negative_guard_holds_for_every_negative() {
        let (data, labels) = data();
        let points = Points {
            data: &data,
            dim: 8,
            labels: &labels,
        };
        for strategy in ["hard", "semihard", "violating"] {
            let plain = rules(strategy, 3);
            let guarded = MiningRules {
                skip_nearest: 2,
                negative_floor: 0.9,
                ..plain.clone()
            };
            let (unguarded, _) = mine(points, &Brute(points), &plain);
            let (mined, _) = mine(points, &Brute(points), &guarded);
            assert!(!mined.is_empty(), "{strategy}: the guard left nothing");
            for t in &mined {
                let nearest = brute_force(points, t.anchor, 2, Restriction::OtherLabels);
                assert!(
                    nearest.iter().all(|n| n.index != t.negative),
                    "{strategy}: {t:?} takes a skipped neighbour"
                );
                assert!(
                    t.d_an >= 0.9 * t.d_ap,
                    "{strategy}: {t:?} is under the floor"
                );
            }
            let kept: std::collections::HashSet<(usize, usize)> =
                mined.iter().map(|t| (t.anchor, t.negative)).collect();
            let dropped = unguarded
                .iter()
                .filter(|t| !kept.contains(&(t.anchor, t.negative)))
                .count();
            assert!(dropped > 0, "{strategy}: the guard changed nothing");
        }
    }

    #[test]
    fn band_groups_bound_the_entries_held_at_once() {
        let band = |k| Band {
            query: 0,
            min_dot: -1.0,
            max_dot: 1.0,
            k,
        };
        let bands = vec![band(4096), band(4096), band(4096), band(10_000), band(1)];
        let groups: Vec<usize> = band_groups(&bands, 8192).map(<[Band]>::len).collect();
        assert_eq!(groups, vec![2, 1, 1, 1]);
        assert_eq!(groups.iter().sum::<usize>(), bands.len());
    }

    /// Every positives rule (and random order, and a mixed strategy) against brute force:
    /// each pair's negatives are, in nearest order, exactly the K nearest other-label samples
    /// of its kind; in random order, K distinct ones of its kind; under a mix, each negative
    /// has one of the mix's kinds and a pair gets at most K. Easiest and hardest positives are
    /// the nearest and farthest same-label samples, and `all` takes every one.
    #[test]
    fn every_positives_rule_order_and_mix_matches_brute_force() {
        let (data, labels) = data();
        let points = Points {
            data: &data,
            dim: 8,
            labels: &labels,
        };
        let exact = ExactIndex::new(points);
        let d = |a: usize, b: usize| {
            crate::definitions::Distance::Euclidean.between(points.row(a), points.row(b))
        };
        let same = |a: usize| -> Vec<usize> {
            (0..points.len())
                .filter(|&p| p != a && labels[p] == labels[a])
                .collect()
        };
        let in_band = |a: usize, p: usize, strategy: &str| -> Vec<usize> {
            let selection = rules(strategy, 1).strategy.parts[0].0;
            let mut n: Vec<usize> = (0..points.len())
                .filter(|&n| labels[n] != labels[a])
                .filter(|&n| selection.accepts(TripletKind::classify(d(a, p), d(a, n), 0.2)))
                .collect();
            n.sort_by(|&x, &y| d(a, x).total_cmp(&d(a, y)).then(x.cmp(&y)));
            n
        };
        for positives in [
            PositiveRule::Hardest,
            PositiveRule::Easiest,
            PositiveRule::Random,
            PositiveRule::All,
        ] {
            for (strategy, order) in [
                ("semihard", NegativeOrder::Nearest),
                ("violating", NegativeOrder::Nearest),
                ("semihard", NegativeOrder::Random),
            ] {
                let r = MiningRules {
                    positives,
                    negative_order: order,
                    ..rules(strategy, 2)
                };
                let (mined, _) = mine(points, &exact, &r);
                assert!(!mined.is_empty(), "{positives:?} {strategy}");
                let mut pairs: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
                for t in &mined {
                    pairs
                        .entry((t.anchor, t.positive))
                        .or_default()
                        .push(t.negative);
                }
                for (&(a, p), negatives) in &pairs {
                    let dists: Vec<f32> = same(a).iter().map(|&q| d(a, q)).collect();
                    let d_ap = d(a, p);
                    match positives {
                        PositiveRule::Hardest => {
                            assert!(dists.iter().all(|&x| x <= d_ap + 1e-6))
                        }
                        PositiveRule::Easiest => {
                            assert!(dists.iter().all(|&x| x >= d_ap - 1e-6))
                        }
                        _ => {}
                    }
                    let band = in_band(a, p, strategy);
                    let want = band.len().min(2);
                    assert_eq!(negatives.len(), want, "{positives:?} {strategy} ({a},{p})");
                    match order {
                        NegativeOrder::Nearest => assert_eq!(negatives[..], band[..want]),
                        NegativeOrder::Random => {
                            assert!(negatives.iter().all(|n| band.contains(n)));
                            assert!(negatives[0] != negatives[want - 1] || want == 1);
                        }
                    }
                }
                if positives == PositiveRule::All {
                    let anchors: std::collections::BTreeSet<usize> =
                        pairs.keys().map(|k| k.0).collect();
                    for a in anchors {
                        let with = pairs.keys().filter(|k| k.0 == a).count();
                        let possible = same(a)
                            .iter()
                            .filter(|&&p| !in_band(a, p, strategy).is_empty())
                            .count();
                        assert_eq!(with, possible, "all positives of {a}");
                    }
                }
            }
        }
        // A mix: each negative has one of its kinds, at most K per pair.
        let r = rules("semihard=0.5,hard=0.5", 4);
        let (mined, _) = mine(points, &exact, &r);
        assert!(mined.iter().any(|t| t.kind == TripletKind::Hard));
        assert!(mined.iter().any(|t| t.kind == TripletKind::Semihard));
        assert!(mined.iter().all(|t| t.kind != TripletKind::Easy));
        let mut per_pair: BTreeMap<(usize, usize), usize> = BTreeMap::new();
        for t in &mined {
            *per_pair.entry((t.anchor, t.positive)).or_default() += 1;
        }
        assert!(per_pair.values().all(|&n| n <= 4));
    }
}
