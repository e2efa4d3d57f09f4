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
//! The classes path goes the same way with one step more: [`pick`] chooses, from a
//! [`ClassLevel`] built once over every class's mean and radius (broadcast to every task),
//! the classes each anchor's bands search, and [`answer_picked`] searches only their members
//! in a corpus block. It gives exactly `mine`'s output with the classes index.
//!
//! Rows are named by their row in the whole corpus everywhere (`Block::ids`), which is also
//! what each anchor's random choices are seeded with.

use super::miner::{members_by_label, random_easy, AnchorPlan, Answer, MineStats};
use super::rules::MiningRules;
use crate::definitions::Triplet;
use crate::knn::{
    band_search_block, band_search_picked, class_summary, classes_reach, Band, BandHits,
    ClassLevel, ClassPicks, Points,
};

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
    /// A class with rows in two blocks (by their numbers).
    #[error("class {class} has rows in blocks {} and {}; blocks must hold whole classes", blocks[0], blocks[1])]
    SplitClass { class: usize, blocks: [usize; 2] },
}

/// Each band's members found so far, flat: band `b` holds entries `offsets[b]..offsets[b+1]`
/// of `ids`, `dots` and `d_an`, nearest first (by dot product, then lower row id), and
/// `complete[b]` says that no nearer band member was missed (always, with the exact index).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Answers {
    pub offsets: Vec<usize>,
    pub ids: Vec<usize>,
    pub dots: Vec<f32>,
    pub d_an: Vec<f32>,
    pub complete: Vec<bool>,
}

impl Answers {
    fn push_band(&mut self, hits: impl IntoIterator<Item = (usize, f32, f32)>, complete: bool) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        for (id, dot, d_an) in hits {
            self.ids.push(id);
            self.dots.push(dot);
            self.d_an.push(d_an);
        }
        self.offsets.push(self.ids.len());
        self.complete.push(complete);
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
            && self.d_an.len() == self.ids.len()
            && self.complete.len() == self.bands();
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
    answers_of(anchors, questions, found, corpus, rules)
}

/// The class level's inputs from one block of whole classes: each class's label id, mean and
/// radius (over its rows in corpus order, as the in-memory index sums them), classes
/// ascending, `means` classes × dim.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClassSummaries {
    pub classes: Vec<u32>,
    pub means: Vec<f32>,
    pub radius: Vec<f32>,
}

/// Step 0 on the classes path, per block: its classes' summaries, which a [`LevelBuilder`]
/// gathers from every block into the level.
pub fn class_summaries(block: Block) -> ClassSummaries {
    let (labels, dim) = (block.points.labels, block.points.dim);
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by_key(|&i| (labels[i], block.ids[i]));
    let mut out = ClassSummaries::default();
    let mut start = 0;
    while start < order.len() {
        let class = labels[order[start]];
        let end = start + order[start..].partition_point(|&i| labels[i] == class);
        let members = order[start..end].iter().map(|&i| block.points.row(i));
        let (mean, radius) = class_summary(members, dim);
        out.classes.push(class);
        out.means.extend(mean);
        out.radius.push(radius);
        start = end;
    }
    out
}

/// The class level gathered from every block's [`ClassSummaries`], one block at a time.
pub struct LevelBuilder {
    dim: usize,
    means: Vec<f32>,
    radius: Vec<f32>,
    /// The block that summarised each class, once one has.
    by: Vec<Option<usize>>,
}

impl LevelBuilder {
    /// A level over `classes` classes (label ids `0..classes`) of `dim` dimensions.
    pub fn new(classes: usize, dim: usize) -> Self {
        LevelBuilder {
            dim,
            means: vec![0f32; classes * dim],
            radius: vec![0f32; classes],
            by: vec![None; classes],
        }
    }

    /// Block `block`'s summaries. A class that another block summarised too is refused
    /// (anchor blocks hold whole classes), naming that block.
    pub fn add(&mut self, block: usize, part: &ClassSummaries) -> Result<(), BlockError> {
        let (dim, classes) = (self.dim, self.radius.len());
        if part.means.len() != part.classes.len() * dim || part.radius.len() != part.classes.len() {
            return Err(BlockError::Mismatch(format!(
                "class summaries of {} classes hold {} values of means and {} radii ({dim} \
                 dimensions)",
                part.classes.len(),
                part.means.len(),
                part.radius.len()
            )));
        }
        for (i, &class) in part.classes.iter().enumerate() {
            let c = class as usize;
            match self.by.get(c) {
                None => {
                    return Err(BlockError::Mismatch(format!(
                        "class {c} is not one of the corpus's {classes} classes"
                    )))
                }
                Some(Some(other)) => {
                    return Err(BlockError::SplitClass {
                        class: c,
                        blocks: [*other, block],
                    })
                }
                Some(None) => {}
            }
            self.by[c] = Some(block);
            self.means[c * dim..(c + 1) * dim].copy_from_slice(&part.means[i * dim..(i + 1) * dim]);
            self.radius[c] = part.radius[i];
        }
        Ok(())
    }

    /// The level, picking `candidates` classes per anchor.
    pub fn build(self, candidates: usize) -> ClassLevel {
        ClassLevel::new(self.means, self.radius, self.dim, candidates)
    }
}

/// What an anchor block carries to every corpus block on the classes path: the classes the
/// guard's bands search (as `mine` finds the guard's rows: [`ClassLevel::nearest_limit`]
/// classes) and those the other bands search (`--candidate-classes`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Picks {
    pub guard: ClassPicks,
    pub bands: ClassPicks,
}

/// Which questions are the guard's: each anchor's first, when there is a guard.
fn guard_questions(questions: &[Band], rules: &MiningRules) -> Vec<bool> {
    let mut seen = std::collections::HashSet::new();
    questions
        .iter()
        .map(|b| rules.skip_nearest > 0 && seen.insert(b.query))
        .collect()
}

/// `questions` cut in two: the guard's (when `guard`) or the others, each with its position.
fn split(questions: &[Band], is_guard: &[bool], guard: bool) -> (Vec<Band>, Vec<usize>) {
    questions
        .iter()
        .zip(is_guard)
        .enumerate()
        .filter(|(_, (_, &g))| g == guard)
        .map(|(i, (b, _))| (*b, i))
        .unzip()
}

/// Step 1½ on the classes path: the classes each anchor's bands search, from `level` (built
/// over every class of the corpus, whose label ids are its classes).
pub fn pick(anchors: Block, questions: &[Band], level: &ClassLevel, rules: &MiningRules) -> Picks {
    let is_guard = guard_questions(questions, rules);
    let (guard, _) = split(questions, &is_guard, true);
    let (bands, _) = split(questions, &is_guard, false);
    Picks {
        guard: level.pick_bands(
            anchors.points,
            &guard,
            level.nearest_limit(rules.skip_nearest),
        ),
        bands: level.pick_bands(anchors.points, &bands, level.candidates()),
    }
}

/// Step 2 on the classes path: `questions` answered among the members of `corpus` in the
/// classes `picks` chose for them (`classes`: the level's).
pub fn answer_picked(
    anchors: Block,
    questions: &[Band],
    picks: &Picks,
    classes: usize,
    corpus: Block,
    rules: &MiningRules,
) -> Result<Answers, BlockError> {
    let is_guard = guard_questions(questions, rules);
    let mut found: Vec<Option<BandHits>> = vec![None; questions.len()];
    for (guard, picks) in [(true, &picks.guard), (false, &picks.bands)] {
        let (bands, at) = split(questions, &is_guard, guard);
        let mut queries: Vec<usize> = bands.iter().map(|b| b.query).collect();
        queries.sort_unstable();
        queries.dedup();
        picks
            .check(queries.len(), classes)
            .map_err(BlockError::Mismatch)?;
        let hits = band_search_picked(
            anchors.points,
            anchors.ids,
            &bands,
            picks,
            corpus.points,
            corpus.ids,
        );
        for (i, h) in at.into_iter().zip(hits) {
            found[i] = Some(h);
        }
    }
    let found = found
        .into_iter()
        .map(|h| h.expect("every question is the guard's or not"))
        .collect();
    Ok(answers_of(anchors, questions, found, corpus, rules))
}

/// A corpus block's hits with each one's d(a,n), as answers.
fn answers_of(
    anchors: Block,
    questions: &[Band],
    found: Vec<BandHits>,
    corpus: Block,
    rules: &MiningRules,
) -> Answers {
    // Sorted (row id, position) pairs: hashing every corpus row of every block took 7% of
    // an out-of-core run.
    let mut position: Vec<(usize, usize)> = corpus
        .ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    position.sort_unstable();
    let position_of = |id: usize| {
        let at = position.partition_point(|&(i, _)| i < id);
        position[at].1
    };
    let mut out = Answers::default();
    out.offsets.push(0);
    for (band, hits) in questions.iter().zip(found) {
        let anchor = anchors.points.row(band.query);
        out.push_band(
            hits.hits.iter().map(|h| {
                let row = corpus.points.row(position_of(h.index));
                (h.index, h.dot, rules.distance.between(anchor, row))
            }),
            hits.complete,
        );
    }
    out
}

/// `questions` narrowed by the answers found so far: a band that already holds its `k` needs
/// nothing below its `k`-th dot product from the next corpus block. Answers to the narrowed
/// questions merge with `so_far` into exactly what the questions' own would (a row at the
/// `k`-th dot product still enters, for the lower row id); one process streaming its corpus
/// blocks uses this to scan and keep far fewer rows.
pub fn narrowed(questions: &[Band], so_far: &Answers) -> Vec<Band> {
    questions
        .iter()
        .enumerate()
        .map(|(b, band)| {
            let held = so_far.offsets[b + 1] - so_far.offsets[b];
            match band.k {
                k if k > 0 && held >= k => Band {
                    min_dot: band.min_dot.max(so_far.dots[so_far.offsets[b] + k - 1]),
                    ..*band
                },
                _ => *band,
            }
        })
        .collect()
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
        out.push_band(hits, parts.iter().all(|p| p.complete[b]));
    }
    Ok(out)
}

/// Step 4: the anchor block's triplets (rows of the whole corpus, in anchor order) and
/// statistics, from its questions' merged answers over every corpus block;
/// `candidate_classes` is the classes path's ([`ClassLevel::candidates`]), where the answers
/// came from [`answer_picked`].
pub fn finalise(
    anchors: Block,
    questions: &[Band],
    answers: &Answers,
    rules: &MiningRules,
    corpus_len: usize,
    candidate_classes: Option<usize>,
) -> Result<(Vec<Triplet>, MineStats), BlockError> {
    supported(rules)?;
    answers.check(questions)?;
    let plans = plans(anchors, rules, corpus_len);
    let reach = candidate_classes.map_or_else(|| "every block".to_string(), classes_reach);
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
                        complete: answers.complete[b],
                    }
                });
                (r, answer)
            })
            .collect();
        let outcome = plan.assemble(anchors.points, &answered, rules, &reach);
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
        blocked_with(data, labels, dim, rules, anchor_blocks, corpus_blocks, None)
    }

    /// The same on the classes path when `level` is given.
    fn blocked_with(
        data: &[f32],
        labels: &[u32],
        dim: usize,
        rules: &MiningRules,
        anchor_blocks: usize,
        corpus_blocks: usize,
        level: Option<&ClassLevel>,
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
            let picks = level.map(|l| pick(a.block(), &q, l, rules));
            let ask = |asked: &[Band], c: &Owned| match (level, &picks) {
                (Some(l), Some(p)) => {
                    answer_picked(a.block(), asked, p, l.classes(), c.block(), rules).unwrap()
                }
                _ => answer(a.block(), asked, c.block(), rules),
            };
            let parts: Vec<Answers> = corpus.iter().map(|c| ask(&q, c)).collect();
            // Streamed with narrowed questions, as one process does: the same answers.
            let mut streamed: Option<Answers> = None;
            for c in &corpus {
                let asked = streamed
                    .as_ref()
                    .map_or_else(|| q.clone(), |s| narrowed(&q, s));
                let part = ask(&asked, c);
                streamed = Some(match streamed {
                    None => part,
                    Some(so_far) => merge(&q, [&so_far, &part]).unwrap(),
                });
            }
            // Merged in two halves and once more: associativity, and a retried block.
            let (left, right) = parts.split_at(parts.len() / 2);
            let left = merge(&q, left).unwrap();
            let right = merge(&q, right).unwrap();
            let merged = merge(&q, [&left, &right, &parts[0]]).unwrap();
            assert_eq!(streamed.as_ref(), Some(&merged));
            let candidates = level.map(ClassLevel::candidates);
            let (t, s) = finalise(a.block(), &q, &merged, rules, n, candidates).unwrap();
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

    /// The level the in-memory classes index builds: each label's mean and radius over its
    /// rows in corpus order.
    fn level_of(
        data: &[f32],
        labels: &[u32],
        dim: usize,
        candidates: usize,
        cells_from: usize,
    ) -> ClassLevel {
        let classes = *labels.iter().max().unwrap() as usize + 1;
        let (mut means, mut radius) = (Vec::new(), Vec::new());
        for c in 0..classes {
            let members = (0..labels.len())
                .filter(move |&i| labels[i] as usize == c)
                .map(|i| &data[i * dim..(i + 1) * dim]);
            let (mean, r) = crate::knn::class_summary(members, dim);
            means.extend(mean);
            radius.push(r);
        }
        ClassLevel::with_cells_from(means, radius, dim, candidates, cells_from)
    }

    #[test]
    fn the_classes_path_over_blocks_gives_mines_triplets() {
        let dim = 8;
        let (mut data, mut labels) = clustered(12, 6, dim, 0.8, 3);
        let (one, _) = clustered(1, 1, dim, 0.0, 98);
        data.extend(one);
        labels.push(12);
        let points = Points {
            data: &data,
            dim,
            labels: &labels,
        };
        for (strategy, k, positives, skip, candidates, cells_from) in [
            ("semihard", 1, PositiveRule::Hardest, 0, 3, usize::MAX),
            ("hard", 2, PositiveRule::All, 0, 2, 1),
            (
                "semihard=0.6,hard=0.4",
                3,
                PositiveRule::Easiest,
                1,
                4,
                usize::MAX,
            ),
            ("any", 2, PositiveRule::Random, 4, 100, 1),
        ] {
            let rules = MiningRules {
                strategy: strategy.parse().unwrap(),
                negatives_per_anchor: k,
                positives,
                skip_nearest: skip,
                seed: 5,
                ..MiningRules::default()
            };
            let level = level_of(&data, &labels, dim, candidates, cells_from);
            let index = crate::knn::ClassIndex::with_cells_from(points, candidates, cells_from);
            let want = mine(points, &index, &rules);
            assert!(!want.0.is_empty(), "{strategy}");
            for (a, c) in [(1, 1), (4, 4), (8, 2), (3, 5)] {
                let got = blocked_with(&data, &labels, dim, &rules, a, c, Some(&level));
                assert_eq!(got.0, want.0, "{strategy} on {a}×{c}");
                assert_eq!(got.1, want.1, "{strategy} on {a}×{c}");
            }
            // Every class a candidate (the guard searches 4 × skip_nearest of them): the exact
            // index's triplets.
            if candidates >= 13 {
                let exact = mine(points, &ExactIndex::new(points), &rules);
                assert_eq!(want.0, exact.0, "{strategy}");
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
        let e = finalise(all.block(), &q[1..], &a, &rules, labels.len(), None).unwrap_err();
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
