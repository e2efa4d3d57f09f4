//! The triplet-loss trainer: an epoch loop over batches from a [`source::BatchSource`] (one per
//! `--mining` regime: index-guided batches, in-batch miners over P×K batches, global
//! re-mining, a fixed triplet CSV); validation metrics every epoch; resumable run dirs.

mod augment;
mod inputs;
mod loss;
mod neighbour_batches;
mod optim;
mod period;
mod prefetch;
mod report;
mod run_dir;
mod sampler;
mod source;

pub use loss::LossConfig;
pub use neighbour_batches::{BatchComposition, BATCHES_JSON};
pub use optim::{OptimConfig, OptimizerKind, ScheduleKind, DEFAULT_BACKBONE_LR_SCALE};
pub use period::Period;
pub use report::{RoundRecord, REPORT_HTML};
pub use run_dir::{MetricsRow, RunState, CONFIG_JSON, METRICS_CSV};
pub use source::{InBatchMiner, Mining, MiningChoice};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::corpus::{self, CorpusError, Sample};
use crate::embed::decode_samples;
use crate::eval::{self, Metrics};
use crate::knn::{KnnConfig, Points};
use crate::mine::{self, PositiveRule, Strategy, Triplet};
use crate::model::{parse_device, Architecture, Embedder, ModelError, ModelSpec, TrunkMode};
use crate::output::write_json;
use crate::report::Tiles;
use crate::rng::Rng;
use crate::store::{self, EmbeddingsInput, RowCheck};
use inputs::{DecodedImages, FeatureRows, Inputs};
use optim::{learning_rate, Optimizer, RunPosition};
use prefetch::Prefetch;
use source::{BatchTriplets, MemoryNegatives, StepBatch, TrainedStep};

/// Which samples validate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Validation {
    /// Hold out this fraction of the classes (unseen classes: the metric-learning protocol).
    Classes(f64),
    /// Hold out this fraction of every class's samples.
    Samples(f64),
    /// The corpus's split column: `train` trains; `val`/`valid`/`validation` validate, or
    /// `test` when there is no validation split (case-insensitive).
    SplitColumn,
    /// The split column when the corpus has one; otherwise a tenth of the classes when the
    /// corpus has many small ones (see [`auto_holdout`]), else a tenth of every class's samples.
    Auto,
}

/// `tripmine train`, validated; saved as `config.json` so that a run can be repeated or resumed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub corpus: PathBuf,
    pub out: PathBuf,
    pub network: ModelSpec,
    /// The checkpoint whose weights the run starts from (`--model`); none: fresh weights.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Epochs in which a fine-tuned trunk stays fixed while the head trains alone.
    #[serde(default)]
    pub freeze_backbone_epochs: usize,
    pub device: String,
    pub seed: u64,
    pub epochs: usize,
    /// Triplets per step (global, triplets:FILE); P×K sets the batch for the in-batch miners.
    #[serde(alias = "batch_size")]
    pub triplets_per_step: usize,
    pub classes_per_batch: usize,
    pub samples_per_class: usize,
    pub augment: bool,
    pub loss: LossConfig,
    pub optim: OptimConfig,
    pub mining: Mining,
    /// Between refreshes of the neighbour graph or global re-mining rounds.
    pub remine_every: Period,
    /// The miner inside index-guided batches.
    #[serde(default)]
    pub batch_miner: InBatchMiner,
    /// Share of an index-guided batch's groups drawn at random.
    #[serde(default = "default_random_classes")]
    pub random_classes: f64,
    /// Extra negatives per anchor from the last refresh's stored embeddings (0: off).
    #[serde(default)]
    pub memory_negatives: usize,
    /// Training before memory negatives start.
    #[serde(default = "default_memory_warmup")]
    pub memory_warmup: Period,
    /// Global mining: training on P×K batches mined inside before the first round.
    #[serde(default = "default_global_warmup")]
    pub global_warmup: Period,
    /// The false-negative guard: a sample's nearest other-label neighbours never used as its
    /// negatives by the index-mined parts (likely duplicates or mislabels).
    #[serde(default)]
    pub skip_nearest: usize,
    /// The other guard: no index-mined negative closer than this share of d(a,p).
    #[serde(default)]
    pub negative_floor: f32,
    /// libtorch and decoding threads of the run (recorded so that `--resume` uses the same).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Rules of global mining (margin and distance follow the loss).
    pub strategy: Strategy,
    pub positives: PositiveRule,
    pub negatives_per_anchor: usize,
    pub knn: KnnConfig,
    pub validation: Validation,
    pub exclude: Option<PathBuf>,
    /// Feature rows to train a head on (`--embeddings`) instead of the images of `corpus`.
    #[serde(default)]
    pub features: Option<FeatureSource>,
    /// Augmented views per image cached when a frozen trunk's features are (with augmentation).
    #[serde(default = "default_cached_views")]
    pub cached_views: usize,
    /// What `--mining auto` chose and why (absent when `--mining` was given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mining_choice: Option<MiningChoice>,
}

fn default_memory_warmup() -> Period {
    Period::Epochs(1.0)
}

fn default_global_warmup() -> Period {
    Period::ZERO
}

/// Four augmented views per image: a head over a frozen trunk still sees varied inputs, for
/// five trunk passes per image in the whole run.
pub const DEFAULT_CACHED_VIEWS: usize = 4;

fn default_cached_views() -> usize {
    DEFAULT_CACHED_VIEWS
}

impl TrainConfig {
    /// The rules of every negative the trainer takes from the whole-corpus index (global
    /// rounds, memory negatives): the loss's margin and distance, `--strategy` and the
    /// false-negative guard.
    fn index_rules(
        &self,
        positives: PositiveRule,
        negatives_per_anchor: usize,
        seed: u64,
    ) -> mine::MiningRules {
        mine::MiningRules {
            margin: self.loss.margin,
            distance: self.loss.distance,
            strategy: self.strategy.clone(),
            positives,
            negatives_per_anchor,
            seed,
            skip_nearest: self.skip_nearest,
            negative_floor: self.negative_floor,
            ..mine::MiningRules::default()
        }
    }
}

/// `train --embeddings FILE [--labels CSV] [--normalise]`: the rows a head trains on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSource {
    pub embeddings: PathBuf,
    pub labels: Option<PathBuf>,
    /// L2-normalise each row before it is standardised (the head does, so `embed` does too).
    pub normalise: bool,
}

impl FeatureSource {
    /// The rows' samples (named by their paths, which must be distinct), the rows, and the
    /// corpus folder they were computed from when recorded.
    fn load(&self) -> Result<(Vec<Sample>, FeatureTable, Option<PathBuf>), TrainError> {
        let input = EmbeddingsInput::from_args(&self.embeddings, self.labels.as_deref())
            .map_err(TrainError::Input)?;
        let set = store::open_rows(&input, RowCheck::AsTheyAre)
            .map_err(|e| TrainError::Input(e.to_string()))?;
        let mut row_of = HashMap::with_capacity(set.len());
        for (i, s) in set.samples.iter().enumerate() {
            if row_of.insert(s.path.clone(), i).is_some() {
                return Err(TrainError::Input(format!(
                    "{}: the path {:?} names more than one row; each row must be a distinct sample",
                    input.path().display(),
                    s.path
                )));
            }
        }
        let samples = set
            .samples
            .iter()
            .map(|s| Sample {
                path: s.path.clone(),
                file: PathBuf::from(&s.path),
                label: s.label.clone(),
                split: s.split.clone(),
            })
            .collect();
        let root = set.meta.corpus_root.as_ref().map(PathBuf::from);
        Ok((
            samples,
            FeatureTable {
                row_of,
                data: set.data,
                dim: set.dim,
            },
            root,
        ))
    }
}

/// Feature rows by sample path, as read.
struct FeatureTable {
    row_of: HashMap<String, usize>,
    data: Vec<f32>,
    dim: usize,
}

impl FeatureTable {
    /// The rows of `samples`, in that order, as read (the head normalises and standardises).
    fn gather(&self, samples: &[Sample]) -> FeatureRows {
        let mut data = Vec::with_capacity(samples.len() * self.dim);
        for s in samples {
            let i = self.row_of[&s.path];
            data.extend_from_slice(&self.data[i * self.dim..(i + 1) * self.dim]);
        }
        FeatureRows {
            data,
            dim: self.dim,
            samples: samples.len(),
            views: 1,
        }
    }
}

pub use crate::batches::DEFAULT_RANDOM_CLASSES;

fn default_random_classes() -> f64 {
    DEFAULT_RANDOM_CLASSES
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Input(String),
    #[error("loss became {value} at epoch {epoch}, step {step}; stopped. The last good checkpoint is {last}. Try a lower --lr.")]
    NonFinite {
        value: f64,
        epoch: usize,
        step: usize,
        last: PathBuf,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl crate::exit::Classify for TrainError {
    fn is_input_error(&self) -> bool {
        match self {
            TrainError::Corpus(_) | TrainError::Input(_) => true,
            TrainError::Model(e) => e.is_input_error(),
            _ => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A split's inputs as read, before a frozen trunk's features replace its images.
enum RawInputs {
    Images(DecodedImages),
    Rows(FeatureRows),
}

/// The run directory's folder of cached trunk features (`train.npy` + `train.json` with the
/// key it was computed under, and `val.*`).
pub const FEATURE_CACHE: &str = "features";

/// One split's samples with dense label ids and their inputs (decoded images, or feature
/// rows): everything the batch sources, prefetch and validation need.
struct TrainingSet {
    samples: Vec<Sample>,
    labels: Vec<u32>,
    /// Label names by id (shared by both splits).
    label_names: Vec<String>,
    inputs: Box<dyn Inputs>,
}

impl TrainingSet {
    fn new(
        samples: Vec<Sample>,
        label_ids: &BTreeMap<String, u32>,
        inputs: Box<dyn Inputs>,
    ) -> Self {
        let mut label_names = vec![String::new(); label_ids.len()];
        for (name, &id) in label_ids {
            label_names[id as usize] = name.clone();
        }
        let labels = samples.iter().map(|s| label_ids[&s.label]).collect();
        TrainingSet {
            samples,
            labels,
            label_names,
            inputs,
        }
    }

    fn len(&self) -> usize {
        self.samples.len()
    }

    fn embed(&self, model: &Embedder) -> Result<Vec<f32>, ModelError> {
        self.inputs.embed(model)
    }
}

/// Splits the corpus into training and validation samples; warnings name what was ignored.
fn split(
    samples: Vec<Sample>,
    validation: &Validation,
    seed: u64,
) -> (Vec<Sample>, Vec<Sample>, Vec<String>, Validation) {
    let mut by_class: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for s in samples {
        by_class.entry(s.label.clone()).or_default().push(s);
    }
    let mut train = Vec::new();
    let mut val = Vec::new();
    let mut warnings = Vec::new();
    let has_splits = by_class.values().flatten().any(|s| !s.split.is_empty());
    let sizes: Vec<usize> = by_class.values().map(Vec::len).collect();
    let validation = match validation {
        Validation::Auto if has_splits => Validation::SplitColumn,
        Validation::Auto => auto_holdout(&sizes),
        other => other.clone(),
    };
    match validation {
        Validation::SplitColumn => {
            let is = |split: &str, name: &str| corpus::split_matches(split, name);
            let role = |split: &str| {
                if is(split, "train") {
                    Some(SplitRole::Train)
                } else if ["val", "valid", "validation"].iter().any(|v| is(split, v)) {
                    Some(SplitRole::Validate)
                } else if is(split, "test") {
                    Some(SplitRole::Test)
                } else {
                    None
                }
            };
            let all = by_class.values().flatten();
            let has_val = all
                .clone()
                .any(|s| role(&s.split) == Some(SplitRole::Validate));
            let mut unknown: BTreeMap<String, usize> = BTreeMap::new();
            for s in by_class.into_values().flatten() {
                match role(&s.split) {
                    Some(SplitRole::Train) => train.push(s),
                    Some(SplitRole::Validate) => val.push(s),
                    // Test samples validate only when no validation split exists.
                    Some(SplitRole::Test) if !has_val => val.push(s),
                    Some(SplitRole::Test) => {}
                    None => *unknown.entry(s.split.clone()).or_default() += 1,
                }
            }
            for (name, count) in unknown {
                warnings.push(format!(
                    "{count} sample(s) have split {name:?}, which is neither train, val(idation) nor test: they are not used"
                ));
            }
        }
        Validation::Classes(fraction) => {
            let mut names: Vec<String> = by_class.keys().cloned().collect();
            Rng::for_item(seed, 0x5E1_C1A5).shuffle(&mut names);
            // Two classes at least: one held-out class has no other-label row to rank against.
            let held = ((names.len() as f64 * fraction).round() as usize)
                .max(if fraction > 0.0 { 2 } else { 0 })
                .min(names.len().saturating_sub(2));
            let held: HashSet<String> = names.into_iter().take(held).collect();
            for (label, members) in by_class {
                if held.contains(&label) {
                    val.extend(members)
                } else {
                    train.extend(members)
                }
            }
        }
        Validation::Samples(fraction) => {
            for (i, (_, mut members)) in by_class.into_iter().enumerate() {
                Rng::for_item(seed ^ 0x5A3B, i as u64).shuffle(&mut members);
                let held = (members.len() as f64 * fraction).round() as usize;
                // A single validation image of its class is a query with no positive: hold
                // two, or none when that would leave fewer than two to train on.
                let held = match held {
                    1 if members.len() >= 4 => 2,
                    1 => 0,
                    h => h,
                };
                let held = held.min(members.len().saturating_sub(2));
                val.extend(members.drain(..held));
                train.extend(members);
            }
        }
        Validation::Auto => unreachable!("resolved above"),
    }
    train.sort_by(|a, b| a.path.cmp(&b.path));
    val.sort_by(|a, b| a.path.cmp(&b.path));
    (train, val, warnings, validation)
}

/// Below this median class size a tenth of each class is under two images, which validates
/// nothing (a query needs a positive): such corpora hold out whole classes instead.
const SMALL_CLASS: usize = 20;
/// Classes needed to hold out a tenth of them and still train on most.
const CLASSES_TO_HOLD_OUT: usize = 10;

/// `Validation::Auto` without a split column: unseen classes (the metric-learning protocol,
/// like the test split) for many small classes; otherwise a tenth of every class's samples.
fn auto_holdout(class_sizes: &[usize]) -> Validation {
    let mut sorted = class_sizes.to_vec();
    sorted.sort_unstable();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
    if median < SMALL_CLASS && sorted.len() >= CLASSES_TO_HOLD_OUT {
        Validation::Classes(0.1)
    } else {
        Validation::Samples(0.1)
    }
}

/// Validation queries that can be scored: samples whose label has another validation sample.
fn scorable_queries(labels: &[u32]) -> usize {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for &l in labels {
        *counts.entry(l).or_default() += 1;
    }
    labels.iter().filter(|l| counts[l] >= 2).count()
}

/// What validates, in words, for the run's first lines on stderr.
fn describe_validation(validation: &Validation, val: &[Sample], queries: usize) -> String {
    let classes: HashSet<&str> = val.iter().map(|s| s.label.as_str()).collect();
    let how = match validation {
        Validation::Classes(_) => "classes held out, unseen in training",
        Validation::Samples(_) => "samples held out of each class",
        Validation::SplitColumn => "the split column",
        Validation::Auto => "auto",
    };
    format!(
        "validation: {} samples of {} classes ({how}), {queries} scorable queries",
        val.len(),
        classes.len()
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SplitRole {
    Train,
    Validate,
    Test,
}

/// What a finished (or resumed and finished) run reports.
pub struct TrainSummary {
    pub rows: Vec<MetricsRow>,
    pub best_epoch: usize,
    pub warnings: Vec<String>,
}

/// Steps the default epoch count aims for, and its bounds.
const DEFAULT_STEPS: usize = 3000;
const DEFAULT_EPOCHS: (usize, usize) = (10, 60);

/// `--epochs` when not given (0): enough epochs for about [`DEFAULT_STEPS`] P×K batches, so a
/// small corpus trains long enough to learn and a large one stops at the lower bound.
pub fn default_epochs(train_images: usize, batch_images: usize) -> usize {
    let steps = train_images.div_ceil(batch_images.max(1)).max(1);
    DEFAULT_STEPS
        .div_ceil(steps)
        .clamp(DEFAULT_EPOCHS.0, DEFAULT_EPOCHS.1)
}

/// Trains from scratch (`resume = false`) or continues the run in `cfg.out`; an epoch count
/// of 0 is replaced by [`default_epochs`] (and recorded so).
pub fn run(cfg: &TrainConfig, resume: bool) -> Result<TrainSummary, TrainError> {
    let device = parse_device(&cfg.device).map_err(TrainError::Input)?;
    let run = &cfg.out;
    let (samples, rows_by_path, root) = match &cfg.features {
        Some(features) => {
            let (samples, rows, root) = features.load()?;
            (samples, Some(rows), root)
        }
        None => {
            let corpus = corpus::open(&cfg.corpus)?;
            for p in &corpus.problems {
                eprintln!("warning: skipping {}: {}", p.path, p.reason);
            }
            (corpus.samples, None, corpus::root_of(&cfg.corpus))
        }
    };
    // The exclusion `mine` applies: an audit's list resolved under its corpus folder, and a
    // warning when rows match no sample.
    let mut exclude_warning = None;
    let excluded = match &cfg.exclude {
        Some(path) => {
            let list =
                mine::ExcludeList::read(path).map_err(|e| TrainError::Input(e.to_string()))?;
            let (matched, warning) =
                list.matching_paths(samples.iter().map(|s| s.path.as_str()), root.as_deref());
            exclude_warning = warning;
            matched
        }
        None => HashSet::new(),
    };
    let samples: Vec<Sample> = samples
        .into_iter()
        .filter(|s| !excluded.contains(&s.path))
        .collect();
    let (label_names, _) = crate::corpus::label_ids(samples.iter().map(|s| s.label.as_str()));
    let label_ids: BTreeMap<String, u32> = label_names
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), i as u32))
        .collect();
    let (train_samples, val_samples, mut notices, validation) =
        split(samples, &cfg.validation, cfg.seed);
    notices.extend(exclude_warning);
    let mut cfg = cfg.clone();
    // Recorded resolved, so that config.json says what validated and a resume splits alike.
    cfg.validation = validation;
    // The inputs of each split, before a frozen trunk's features replace its images.
    let (train_inputs, val_inputs) = match &rows_by_path {
        Some(rows) => {
            let train = rows.gather(&train_samples);
            if !resume {
                cfg.network = cfg.network.with_input_statistics(&train.data, train.dim);
            }
            let val = rows.gather(&val_samples);
            (
                (train_samples, RawInputs::Rows(train)),
                (val_samples, RawInputs::Rows(val)),
            )
        }
        None => {
            let decode = |samples: &[Sample]| {
                let (pixels, kept, problems) = decode_samples(samples, &cfg.network.preprocess);
                for p in &problems {
                    eprintln!("warning: skipping {}: {}", p.path, p.reason);
                }
                let images = DecodedImages {
                    pixels,
                    preprocess: cfg.network.preprocess.clone(),
                };
                (kept, RawInputs::Images(images))
            };
            (decode(&train_samples), decode(&val_samples))
        }
    };
    let train_labels: Vec<u32> = train_inputs.0.iter().map(|s| label_ids[&s.label]).collect();
    check_trainable(&train_labels)?;
    if cfg.epochs == 0 {
        cfg.epochs = default_epochs(
            train_inputs.0.len(),
            cfg.classes_per_batch * cfg.samples_per_class,
        );
    }
    if cfg.mining == Mining::Auto {
        let light = cfg.features.is_some()
            || matches!(
                cfg.network.architecture,
                Architecture::Backbone {
                    trunk: TrunkMode::Frozen,
                    ..
                }
            );
        let choice = Mining::choose(&train_labels, light, cfg.classes_per_batch);
        cfg.mining = choice.chose.clone();
        cfg.mining_choice = Some(choice);
    }
    let cfg = &cfg;
    let val_labels: Vec<u32> = val_inputs.0.iter().map(|s| label_ids[&s.label]).collect();
    let val_queries = scorable_queries(&val_labels);
    if val_inputs.0.len() < 2 {
        notices.push(format!(
            "the validation split has {} sample(s): no validation metrics, and best/ is simply the last epoch. Give the corpus a `val` split, or use --val-samples 0.1 or --val-classes 0.25",
            val_inputs.0.len()
        ));
    } else if val_queries == 0 {
        notices.push(format!(
            "no validation sample shares its label with another ({} samples of {} labels): validation measures nothing, and best/ is simply the last epoch. Give the corpus a `val` split with two or more images per class, or use --val-classes 0.1",
            val_inputs.0.len(),
            val_labels.iter().collect::<HashSet<_>>().len()
        ));
    } else {
        eprintln!(
            "{}",
            describe_validation(&cfg.validation, &val_inputs.0, val_queries)
        );
    }
    // Said before training starts, where they can still save a wasted run.
    for w in &notices {
        eprintln!("warning: {w}");
    }
    let mut warnings = Vec::new();

    let (mut model, mut optimizer, mut state, mut rows) = if resume {
        let dir = run_dir::resumable(run).ok_or_else(|| {
            TrainError::Input(format!(
                "{}: no checkpoint to resume (last/state.json)",
                run.display()
            ))
        })?;
        // A larger --epochs extends the run: the config says so from now on.
        write_json(&run.join(CONFIG_JSON), cfg).map_err(io_err(run))?;
        let model = Embedder::load(&dir, device)?;
        let state = run_dir::read_state(&dir)?;
        let mut optimizer = Optimizer::new(&model.vs, cfg.optim.clone());
        optimizer.load(&dir.join(run_dir::OPTIMIZER_WEIGHTS), state.step as i64)?;
        let mut rows = run_dir::read_metrics(run);
        rows.retain(|r| r.epoch <= state.epoch);
        (model, optimizer, state, rows)
    } else {
        if run_dir::resumable(run).is_some() {
            return Err(TrainError::Input(format!(
                "{} already holds a training run; continue it with --resume {} or choose another --out",
                run.display(),
                run.display()
            )));
        }
        // Without a checkpoint nothing there can be resumed; mined rounds of an earlier start
        // would otherwise be taken for this run's.
        run_dir::clear_unfinished(run).map_err(io_err(run))?;
        write_json(&run.join(CONFIG_JSON), cfg).map_err(io_err(run))?;
        let model = match &cfg.model {
            Some(dir) => Embedder::load_as(dir, cfg.network.clone(), device)?,
            None => Embedder::init(cfg.network.clone(), device)?,
        };
        let optimizer = Optimizer::new(&model.vs, cfg.optim.clone());
        let state = RunState {
            epoch: 0,
            step: 0,
            best_map_at_r: f64::NEG_INFINITY,
            best_epoch: 0,
        };
        (model, optimizer, state, Vec::new())
    };
    // A frozen trunk gives each image the same features every epoch: computed once (per
    // cached view), the epochs then train the head at the cost of a small GEMM.
    let cached = matches!(
        cfg.network.architecture,
        Architecture::Backbone {
            trunk: TrunkMode::Frozen,
            ..
        }
    );
    let views = if cfg.augment { cfg.cached_views } else { 0 };
    let cache_dir = run.join(FEATURE_CACHE);
    let to_set = |(samples, raw): (Vec<Sample>, RawInputs), name: &str, views: usize| {
        let inputs: Box<dyn Inputs> = match raw {
            RawInputs::Rows(rows) => Box::new(rows),
            RawInputs::Images(images) if cached => Box::new(inputs::cached_trunk_features(
                &model, &images, &samples, views, cfg.seed, &cache_dir, name,
            )?),
            RawInputs::Images(images) => Box::new(images),
        };
        Ok::<_, TrainError>(TrainingSet::new(samples, &label_ids, inputs))
    };
    let train = to_set(train_inputs, "train", views)?;
    let val = to_set(val_inputs, "val", 0)?;
    if rows.is_empty() {
        let (before, _) = validate(&model, &val)?;
        rows.push(MetricsRow {
            epoch: 0,
            step: 0,
            loss: f64::NAN,
            active_fraction: f64::NAN,
            triplets: 0,
            p_at_1: before.p_at_1,
            r_precision: before.r_precision,
            map_at_r: before.map_at_r,
            lr: 0.0,
            seconds: 0.0,
        });
    }

    let mut source = source::for_config(cfg, &train)?;
    if resume {
        if let Some(dir) = run_dir::resumable(run) {
            source.load_state(&dir)?;
        }
    }
    let tiles = Tiles::new(&train.samples, report::THUMB);
    let bar = crate::progress::bar(
        (cfg.epochs - state.epoch.min(cfg.epochs)) as u64,
        "training",
    );
    for epoch in state.epoch..cfg.epochs {
        let started = Instant::now();
        model.set_trunk_trainable(epoch >= cfg.freeze_backbone_epochs);
        // Light steps (a head over feature rows) run on one libtorch thread; validation
        // gets them all back.
        let threads = tch::get_num_threads();
        if train.inputs.light_steps() {
            tch::set_num_threads(1);
        }
        let sums = train_epoch(
            cfg,
            &model,
            &mut optimizer,
            &mut state,
            source.as_mut(),
            &train,
            epoch,
        );
        tch::set_num_threads(threads);
        let sums = sums?;
        let (metrics, spread) = validate(&model, &val)?;
        state.epoch = epoch + 1;
        let row = MetricsRow {
            epoch: epoch + 1,
            step: state.step,
            loss: if sums.active == 0 {
                0.0
            } else {
                sums.loss_sum / sums.active as f64
            },
            active_fraction: if sums.total == 0 {
                0.0
            } else {
                sums.active as f64 / sums.total as f64
            },
            triplets: sums.total,
            p_at_1: metrics.p_at_1,
            r_precision: metrics.r_precision,
            map_at_r: metrics.map_at_r,
            lr: sums.lr,
            seconds: started.elapsed().as_secs_f64(),
        };
        if sums.total == 0 {
            warnings.push(format!(
                "epoch {}: no triplet could be formed in any batch (no class had two samples in a batch, or every negative was excluded); try more --samples-per-class or another --mining",
                epoch + 1
            ));
        } else if sums.active == 0 {
            warnings.push(format!(
                "epoch {}: every triplet already satisfied the margin (zero loss); try a harder --strategy or a larger --margin",
                epoch + 1
            ));
        }
        if let Some(spread) = spread {
            if spread < 0.05 {
                warnings.push(format!(
                    "epoch {}: embeddings are collapsing (mean pairwise distance {spread:.4}); try a lower --lr or a softer strategy",
                    epoch + 1
                ));
            }
        }
        rows.push(row);
        // Without validation metrics the latest epoch is the best one known; an epoch whose
        // validation scored no query never counts as an improvement.
        let improved = metrics.map_at_r > state.best_map_at_r || val_queries == 0;
        if improved {
            state.best_map_at_r = metrics.map_at_r;
            state.best_epoch = epoch + 1;
        }
        model.spec.training = training_note(cfg, &state);
        // Metrics first: rows past the checkpoint's epoch are dropped on resume, missing ones
        // could not be recovered.
        run_dir::write_metrics(run, &rows).map_err(io_err(run))?;
        report::write(run, cfg, &rows, state.best_epoch, &tiles).map_err(io_err(run))?;
        let source_state = |dir: &Path| source.save_state(dir);
        run_dir::save_checkpoint(
            &run_dir::last(run),
            &model,
            &optimizer,
            &state,
            &source_state,
        )?;
        if improved {
            run_dir::save_checkpoint(
                &run_dir::best(run),
                &model,
                &optimizer,
                &state,
                &source_state,
            )?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(TrainSummary {
        rows,
        best_epoch: state.best_epoch,
        warnings,
    })
}

/// What an epoch's steps add up to.
struct EpochSums {
    /// Sum over steps of the mean loss of the active triplets, weighted by their number.
    loss_sum: f64,
    active: usize,
    total: usize,
    /// The learning rate of the last step.
    lr: f64,
}

/// Plans, runs and closes epoch `epoch`. A prefetch thread builds each batch's input
/// (gathered, normalised, augmented) while the step before it runs backward and updates the
/// weights. The source still draws a batch only after the step before it has reported what
/// it trained on, so the batches are the same as without prefetching.
fn train_epoch(
    cfg: &TrainConfig,
    model: &Embedder,
    optimizer: &mut Optimizer,
    state: &mut RunState,
    source: &mut dyn source::BatchSource,
    train: &TrainingSet,
    epoch: usize,
) -> Result<EpochSums, TrainError> {
    let steps_in_epoch = source.begin_epoch(epoch, state.step, model)?;
    let mut sums = EpochSums {
        loss_sum: 0.0,
        active: 0,
        total: 0,
        lr: 0.0,
    };
    // The augmentation of the epoch's `step`-th batch draws from its own stream, so that a
    // resumed run augments as the uninterrupted one did.
    let augment_rng = |step: usize| {
        cfg.augment
            .then(|| Rng::for_item(cfg.seed ^ ((epoch as u64) << 32), step as u64))
    };
    std::thread::scope(|scope| {
        let prefetch = Prefetch::spawn(scope, train);
        let mut next = source.next_batch(model)?;
        if let Some(batch) = &next {
            prefetch.request(&batch.images, augment_rng(0));
        }
        let mut step_in_epoch = 0;
        while let Some(batch) = next.take() {
            let at = RunPosition {
                epoch,
                step: step_in_epoch,
                steps_in_epoch,
                epochs: cfg.epochs,
            };
            step_in_epoch += 1;
            sums.lr = learning_rate(&cfg.optim, at);
            let input = prefetch.take();
            let outcome = train_step(cfg, model, train, &batch, input)?;
            if let Some(step) = &outcome {
                source.trained(&TrainedStep {
                    images: &batch.images,
                    embeddings: &step.embeddings,
                    mined: &step.mined,
                });
            }
            next = source.next_batch(model)?;
            if let Some(batch) = &next {
                prefetch.request(&batch.images, augment_rng(step_in_epoch));
            }
            let Some(step) = outcome else {
                continue;
            };
            let value = f64::try_from(&step.loss).unwrap_or(f64::NAN);
            if !value.is_finite() {
                return Err(TrainError::NonFinite {
                    value,
                    epoch: epoch + 1,
                    step: state.step,
                    last: run_dir::last(&cfg.out),
                });
            }
            optimizer.zero_grad();
            step.loss.backward();
            optimizer.step(sums.lr);
            state.step += 1;
            sums.loss_sum += value * step.active as f64;
            sums.active += step.active;
            sums.total += step.total;
        }
        Ok::<_, TrainError>(())
    })?;
    source.end_epoch()?;
    Ok(sums)
}

fn training_note(cfg: &TrainConfig, state: &RunState) -> serde_json::Value {
    serde_json::json!({
        "corpus": cfg.corpus,
        "mining": cfg.mining,
        "epochs_completed": state.epoch,
        "steps": state.step,
        "best_epoch": state.best_epoch,
        "best_map_at_r": state.best_map_at_r,
        "margin": crate::definitions::json_f32(cfg.loss.margin),
        "distance": cfg.loss.distance,
    })
}

fn check_trainable(labels: &[u32]) -> Result<(), TrainError> {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for &l in labels {
        *counts.entry(l).or_default() += 1;
    }
    if counts.len() < 2 || counts.values().all(|&n| n < 2) {
        return Err(TrainError::Input(format!(
            "no triplet can be formed from the training split ({} classes, largest has {} samples): triplets need two classes and a class with two samples",
            counts.len(),
            counts.values().max().copied().unwrap_or(0)
        )));
    }
    Ok(())
}

/// Validation metrics and the mean pairwise distance (the collapse check), from one
/// embedding pass over the validation split; both are absent below two samples, and the
/// metrics are NaN ("not measured", never 0.0) when no query could be scored.
fn validate(model: &Embedder, val: &TrainingSet) -> Result<(Metrics, Option<f64>), ModelError> {
    if val.len() < 2 {
        let none = Metrics {
            p_at_1: f64::NAN,
            r_precision: f64::NAN,
            map_at_r: f64::NAN,
            ..eval::from_neighbours(&val.labels, &[], &[])
        };
        return Ok((none, None));
    }
    let data = val.embed(model)?;
    let dim = model.spec.dim as usize;
    let points = Points {
        data: &data,
        dim,
        labels: &val.labels,
    };
    let mut metrics = eval::evaluate(points);
    if metrics.queries == 0 {
        metrics.p_at_1 = f64::NAN;
        metrics.r_precision = f64::NAN;
        metrics.map_at_r = f64::NAN;
    }
    Ok((metrics, Some(mean_pairwise_distance(&data, dim))))
}

/// Mean distance over up to 2,000 seeded random pairs of rows.
fn mean_pairwise_distance(data: &[f32], dim: usize) -> f64 {
    let n = data.len() / dim;
    let mut rng = Rng::new(17);
    let pairs = 2000.min(n * (n - 1) / 2);
    let mut sum = 0.0;
    for _ in 0..pairs {
        let (i, j) = (rng.below(n), rng.below(n));
        sum += crate::definitions::Distance::Euclidean
            .between(&data[i * dim..(i + 1) * dim], &data[j * dim..(j + 1) * dim])
            as f64;
    }
    sum / pairs as f64
}

struct StepOutcome {
    loss: Tensor,
    active: usize,
    total: usize,
    /// The batch's in-batch triplets as training-set indices (empty for given triplets).
    mined: Vec<Triplet>,
    /// The batch's embeddings, detached, when they were fetched for mining.
    embeddings: Vec<f32>,
}

/// Forward pass, mining (for in-batch miners), memory negatives and the reduced loss.
fn train_step(
    cfg: &TrainConfig,
    model: &Embedder,
    train: &TrainingSet,
    batch: &StepBatch,
    input: Tensor,
) -> Result<Option<StepOutcome>, ModelError> {
    let images = &batch.images;
    if images.len() < 3 {
        return Ok(None);
    }
    let position: HashMap<usize, i64> = images
        .iter()
        .enumerate()
        .map(|(i, &s)| (s, i as i64))
        .collect();
    let emb = train.inputs.forward(model, &input, true)?;
    let mut embeddings = Vec::new();
    let (triplets, mined): (Vec<(i64, i64, i64)>, Vec<Triplet>) = match &batch.triplets {
        BatchTriplets::Given(ts) => (
            ts.iter()
                .map(|t| {
                    (
                        position[&t.anchor],
                        position[&t.positive],
                        position[&t.negative],
                    )
                })
                .collect(),
            Vec::new(),
        ),
        BatchTriplets::Mine(miner) => {
            let labels: Vec<u32> = images.iter().map(|&i| train.labels[i]).collect();
            embeddings =
                Vec::<f32>::try_from(emb.detach().to_device(Device::Cpu).contiguous().view([-1]))?;
            let in_batch = miner.mine(&embeddings, cfg.network.dim as usize, &labels, cfg);
            let positions = in_batch
                .iter()
                .map(|t| (t.anchor as i64, t.positive as i64, t.negative as i64))
                .collect();
            let mined = in_batch
                .into_iter()
                .map(|t| Triplet {
                    anchor: images[t.anchor],
                    positive: images[t.positive],
                    negative: images[t.negative],
                    ..t
                })
                .collect();
            (positions, mined)
        }
    };
    if triplets.is_empty() {
        return Ok(None);
    }
    let column = |values: Vec<i64>| Tensor::from_slice(&values).to_device(emb.device());
    let mut losses = loss::per_triplet(
        &emb,
        &column(triplets.iter().map(|t| t.0).collect()),
        &column(triplets.iter().map(|t| t.1).collect()),
        &column(triplets.iter().map(|t| t.2).collect()),
        &cfg.loss,
    );
    if let Some(memory) = &batch.memory {
        losses = Tensor::cat(
            &[losses, memory_losses(&emb, &position, memory, &cfg.loss)],
            0,
        );
    }
    let r = loss::reduce(&losses);
    Ok(Some(StepOutcome {
        loss: r.loss,
        active: r.active,
        total: r.total,
        mined,
        embeddings,
    }))
}

/// Losses of the memory triplets: each anchor against the stored negative and the positive
/// that negative was chosen for (its current embedding when it is in the batch, else the
/// stored one, a constant like the negative).
fn memory_losses(
    emb: &Tensor,
    position: &HashMap<usize, i64>,
    memory: &MemoryNegatives,
    loss: &LossConfig,
) -> Tensor {
    let dim = emb.size()[1];
    let device = emb.device();
    let column = |values: &[i64]| Tensor::from_slice(values).to_device(device);
    let stored = |v: &[f32]| Tensor::from_slice(v).view([-1, dim]).to_device(device);
    let anchors: Vec<i64> = memory.triplets.iter().map(|t| position[&t.0]).collect();
    // Row of each positive in [batch embeddings; stored positives].
    let batch = emb.size()[0];
    let positive_rows: Vec<i64> = memory
        .triplets
        .iter()
        .enumerate()
        .map(|(row, t)| position.get(&t.1).copied().unwrap_or(batch + row as i64))
        .collect();
    let positives = Tensor::cat(
        &[emb.shallow_clone(), stored(&memory.positives).detach()],
        0,
    )
    .index_select(0, &column(&positive_rows));
    loss::losses_of(
        &emb.index_select(0, &column(&anchors)),
        &positives,
        &stored(&memory.negatives).detach(),
        loss,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(splits: &[&str]) -> Vec<Sample> {
        splits
            .iter()
            .enumerate()
            .map(|(i, split)| Sample {
                path: format!("c{}/{i}.png", i % 2),
                file: PathBuf::from(format!("{i}.png")),
                label: format!("c{}", i % 2),
                split: split.to_string(),
            })
            .collect()
    }

    #[test]
    fn split_column_is_case_insensitive_prefers_val_over_test_and_names_unknown_values() {
        let samples = corpus(&["Train", "TRAIN", "Val", "test", "holdout", "train "]);
        let (train, val, warnings, _) = split(samples, &Validation::SplitColumn, 0);
        assert_eq!(train.len(), 3);
        assert_eq!(
            val.len(),
            1,
            "test samples stay out when a val split exists"
        );
        assert_eq!(val[0].split, "Val");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("\"holdout\""), "{warnings:?}");

        let (_, val, warnings, chosen) =
            split(corpus(&["train", "train", "Test"]), &Validation::Auto, 0);
        assert_eq!(val.len(), 1, "test validates when there is no val split");
        assert!(warnings.is_empty());
        assert_eq!(chosen, Validation::SplitColumn);
    }

    /// `classes` classes of `per_class` samples, no split column.
    fn unsplit(classes: usize, per_class: usize) -> Vec<Sample> {
        (0..classes * per_class)
            .map(|i| Sample {
                path: format!("c{}/{i}.png", i % classes),
                file: PathBuf::from(format!("{i}.png")),
                label: format!("c{}", i % classes),
                split: String::new(),
            })
            .collect()
    }

    /// Validation as a user gets it without a split column: every held-out sample can be a
    /// query with a positive, whatever the class sizes.
    #[test]
    fn auto_validation_scores_queries_on_every_corpus_shape() {
        for (classes, per_class, want) in [
            (400, 5, Validation::Classes(0.1)),
            (30, 10, Validation::Classes(0.1)),
            (10, 700, Validation::Samples(0.1)),
            (3, 10, Validation::Samples(0.1)),
        ] {
            let (train, val, _, chosen) = split(unsplit(classes, per_class), &Validation::Auto, 4);
            assert_eq!(chosen, want, "{classes} x {per_class}");
            let ids: Vec<u32> = val.iter().map(|s| s.label[1..].parse().unwrap()).collect();
            assert_eq!(scorable_queries(&ids), val.len(), "{classes} x {per_class}");
            assert!(!val.is_empty() && train.len() > val.len());
        }
        // An explicit tenth of classes of 10 holds 2 of each, not one query without a positive.
        let (_, val, _, _) = split(unsplit(3, 10), &Validation::Samples(0.1), 4);
        assert_eq!(val.len(), 6);
        let (_, val, _, _) = split(unsplit(3, 3), &Validation::Samples(0.3), 4);
        assert!(val.is_empty(), "classes of 3 keep both training images");
    }

    /// A memory triplet is trained against the positive its negative was chosen for: the
    /// batch's current embedding of it when it is in the batch, else its stored one; stored
    /// vectors are constants.
    #[test]
    fn memory_triplets_train_against_their_own_positive() {
        use crate::definitions::{triplet_loss, Distance};
        let rows: [[f32; 2]; 3] = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]];
        let emb = Tensor::from_slice(rows.as_flattened())
            .view([3, 2])
            .set_requires_grad(true);
        // Batch images 10, 11, 12 at rows 0..3; sample 11 (row 1) is 10's in-batch
        // positive, but the memory negatives were chosen for 10 with positives 12 (in the
        // batch) and 40 (stored only).
        let position: HashMap<usize, i64> = [(10, 0), (11, 1), (12, 2)].into();
        let stored_positive = [0.6f32, 0.8];
        let stored_negative = [0.28f32, 0.96];
        let memory = MemoryNegatives {
            triplets: vec![(10, 12, 77), (10, 40, 77)],
            positives: [rows[2], stored_positive].concat(),
            negatives: [stored_negative, stored_negative].concat(),
        };
        let cfg = LossConfig {
            margin: 2.0,
            distance: Distance::Euclidean,
            soft_margin: false,
            swap: false,
        };
        let losses = memory_losses(&emb, &position, &memory, &cfg);
        let got = Vec::<f32>::try_from(&losses).unwrap();
        let d = |x: &[f32], y: &[f32]| Distance::Euclidean.between(x, y);
        let want = [
            triplet_loss(d(&rows[0], &rows[2]), d(&rows[0], &stored_negative), 2.0),
            triplet_loss(
                d(&rows[0], &stored_positive),
                d(&rows[0], &stored_negative),
                2.0,
            ),
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} against {want:?}");
        }
        let first_positive =
            triplet_loss(d(&rows[0], &rows[1]), d(&rows[0], &stored_negative), 2.0);
        assert!(
            (got[0] - first_positive).abs() > 0.05,
            "not the first in-batch positive"
        );
        losses.sum(tch::Kind::Float).backward();
        let grad = Vec::<f32>::try_from(emb.grad().view([-1])).unwrap();
        assert!(
            grad[0..2].iter().any(|&g| g != 0.0),
            "the anchor is trained"
        );
        assert!(
            grad[4..6].iter().any(|&g| g != 0.0),
            "an in-batch positive is trained"
        );
        assert!(grad[2..4].iter().all(|&g| g == 0.0), "row 1 takes no part");
    }

    #[test]
    fn default_epochs_aim_at_a_step_budget_within_bounds() {
        assert_eq!(default_epochs(200, 32), DEFAULT_EPOCHS.1);
        assert_eq!(default_epochs(1_000_000, 32), DEFAULT_EPOCHS.0);
        assert_eq!(default_epochs(12_800, 64), DEFAULT_STEPS.div_ceil(200));
    }
}
