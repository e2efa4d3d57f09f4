//! Mining a corpus that is never whole in one process (shards on disk, tasks on a cluster),
//! in four engine-neutral steps that give exactly [`super::mine`]'s output with the exact
//! index:
//!
//! 1. [`questions`]: an *anchor block* (rows of whole classes, so positives need nothing
//!    from elsewhere) plans its anchors' positives and turns each requested kind into a band
//!    of dot products. The band is exact per corpus block because d(a,p) is known here.
//! 2. [`answer`]: one anchor block's questions against one *corpus block*: each band's `k`
//!    nearest members in that block, with their exact d(a,n).
//! 3. [`merge`]: answers of several corpus blocks for the same questions, keeping each band's
//!    `k` nearest. Associative, and de-duplicating by row id, so a retried block is harmless.
//! 4. [`finalise`]: the anchor block's triplets and statistics from the merged answers.
//!
//! Rows are named by their row in the whole corpus everywhere (`Block::ids`), which is also
//! what each anchor's random choices are seeded with.

use std::collections::HashMap;

use super::miner::{members_by_label, random_easy, AnchorPlan, Answer, MineStats};
use super::rules::MiningRules;
use crate::definitions::Triplet;
use crate::knn::{band_search_block, Band, Points};

/// Rows of the corpus held here: unit vectors, label ids (the same ids in every block) and
/// each row's row in the whole corpus.
#[derive(Debug, Clone, Copy)]
pub struct Block<'a> {
    pub points: Points<'a>,
    pub ids: &'a [usize],
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BlockError {
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Mismatch(String),
}

/// Each band's members found so far, flat: band `b` holds entries `offsets[b]..offsets[b+1]`
/// of `ids`, `dots` and `d_an`, nearest first (by dot product, then lower row id).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Answers {
    pub offsets: Vec<usize>,
    pub ids: Vec<usize>,
    pub dots: Vec<f32>,
    pub d_an: Vec<f32>,
}

impl Answers {
    fn push_band(&mut self, hits: impl IntoIterator<Item = (usize, f32, f32)>) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        for (id, dot, d_an) in hits {
            self.ids.push(id);
            self.dots.push(dot);
            self.d_an.push(d_an);
        }
        self.offsets.push(self.ids.len());
    }

    pub fn bands(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    fn band(&self, b: usize) -> impl Iterator<Item = (usize, f32, f32)> + '_ {
        (self.offsets[b]..self.offsets[b + 1]).map(|i| (self.ids[i], self.dots[i], self.d_an[i]))
    }

    /// Refuses answers that cannot belong to `questions` (another anchor block's, or cut).
    pub fn check(&self, questions: &[Band]) -> Result<(), BlockError> {
        let consistent = self.offsets.first() == Some(&0)
            && self.offsets.windows(2).all(|w| w[0] <= w[1])
            && self.offsets.last() == Some(&self.ids.len())
            && self.dots.len() == self.ids.len()
            && self.d_an.len() == self.ids.len();
        if !consistent || self.bands() != questions.len() {
            return Err(BlockError::Mismatch(format!(
                "answers for {} bands do not fit {} questions (answers of another anchor \
                 block, or damaged)",
                self.bands(),
                questions.len()
            )));
        }
        Ok(())
    }
}

/// Random easy negatives are drawn from the whole corpus at once, which no block holds.
fn supported(rules: &MiningRules) -> Result<(), BlockError> {
    if rules
        .strategy
        .parts
        .iter()
        .any(|&(s, _)| random_easy(s, rules))
    {
        return Err(BlockError::Unsupported(
            "easy negatives in random order are drawn from the whole corpus at once; over \
             blocks, mine them nearest first"
                .into(),
        ));
    }
    if rules.anchors_per_class.is_some() {
        return Err(BlockError::Unsupported(
            "anchors per class are not chosen over blocks; every row is an anchor".into(),
        ));
    }
    Ok(())
}

/// Every anchor's plan, in the block's order (class by class, as `mine` goes).
fn plans(anchors: Block, rules: &MiningRules, corpus_len: usize) -> Vec<AnchorPlan> {
    use rayon::prelude::*;
    let members = members_by_label(anchors.points.labels);
    let mut order: Vec<usize> = (0..anchors.points.len()).collect();
    order.sort_by_key(|&a| (anchors.points.labels[a], anchors.ids[a]));
    order
        .into_par_iter()
        .map(|a| {
            AnchorPlan::new(
                anchors.points,
                a,
                anchors.ids[a] as u64,
                corpus_len,
                Vec::new(),
                &members,
                rules,
            )
        })
        .collect()
}

/// The guard's band: the `skip_nearest` nearest other-label rows, whatever their distance.
fn guard_band(query: usize, rules: &MiningRules) -> Option<Band> {
    (rules.skip_nearest > 0).then_some(Band {
        query,
        min_dot: f32::NEG_INFINITY,
        max_dot: f32::INFINITY,
        k: rules.skip_nearest,
    })
}

/// Step 1: the bands an anchor block asks of every corpus block (`query` is a row of the
/// block): per anchor, the guard's band (with `skip_nearest`), then one per requested kind.
/// `anchors` must hold every row of each of its classes; `corpus_len` is the corpus's rows.
pub fn questions(
    anchors: Block,
    rules: &MiningRules,
    corpus_len: usize,
) -> Result<Vec<Band>, BlockError> {
    supported(rules)?;
    Ok(plans(anchors, rules, corpus_len)
        .iter()
        .enumerate()
        .flat_map(|(p, plan)| {
            guard_band(plan.anchor, rules)
                .into_iter()
                .chain(plan.requests(p, rules).into_iter().filter_map(|r| r.band))
        })
        .collect())
}

/// Step 2: `questions` (of `anchors`) answered among the rows of `corpus`.
pub fn answer(anchors: Block, questions: &[Band], corpus: Block, rules: &MiningRules) -> Answers {
    let found = band_search_block(
        anchors.points,
        anchors.ids,
        questions,
        corpus.points,
        corpus.ids,
    );
    let position: HashMap<usize, usize> = corpus
        .ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    let mut out = Answers::default();
    out.offsets.push(0);
    for (band, hits) in questions.iter().zip(found) {
        let anchor = anchors.points.row(band.query);
        out.push_band(hits.hits.iter().map(|h| {
            let row = corpus.points.row(position[&h.index]);
            (h.index, h.dot, rules.distance.between(anchor, row))
        }));
    }
    out
}

/// Step 3: the answers of several corpus blocks (or of merges) as one: each band's `k`
/// nearest, a row answered twice counted once.
pub fn merge<'a>(
    questions: &[Band],
    parts: impl IntoIterator<Item = &'a Answers>,
) -> Result<Answers, BlockError> {
    let parts: Vec<&Answers> = parts.into_iter().collect();
    for p in &parts {
        p.check(questions)?;
    }
    let mut out = Answers::default();
    out.offsets.push(0);
    for (b, band) in questions.iter().enumerate() {
        let mut hits: Vec<(usize, f32, f32)> = parts.iter().flat_map(|p| p.band(b)).collect();
        hits.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        hits.dedup_by_key(|h| h.0);
        hits.truncate(band.k);
        out.push_band(hits);
    }
    Ok(out)
}

/// Step 4: the anchor block's triplets (rows of the whole corpus, in anchor order) and
/// statistics, from its questions' merged answers over every corpus block.
pub fn finalise(
    anchors: Block,
    questions: &[Band],
    answers: &Answers,
    rules: &MiningRules,
    corpus_len: usize,
) -> Result<(Vec<Triplet>, MineStats), BlockError> {
    supported(rules)?;
    answers.check(questions)?;
    let plans = plans(anchors, rules, corpus_len);
    let mut next = 0..answers.bands();
    let mut stats = MineStats {
        anchors: plans.len(),
        ..Default::default()
    };
    let mut triplets = Vec::new();
    for (p, mut plan) in plans.into_iter().enumerate() {
        if let Some(guard) = guard_band(plan.anchor, rules) {
            let b = next.next().expect("the guard's band was asked");
            debug_assert_eq!(questions[b].k, guard.k);
            plan.skip(answers.band(b).map(|h| h.0).collect());
        }
        let requests = plan.requests(p, rules);
        let answered: Vec<_> = requests
            .iter()
            .map(|r| {
                let answer = r.band.map(|_| {
                    let b = next.next().expect("one answer per band");
                    Answer {
                        hits: answers.band(b).map(|(id, _, d_an)| (id, d_an)).collect(),
                        complete: true,
                    }
                });
                (r, answer)
            })
            .collect();
        let outcome = plan.assemble(anchors.points, &answered, rules, "every block");
        stats.record(&outcome);
        let local = |i: usize| anchors.ids[i];
        triplets.extend(outcome.triplets.into_iter().map(|t| Triplet {
            anchor: local(t.anchor),
            positive: local(t.positive),
            ..t
        }));
    }
    if next.next().is_some() {
        return Err(BlockError::Mismatch(
            "more answers than this anchor block asked for: the questions of another block".into(),
        ));
    }
    triplets.sort_by_key(|t| t.anchor);
    Ok((triplets, stats))
}

impl MineStats {
    /// Two blocks' statistics as one run's.
    pub fn add(&mut self, other: &MineStats) {
        self.anchors += other.anchors;
        self.anchors_with_triplets += other.anchors_with_triplets;
        self.anchors_short += other.anchors_short;
        self.triplets += other.triplets;
        for (k, n) in &other.per_kind {
            *self.per_kind.entry(*k).or_default() += n;
        }
        for (k, n) in &other.skipped {
            *self.skipped.entry(k.clone()).or_default() += n;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Blocks against the whole corpus: every grid of anchor and corpus blocks, every
    //! strategy, positives rule and the guard give `mine`'s triplets and statistics exactly.
    use super::*;
    use crate::knn::testing::clustered;
    use crate::knn::ExactIndex;
    use crate::mine::{mine, PositiveRule};

    /// Rows `rows` of `data` as a block of their own.
    struct Owned {
        data: Vec<f32>,
        labels: Vec<u32>,
        ids: Vec<usize>,
        dim: usize,
    }

    impl Owned {
        fn gather(data: &[f32], labels: &[u32], dim: usize, rows: Vec<usize>) -> Self {
            Owned {
                data: rows
                    .iter()
                    .flat_map(|&i| data[i * dim..(i + 1) * dim].iter().copied())
                    .collect(),
                labels: rows.iter().map(|&i| labels[i]).collect(),
                ids: rows,
                dim,
            }
        }

        fn block(&self) -> Block<'_> {
            Block {
                points: Points {
                    data: &self.data,
                    dim: self.dim,
                    labels: &self.labels,
                },
                ids: &self.ids,
            }
        }
    }

    fn blocked(
        data: &[f32],
        labels: &[u32],
        dim: usize,
        rules: &MiningRules,
        anchor_blocks: usize,
        corpus_blocks: usize,
    ) -> (Vec<Triplet>, MineStats) {
        let n = labels.len();
        // Anchor blocks hold whole classes (label modulo the grid); corpus blocks any rows.
        let anchors: Vec<Owned> = (0..anchor_blocks)
            .map(|b| {
                let rows = (0..n)
                    .filter(|&i| labels[i] as usize % anchor_blocks == b)
                    .collect();
                Owned::gather(data, labels, dim, rows)
            })
            .collect();
        let corpus: Vec<Owned> = (0..corpus_blocks)
            .map(|b| Owned::gather(data, labels, dim, (b..n).step_by(corpus_blocks).collect()))
            .collect();
        let mut triplets = Vec::new();
        let mut stats = MineStats::default();
        for a in &anchors {
            let q = questions(a.block(), rules, n).unwrap();
            let parts: Vec<Answers> = corpus
                .iter()
                .map(|c| answer(a.block(), &q, c.block(), rules))
                .collect();
            // Merged in two halves and once more: associativity, and a retried block.
            let (left, right) = parts.split_at(parts.len() / 2);
            let left = merge(&q, left).unwrap();
            let right = merge(&q, right).unwrap();
            let merged = merge(&q, [&left, &right, &parts[0]]).unwrap();
            let (t, s) = finalise(a.block(), &q, &merged, rules, n).unwrap();
            triplets.extend(t);
            stats.add(&s);
        }
        triplets.sort_by_key(|t| t.anchor);
        (triplets, stats)
    }

    #[test]
    fn every_grid_gives_mines_triplets() {
        let dim = 8;
        let (mut data, mut labels) = clustered(9, 7, dim, 0.7, 5);
        let (one, _) = clustered(1, 1, dim, 0.0, 99);
        data.extend(one);
        labels.push(99);
        let points = Points {
            data: &data,
            dim,
            labels: &labels,
        };
        let index = ExactIndex::new(points);
        for (strategy, k, positives, skip, floor) in [
            ("semihard", 1, PositiveRule::Hardest, 0, 0.0),
            ("hard", 3, PositiveRule::All, 2, 0.0),
            ("easy", 2, PositiveRule::Random, 0, 0.5),
            ("semihard=0.6,hard=0.4", 4, PositiveRule::Easiest, 1, 0.0),
            ("violating", labels.len(), PositiveRule::Hardest, 0, 0.0),
            ("any", 5, PositiveRule::Random, 3, 0.2),
        ] {
            let rules = MiningRules {
                strategy: strategy.parse().unwrap(),
                negatives_per_anchor: k,
                positives,
                skip_nearest: skip,
                negative_floor: floor,
                seed: 7,
                ..MiningRules::default()
            };
            let want = mine(points, &index, &rules);
            assert!(!want.0.is_empty(), "{strategy}");
            for (a, c) in [(1, 1), (4, 4), (8, 2), (3, 5)] {
                let got = blocked(&data, &labels, dim, &rules, a, c);
                assert_eq!(got.0, want.0, "{strategy} on {a}×{c}");
                assert_eq!(got.1, want.1, "{strategy} on {a}×{c}");
            }
        }
    }

    #[test]
    fn answers_of_other_questions_are_refused() {
        let dim = 4;
        let (data, labels) = clustered(3, 4, dim, 0.5, 1);
        let rows: Vec<usize> = (0..labels.len()).collect();
        let all = Owned::gather(&data, &labels, dim, rows);
        let rules = MiningRules::default();
        let q = questions(all.block(), &rules, labels.len()).unwrap();
        let a = answer(all.block(), &q, all.block(), &rules);
        let e = finalise(all.block(), &q[1..], &a, &rules, labels.len()).unwrap_err();
        assert!(matches!(e, BlockError::Mismatch(_)), "{e}");
        let random_easy = MiningRules {
            strategy: "easy".parse().unwrap(),
            negative_order: crate::mine::NegativeOrder::Random,
            ..MiningRules::default()
        };
        let e = questions(all.block(), &random_easy, labels.len()).unwrap_err();
        assert!(e.to_string().contains("nearest first"), "{e}");
    }
}
