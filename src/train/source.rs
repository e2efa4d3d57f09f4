//! Batch sources: where each epoch's training batches come from. Every `--mining` regime is
//! one type behind [`BatchSource`]; the training loop only plans an epoch, takes batches and
//! reports what each step trained on. Adding a regime means adding one type here and one arm
//! to [`for_config`].

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::neighbour_batches::NeighbourBatches;
use super::period::{EpochSpan, Period};
use super::report::{self, RoundRecorder};
use super::{io_err, run_dir, TrainConfig, TrainError, TrainingSet};
use crate::knn::{self, NeighbourIndex, Points};
use crate::mine::{self, MiningRules, NegativeOrder, PositiveRule, Selection, Strategy, Triplet};
use crate::model::Embedder;
use crate::rng::Rng;
use crate::triplets::{self, TripletRow};

/// How each step's triplets are found. Recorded in `config.json` by its `--mining` spelling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "MiningRecord")]
pub enum Mining {
    /// Chosen from the training split by [`Mining::choose`] (the default); a run's
    /// `config.json` holds the choice and its reason.
    Auto,
    /// P×K batches composed from the whole-corpus neighbour graph (classes or images that
    /// confuse each other meet), re-indexed every `remine_every` epochs, mined inside.
    NeighbourBatches,
    /// Re-embed the training split and mine it whole every `remine_every` epochs.
    Global,
    /// Random P×K batches mined inside by the in-batch miner (batch-hard, batch-semihard,
    /// batch-all).
    InBatch(InBatchMiner),
    /// A triplet CSV exported by `tripmine mine`.
    Triplets(PathBuf),
}

impl Mining {
    /// The `--mining` spelling: neighbour-batches, global, batch-hard, ..., triplets:FILE.
    pub fn name(&self) -> String {
        match self {
            Mining::Auto => "auto".into(),
            Mining::NeighbourBatches => "neighbour-batches".into(),
            Mining::Global => "global".into(),
            Mining::InBatch(miner) => miner.name().into(),
            Mining::Triplets(path) => format!("triplets:{}", path.display()),
        }
    }
}

impl From<Mining> for String {
    fn from(mining: Mining) -> String {
        mining.name()
    }
}

/// `--mining` as `config.json` holds it: its spelling, or (runs before the in-batch miners
/// were one variant) `{"triplets": FILE}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum MiningRecord {
    Name(String),
    Triplets { triplets: PathBuf },
}

impl TryFrom<MiningRecord> for Mining {
    type Error = String;
    fn try_from(record: MiningRecord) -> Result<Self, String> {
        match record {
            MiningRecord::Name(name) => name.parse(),
            MiningRecord::Triplets { triplets } => Ok(Mining::Triplets(triplets)),
        }
    }
}

impl std::str::FromStr for Mining {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Mining::Auto),
            "neighbour-batches" | "neighbor-batches" => Ok(Mining::NeighbourBatches),
            "global" => Ok(Mining::Global),
            _ if InBatchMiner::named(s).is_some() => {
                Ok(Mining::InBatch(InBatchMiner::named(s).expect("named")))
            }
            _ => match s.strip_prefix("triplets:") {
                Some(path) if !path.is_empty() => Ok(Mining::Triplets(PathBuf::from(path))),
                _ => Err(format!(
                    "unknown mining {s:?}; expected auto, neighbour-batches, global, batch-hard, batch-semihard, batch-all or triplets:FILE.csv"
                )),
            },
        }
    }
}

/// Images per class at or below which whole-corpus mining is chosen: the regime where a
/// P×K batch meets few of the classes that confuse its samples. Measured (README,
/// `make bench-regime` and the held-out probes of issue 19): with 6 images per class
/// (SOP-shaped, 4,000 classes) and 10 (faces, 30 identities) index-guided batches beat
/// batch-semihard; with about 17 (the many-class corpus, 200 classes) and thousands
/// (Fashion-MNIST, digits) they do not.
pub const FEW_PER_CLASS: f64 = 10.0;

/// What `--mining auto` chose for a run, and why (recorded in `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MiningChoice {
    pub chose: Mining,
    pub reason: String,
}

impl Mining {
    /// `--mining auto`'s rule, from the training split's shape: with few images per class,
    /// index-guided batches (over light inputs their graph is rebuilt from the current head at
    /// every refresh; `make bench-regime` measured them above global rounds and memory
    /// negatives there); otherwise batch-semihard.
    pub fn choose(labels: &[u32], light_inputs: bool, classes_per_batch: usize) -> MiningChoice {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for &l in labels {
            *counts.entry(l).or_default() += 1;
        }
        let classes = counts.len().max(1);
        let per_class = labels.len() as f64 / classes as f64;
        let shape = format!(
            "{classes} training classes of {per_class:.1} samples on average, P = {classes_per_batch}"
        );
        let few = per_class <= FEW_PER_CLASS && classes > classes_per_batch;
        let (chose, why) = if few {
            let graph = if light_inputs {
                "rebuilt from the current head at every refresh (light inputs)"
            } else {
                "over the embeddings of each step"
            };
            (
                Mining::NeighbourBatches,
                format!("at most {FEW_PER_CLASS} per class: batches composed from the whole-corpus neighbour graph, {graph}"),
            )
        } else {
            (
                Mining::InBatch(InBatchMiner::Semihard),
                format!("more than {FEW_PER_CLASS} per class (or no more classes than P): a P×K batch already meets its confusable samples"),
            )
        };
        MiningChoice {
            chose,
            reason: format!("{shape}; {why}"),
        }
    }
}

/// One optimisation step's input.
pub struct StepBatch {
    /// Training-set indices of the images to embed, in batch order.
    pub images: Vec<usize>,
    pub triplets: BatchTriplets,
    /// Extra negatives from stored embeddings (constants, no gradient).
    pub memory: Option<MemoryNegatives>,
}

/// How the batch's triplets are found.
pub enum BatchTriplets {
    /// Given in advance (a global round or a CSV), as training-set indices.
    Given(Vec<Triplet>),
    /// Mined inside the batch's embeddings.
    Mine(InBatchMiner),
}

/// Triplets for anchors of a batch whose negatives come from the embeddings stored at the
/// last refresh, each trained against the positive it was chosen for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryNegatives {
    /// (anchor, positive, negative) as training-set indices; the anchor is in the batch.
    pub triplets: Vec<(usize, usize, usize)>,
    /// The stored embedding of each triplet's positive (used when it is not in the batch).
    pub positives: Vec<f32>,
    /// The stored embedding of each triplet's negative, one row per triplet.
    pub negatives: Vec<f32>,
}

impl StepBatch {
    /// A batch of given triplets: its images are every sample they name, once.
    pub fn given(triplets: Vec<Triplet>) -> Self {
        let mut images: Vec<usize> = triplets
            .iter()
            .flat_map(|t| [t.anchor, t.positive, t.negative])
            .collect();
        images.sort_unstable();
        images.dedup();
        StepBatch {
            images,
            triplets: BatchTriplets::Given(triplets),
            memory: None,
        }
    }
}

/// The miner run inside a batch's embeddings: the corpus miner with batch-sized searches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum InBatchMiner {
    /// Per anchor: hardest positive, nearest margin-violating negative.
    Hard,
    /// Per positive pair: the nearest semi-hard negative (the default inside neighbour
    /// batches: `make bench-train`, README).
    #[default]
    Semihard,
    /// Every margin-violating triplet.
    All,
}

impl InBatchMiner {
    /// The miner a `--mining` spelling names (batch-hard, batch-semihard, batch-all).
    pub fn named(name: &str) -> Option<InBatchMiner> {
        [
            InBatchMiner::Hard,
            InBatchMiner::Semihard,
            InBatchMiner::All,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            InBatchMiner::Hard => "batch-hard",
            InBatchMiner::Semihard => "batch-semihard",
            InBatchMiner::All => "batch-all",
        }
    }

    /// Triplets of a batch as positions in it. With a soft margin no triplet has zero loss,
    /// so every kind of negative stays a candidate.
    pub fn mine(self, data: &[f32], dim: usize, labels: &[u32], cfg: &TrainConfig) -> Vec<Triplet> {
        let points = Points { data, dim, labels };
        let batch = labels.len();
        let (positives, selection, k) = match self {
            InBatchMiner::Hard => (PositiveRule::Hardest, Selection::All, 1),
            InBatchMiner::Semihard => (
                PositiveRule::All,
                Selection::Kind(crate::definitions::TripletKind::Semihard),
                1,
            ),
            InBatchMiner::All => (PositiveRule::All, Selection::All, batch),
        };
        let selection = if cfg.loss.soft_margin {
            Selection::Any
        } else {
            selection
        };
        let rules = MiningRules {
            margin: cfg.loss.margin,
            distance: cfg.loss.distance,
            strategy: Strategy {
                parts: vec![(selection, 1.0)],
            },
            positives,
            negatives_per_anchor: k,
            negative_order: NegativeOrder::Nearest,
            anchors_per_class: None,
            seed: cfg.seed,
            start_depth: batch,
            max_depth: batch,
            skip_nearest: 0,
            negative_floor: 0.0,
        };
        let index = knn::ExactIndex::new(points);
        mine::mine(points, &index, &rules).0
    }
}

/// Where an epoch's batches come from.
pub trait BatchSource {
    /// Plans epoch `epoch` (0-based), whose first step is the run's `first_step`-th,
    /// embedding and mining or indexing the training split first when the regime refreshes
    /// then; returns the epoch's number of steps, which `next_batch` then gives exactly.
    fn begin_epoch(
        &mut self,
        epoch: usize,
        first_step: usize,
        model: &Embedder,
    ) -> Result<usize, TrainError>;

    /// The epoch's next batch, `None` after its last.
    fn next_batch(&mut self, model: &Embedder) -> Result<Option<StepBatch>, TrainError>;

    /// What a step trained on: its images' embeddings (for sources that keep them) and the
    /// triplets, for the round record.
    fn trained(&mut self, _step: &TrainedStep) {}

    /// Closes the epoch: saves the round record of a regime that mines every epoch.
    fn end_epoch(&mut self) -> Result<(), TrainError> {
        Ok(())
    }

    /// Writes what the source keeps between epochs into a checkpoint directory being staged,
    /// so that a resumed run continues bit for bit.
    fn save_state(&self, _dir: &Path) -> std::io::Result<()> {
        Ok(())
    }

    /// Restores what [`BatchSource::save_state`] wrote.
    fn load_state(&mut self, _dir: &Path) -> Result<(), TrainError> {
        Ok(())
    }
}

/// One step's report to its source, as training-set indices.
pub struct TrainedStep<'a> {
    pub images: &'a [usize],
    /// The images' embeddings from the step's forward pass (detached), one row per image;
    /// empty for given triplets.
    pub embeddings: &'a [f32],
    pub mined: &'a [Triplet],
}

/// The batch source of `cfg.mining`: the one place that looks at the regime.
pub fn for_config<'a>(
    cfg: &'a TrainConfig,
    train: &'a TrainingSet,
) -> Result<Box<dyn BatchSource + 'a>, TrainError> {
    Ok(match &cfg.mining {
        Mining::Auto => {
            return Err(TrainError::Input(
                "--mining auto is resolved before training starts".into(),
            ))
        }
        Mining::Global => Box::new(GlobalTriplets::new(cfg, train)),
        Mining::InBatch(miner) => Box::new(InBatch::new(cfg, train, *miner)),
        Mining::NeighbourBatches => Box::new(NeighbourBatches::new(cfg, train)),
        Mining::Triplets(path) => Box::new(FixedTriplets::new(cfg, train, path)?),
    })
}

/// Shuffled chunks of `triplets_per_step` triplets, drawn from the seed and the epoch: one pass.
fn triplet_batches(triplets: &[Triplet], cfg: &TrainConfig, epoch: usize) -> VecDeque<StepBatch> {
    triplet_steps(
        triplets,
        cfg,
        epoch as u64,
        triplets.len().div_ceil(cfg.triplets_per_step),
    )
}

/// `steps` shuffled chunks of `triplets_per_step` triplets (the order drawn from the seed and `item`),
/// going round the triplets again when one pass is shorter.
fn triplet_steps(
    triplets: &[Triplet],
    cfg: &TrainConfig,
    item: u64,
    steps: usize,
) -> VecDeque<StepBatch> {
    if triplets.is_empty() {
        return VecDeque::new();
    }
    let mut order: Vec<usize> = (0..triplets.len()).collect();
    Rng::for_item(cfg.seed ^ 0x7121, item).shuffle(&mut order);
    let (n, size) = (triplets.len(), cfg.triplets_per_step.max(1));
    // One pass ends with a partial chunk; more steps than a pass go round again.
    let wanted = if steps <= n.div_ceil(size) {
        (steps * size).min(n)
    } else {
        steps * size
    };
    let taken: Vec<usize> = order.iter().copied().cycle().take(wanted).collect();
    taken
        .chunks(size)
        .take(steps)
        .map(|c| StepBatch::given(c.iter().map(|&i| triplets[i]).collect()))
        .collect()
}

/// Records each epoch of an in-batch miner as a round of its own.
pub(super) struct EpochRecorder<'a> {
    cfg: &'a TrainConfig,
    train: &'a TrainingSet,
    name: String,
    current: Option<RoundRecorder>,
}

impl<'a> EpochRecorder<'a> {
    pub(super) fn new(cfg: &'a TrainConfig, train: &'a TrainingSet, name: String) -> Self {
        EpochRecorder {
            cfg,
            train,
            name,
            current: None,
        }
    }

    pub(super) fn begin(&mut self, epoch: usize) {
        self.current = Some(RoundRecorder::new(
            epoch,
            epoch + 1,
            &self.name,
            self.cfg.loss.distance,
        ));
    }

    pub(super) fn add(&mut self, triplets: &[Triplet]) {
        if let Some(r) = self.current.as_mut() {
            r.add(triplets, &self.train.samples);
        }
    }

    pub(super) fn save(&mut self) -> Result<(), TrainError> {
        match self.current.take() {
            Some(r) => r
                .save(&self.cfg.out)
                .map(drop)
                .map_err(io_err(&self.cfg.out)),
            None => Ok(()),
        }
    }
}

/// P×K batches of random classes, mined inside (batch-hard, batch-semihard, batch-all).
struct InBatch<'a> {
    cfg: &'a TrainConfig,
    train: &'a TrainingSet,
    miner: InBatchMiner,
    batches: VecDeque<Vec<usize>>,
    recorder: EpochRecorder<'a>,
}

impl<'a> InBatch<'a> {
    fn new(cfg: &'a TrainConfig, train: &'a TrainingSet, miner: InBatchMiner) -> Self {
        InBatch {
            cfg,
            train,
            miner,
            batches: VecDeque::new(),
            recorder: EpochRecorder::new(cfg, train, miner.name().into()),
        }
    }
}

impl BatchSource for InBatch<'_> {
    fn begin_epoch(&mut self, epoch: usize, _: usize, _: &Embedder) -> Result<usize, TrainError> {
        let cfg = self.cfg;
        self.batches = super::sampler::pk_batches(
            &self.train.labels,
            cfg.classes_per_batch,
            cfg.samples_per_class,
            cfg.seed,
            epoch,
        )
        .into();
        self.recorder.begin(epoch);
        Ok(self.batches.len())
    }

    fn next_batch(&mut self, _: &Embedder) -> Result<Option<StepBatch>, TrainError> {
        Ok(self.batches.pop_front().map(|images| StepBatch {
            images,
            triplets: BatchTriplets::Mine(self.miner),
            memory: None,
        }))
    }

    fn trained(&mut self, step: &TrainedStep) {
        self.recorder.add(step.mined);
    }

    fn end_epoch(&mut self) -> Result<(), TrainError> {
        self.recorder.save()
    }
}

/// FaceNet-style offline mining: every `remine_every` (epochs, fractions allowed, or steps) the
/// training split is embedded and mined whole with `tripmine mine`'s rules (and its
/// false-negative guard); the round's triplets are exported. Over light inputs the embedding
/// is one pass of the head, so every round sees the current head. Before `global_warmup` is
/// over, P×K batches are mined inside with `--batch-miner`. A round mined inside an epoch fills
/// the steps the epoch still has.
struct GlobalTriplets<'a> {
    cfg: &'a TrainConfig,
    train: &'a TrainingSet,
    /// The round being trained on: its number and triplets.
    round: Option<(usize, Vec<Triplet>)>,
    batches: VecDeque<StepBatch>,
    span: EpochSpan,
    step: usize,
    /// Step offsets of the epoch at which a round is mined, soonest first.
    remine_at: VecDeque<usize>,
    /// The epoch's round number at its start (rounds counted by the period's points).
    first_round: usize,
}

impl<'a> GlobalTriplets<'a> {
    fn new(cfg: &'a TrainConfig, train: &'a TrainingSet) -> Self {
        GlobalTriplets {
            cfg,
            train,
            round: None,
            batches: VecDeque::new(),
            span: EpochSpan::starting(0, 0),
            step: 0,
            remine_at: VecDeque::new(),
            first_round: 0,
        }
    }

    /// The round in force at the start of epoch `epoch`: the period's points passed so far.
    fn round_at_start(&self, epoch: usize, first_step: usize) -> usize {
        match self.cfg.remine_every {
            Period::Epochs(every) => (epoch as f64 / every.max(1e-3) + 1e-6).floor() as usize,
            Period::Steps(n) => first_step / n.max(1),
        }
    }

    /// Makes `round` the one trained on, mining it unless it already is.
    fn ensure_round(&mut self, model: &Embedder, round: usize) -> Result<(), TrainError> {
        if self.round.as_ref().map(|(r, _)| *r) != Some(round) {
            let triplets = self.mine_round(model, round, self.span.epoch + 1)?;
            self.round = Some((round, triplets));
        }
        Ok(())
    }

    /// Embeds the training split, mines it whole and saves the round's triplets.
    fn mine_round(
        &self,
        model: &Embedder,
        round: usize,
        first_epoch: usize,
    ) -> Result<Vec<Triplet>, TrainError> {
        let (cfg, train) = (self.cfg, self.train);
        let dir = run_dir::round_dir(&cfg.out, round);
        let csv = dir.join("triplets.csv");
        let record = |triplets: &[Triplet]| {
            let mut recorder = RoundRecorder::new(round, first_epoch, "global", cfg.loss.distance);
            recorder.add(triplets, &train.samples);
            recorder.save(&cfg.out).map(drop).map_err(io_err(&dir))
        };
        if csv.is_file() {
            // Resuming inside a round: the triplets it trained on are the ones saved then.
            let triplets = read_fixed_triplets(&csv, train)?;
            if !report::has_record(&cfg.out, round) {
                record(&triplets)?;
            }
            return Ok(triplets);
        }
        let data = train.embed(model)?;
        let points = Points {
            data: &data,
            dim: cfg.network.dim as usize,
            labels: &train.labels,
        };
        let rules = cfg.index_rules(
            cfg.positives,
            cfg.negatives_per_anchor,
            cfg.seed ^ round as u64,
        );
        let started = Instant::now();
        let index = knn::build(points, &cfg.knn);
        let (triplets, stats) = mine::mine(points, &index, &rules);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let rows = triplets
            .iter()
            .map(|t| TripletRow::new(t, |i| (&train.samples[i].path, &train.samples[i].label)));
        let mut sidecar = mine::rules_sidecar(&rules, &index.describe(), &stats);
        sidecar["round"] = round.into();
        sidecar["wall_seconds"] = started.elapsed().as_secs_f64().into();
        // A round that cannot be written is a failure while working (exit 1), not bad input.
        mine::write_triplet_set(&csv, rows, sidecar).map_err(|e| match e {
            mine::MineError::Write { path, source } => TrainError::Io { path, source },
            other => TrainError::Input(other.to_string()),
        })?;
        record(&triplets)?;
        Ok(triplets)
    }

    /// P×K batches mined inside, for the warm-up.
    fn warmup_batches(&self, epoch: usize) -> VecDeque<StepBatch> {
        let cfg = self.cfg;
        super::sampler::pk_batches(
            &self.train.labels,
            cfg.classes_per_batch,
            cfg.samples_per_class,
            cfg.seed,
            epoch,
        )
        .into_iter()
        .map(|images| StepBatch {
            images,
            triplets: BatchTriplets::Mine(cfg.batch_miner),
            memory: None,
        })
        .collect()
    }
}

impl BatchSource for GlobalTriplets<'_> {
    fn begin_epoch(
        &mut self,
        epoch: usize,
        first_step: usize,
        model: &Embedder,
    ) -> Result<usize, TrainError> {
        let cfg = self.cfg;
        self.span = EpochSpan::starting(epoch, first_step);
        self.step = 0;
        self.first_round = self.round_at_start(epoch, first_step);
        let warming = !cfg.global_warmup.over_at_start(epoch, first_step);
        self.batches = if warming {
            self.warmup_batches(epoch)
        } else {
            self.ensure_round(model, self.first_round)?;
            let (_, triplets) = self.round.as_ref().expect("mined above");
            triplet_batches(triplets, cfg, epoch)
        };
        self.span.steps = self.batches.len();
        let mut points = cfg.remine_every.repeats_in(self.span);
        points.retain(|&o| o > 0);
        if warming {
            // Rounds start where the warm-up ends; points before it mine nothing.
            match cfg.global_warmup.ends_in(self.span) {
                Some(end) => {
                    points.retain(|&o| o > end);
                    points.insert(0, end);
                }
                None => points.clear(),
            }
        }
        self.remine_at = points.into();
        Ok(self.span.steps)
    }

    fn next_batch(&mut self, model: &Embedder) -> Result<Option<StepBatch>, TrainError> {
        if self.remine_at.front() == Some(&self.step) {
            self.remine_at.pop_front();
            let passed = self
                .cfg
                .remine_every
                .repeats_in(self.span)
                .into_iter()
                .filter(|&o| o > 0 && o <= self.step)
                .count();
            self.ensure_round(model, self.first_round + passed)?;
            let (_, triplets) = self.round.as_ref().expect("mined above");
            let item = ((self.span.epoch as u64) << 20) + self.step as u64;
            self.batches = triplet_steps(triplets, self.cfg, item, self.span.steps - self.step);
        }
        let batch = self.batches.pop_front();
        self.step += batch.is_some() as usize;
        Ok(batch)
    }
}

/// A triplet CSV given in advance (`triplets:FILE`), recorded once as round 0.
struct FixedTriplets<'a> {
    cfg: &'a TrainConfig,
    triplets: Vec<Triplet>,
    batches: VecDeque<StepBatch>,
}

impl<'a> FixedTriplets<'a> {
    fn new(cfg: &'a TrainConfig, train: &'a TrainingSet, path: &Path) -> Result<Self, TrainError> {
        let triplets = read_fixed_triplets(path, train)?;
        if !report::has_record(&cfg.out, 0) {
            let mut recorder = RoundRecorder::new(0, 1, "triplets", cfg.loss.distance);
            recorder.add(&triplets, &train.samples);
            recorder.save(&cfg.out).map_err(io_err(&cfg.out))?;
        }
        Ok(FixedTriplets {
            cfg,
            triplets,
            batches: VecDeque::new(),
        })
    }
}

impl BatchSource for FixedTriplets<'_> {
    fn begin_epoch(&mut self, epoch: usize, _: usize, _: &Embedder) -> Result<usize, TrainError> {
        self.batches = triplet_batches(&self.triplets, self.cfg, epoch);
        Ok(self.batches.len())
    }

    fn next_batch(&mut self, _: &Embedder) -> Result<Option<StepBatch>, TrainError> {
        Ok(self.batches.pop_front())
    }
}

/// Triplets of a CSV as training-set indices; unknown paths are an error naming a few.
fn read_fixed_triplets(path: &Path, train: &TrainingSet) -> Result<Vec<Triplet>, TrainError> {
    let rows = triplets::read(path).map_err(TrainError::Input)?;
    let index: HashMap<&str, usize> = train
        .samples
        .iter()
        .enumerate()
        .map(|(i, s)| (s.path.as_str(), i))
        .collect();
    let mut unknown: Vec<&str> = Vec::new();
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let ids: Vec<Option<usize>> = [&r.anchor, &r.positive, &r.negative]
            .iter()
            .map(|p| index.get(p.as_str()).copied())
            .collect();
        for (p, id) in [&r.anchor, &r.positive, &r.negative].iter().zip(&ids) {
            if id.is_none() && !unknown.contains(&p.as_str()) {
                unknown.push(p);
            }
        }
        if let [Some(a), Some(p), Some(n)] = ids[..] {
            out.push(Triplet {
                anchor: a,
                positive: p,
                negative: n,
                d_ap: r.d_ap,
                d_an: r.d_an,
                kind: r.kind,
            });
        }
    }
    if !unknown.is_empty() {
        let first: Vec<&str> = unknown.iter().take(5).copied().collect();
        return Err(TrainError::Input(format!(
            "{}: {} path(s) are not in the training split of the corpus, e.g. {}",
            path.display(),
            unknown.len(),
            first.join(", ")
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(classes: u32, per_class: u32) -> Vec<u32> {
        (0..classes * per_class).map(|i| i / per_class).collect()
    }

    /// `--mining auto`: index-guided batches with few samples per class, batch-semihard
    /// otherwise; the reason names the split's shape.
    #[test]
    fn every_mining_round_trips_through_its_name_in_config_json() {
        for mining in [
            Mining::Auto,
            Mining::NeighbourBatches,
            Mining::Global,
            Mining::InBatch(InBatchMiner::Hard),
            Mining::InBatch(InBatchMiner::Semihard),
            Mining::InBatch(InBatchMiner::All),
            Mining::Triplets("t.csv".into()),
        ] {
            let json = serde_json::to_string(&mining).unwrap();
            assert_eq!(json, format!("{:?}", mining.name()));
            assert_eq!(serde_json::from_str::<Mining>(&json).unwrap(), mining);
        }
        assert!(serde_json::from_str::<Mining>("\"batch-easiest\"").is_err());
        // A config.json written before the in-batch miners were one variant.
        let old: Mining = serde_json::from_str(r#"{"triplets": "t.csv"}"#).unwrap();
        assert_eq!(old, Mining::Triplets("t.csv".into()));
    }

    #[test]
    fn auto_mining_follows_the_split_shape_and_says_why() {
        let sop = Mining::choose(&labels(4000, 6), false, 16);
        assert_eq!(sop.chose, Mining::NeighbourBatches);
        assert!(
            sop.reason.contains("4000 training classes of 6.0"),
            "{}",
            sop.reason
        );
        let rows = Mining::choose(&labels(4000, 6), true, 16);
        assert_eq!(rows.chose, Mining::NeighbourBatches);
        assert!(rows.reason.contains("current head"), "{}", rows.reason);
        assert_eq!(
            Mining::choose(&labels(30, 10), false, 8).chose,
            Mining::NeighbourBatches
        );
        assert_eq!(
            Mining::choose(&labels(200, 17), false, 16).chose,
            Mining::InBatch(InBatchMiner::Semihard)
        );
        assert_eq!(
            Mining::choose(&labels(10, 200), true, 16).chose,
            Mining::InBatch(InBatchMiner::Semihard)
        );
        // No more classes than P: every batch already holds them all.
        assert_eq!(
            Mining::choose(&labels(8, 4), false, 8).chose,
            Mining::InBatch(InBatchMiner::Semihard)
        );
    }
}
