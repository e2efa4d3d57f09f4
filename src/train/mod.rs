//! The triplet-loss trainer: global re-mining over the training split (FaceNet-style offline
//! mining, with the same miner as `tripmine mine`), in-batch miners over P×K batches as
//! baselines, or a fixed triplet CSV; validation metrics every epoch; resumable run dirs.

mod augment;
mod loss;
mod optim;
mod report;
mod run_dir;
mod sampler;

pub use loss::LossConfig;
pub use optim::{OptimConfig, OptimizerKind, ScheduleKind};
pub use report::{RoundRecord, REPORT_HTML};
pub use run_dir::{MetricsRow, RunState, CONFIG_JSON, METRICS_CSV};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::corpus::{self, CorpusError, Sample};
use crate::embed::{decode_samples, embed_pixels, pixel_tensor};
use crate::eval::{self, Metrics};
use crate::knn::{ExactIndex, HnswIndex, HnswParams, KnnChoice, NeighbourIndex, Points};
use crate::mine::{self, MiningRules, NegativeOrder, PositiveRule, Strategy, Triplet};
use crate::model::{parse_device, Embedder, ModelError, ModelSpec};
use crate::output::{write_atomic, write_json};
use crate::report::Tiles;
use crate::rng::Rng;
use crate::triplets::{self, TripletRow};
use optim::{learning_rate, Optimizer};

/// How each step's triplets are found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mining {
    /// Re-embed the training split and mine it whole every `remine_every` epochs.
    Global,
    /// Per anchor in a P×K batch: hardest positive, hardest negative.
    BatchHard,
    /// Per positive pair in a P×K batch: the nearest semi-hard negative.
    BatchSemihard,
    /// Every margin-violating triplet of a P×K batch.
    BatchAll,
    /// A triplet CSV exported by `tripmine mine`.
    Triplets(PathBuf),
}

impl Mining {
    /// The `--mining` spelling: global, batch-hard, ..., triplets:FILE.
    pub fn name(&self) -> String {
        match self {
            Mining::Global => "global".into(),
            Mining::BatchHard => "batch-hard".into(),
            Mining::BatchSemihard => "batch-semihard".into(),
            Mining::BatchAll => "batch-all".into(),
            Mining::Triplets(path) => format!("triplets:{}", path.display()),
        }
    }

    /// Whether triplets are mined inside each P×K batch.
    pub fn is_in_batch(&self) -> bool {
        matches!(
            self,
            Mining::BatchHard | Mining::BatchSemihard | Mining::BatchAll
        )
    }
}

impl std::str::FromStr for Mining {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "global" => Ok(Mining::Global),
            "batch-hard" => Ok(Mining::BatchHard),
            "batch-semihard" => Ok(Mining::BatchSemihard),
            "batch-all" => Ok(Mining::BatchAll),
            _ => match s.strip_prefix("triplets:") {
                Some(path) if !path.is_empty() => Ok(Mining::Triplets(PathBuf::from(path))),
                _ => Err(format!(
                    "unknown mining {s:?}; expected global, batch-hard, batch-semihard, batch-all or triplets:FILE.csv"
                )),
            },
        }
    }
}

/// Which samples validate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Validation {
    /// Hold out this fraction of the classes (unseen classes: the metric-learning protocol).
    Classes(f64),
    /// Hold out this fraction of every class's samples.
    Samples(f64),
    /// The corpus's split column: `train` trains, `val`/`valid`/`validation`/`test` validate.
    SplitColumn,
    /// The split column when the corpus has one, otherwise a quarter of the classes.
    Auto,
}

/// `tripmine train`, validated; saved as `config.json` so that a run can be repeated or resumed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub corpus: PathBuf,
    pub out: PathBuf,
    pub network: ModelSpec,
    pub device: String,
    pub seed: u64,
    pub epochs: usize,
    /// Triplets per step (global, triplets:FILE); P×K sets the batch for the in-batch miners.
    pub batch_size: usize,
    pub classes_per_batch: usize,
    pub samples_per_class: usize,
    pub augment: bool,
    pub loss: LossConfig,
    pub optim: OptimConfig,
    pub mining: Mining,
    pub remine_every: usize,
    /// Rules of global mining (margin and distance follow the loss).
    pub strategy: Strategy,
    pub positives: PositiveRule,
    pub negatives_per_anchor: usize,
    pub knn: KnnChoice,
    pub hnsw: HnswParams,
    pub validation: Validation,
    pub exclude: Option<PathBuf>,
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

impl TrainError {
    pub fn is_input_error(&self) -> bool {
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

/// Decoded, preprocessed images of one split with dense label ids.
struct ImageSet {
    samples: Vec<Sample>,
    labels: Vec<u32>,
    pixels: Tensor,
}

impl ImageSet {
    fn new(samples: &[Sample], network: &ModelSpec, label_ids: &BTreeMap<String, u32>) -> Self {
        let (pixels, kept, problems) = decode_samples(samples, &network.preprocess);
        for p in &problems {
            eprintln!("warning: skipping {}: {}", p.path, p.reason);
        }
        let labels = kept.iter().map(|s| label_ids[&s.label]).collect();
        ImageSet {
            pixels: pixel_tensor(&pixels, &network.preprocess),
            samples: kept,
            labels,
        }
    }

    fn len(&self) -> usize {
        self.samples.len()
    }

    fn embed(&self, model: &Embedder) -> Result<Vec<f32>, ModelError> {
        embed_pixels(model, &self.pixels, 256)
    }
}

/// Splits the corpus into training and validation samples.
fn split(
    samples: Vec<Sample>,
    validation: &Validation,
    seed: u64,
) -> Result<(Vec<Sample>, Vec<Sample>), TrainError> {
    let mut by_class: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for s in samples {
        by_class.entry(s.label.clone()).or_default().push(s);
    }
    let mut train = Vec::new();
    let mut val = Vec::new();
    let has_splits = by_class.values().flatten().any(|s| !s.split.is_empty());
    let validation = match validation {
        Validation::Auto if has_splits => &Validation::SplitColumn,
        Validation::Auto => &Validation::Classes(0.25),
        other => other,
    };
    match validation {
        Validation::SplitColumn => {
            for s in by_class.into_values().flatten() {
                match s.split.as_str() {
                    "train" => train.push(s),
                    "val" | "valid" | "validation" | "test" => val.push(s),
                    _ => {}
                }
            }
        }
        Validation::Classes(fraction) => {
            let mut names: Vec<String> = by_class.keys().cloned().collect();
            Rng::for_item(seed, 0x5E1_C1A5).shuffle(&mut names);
            let held = ((names.len() as f64 * fraction).round() as usize)
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
                let held = held.min(members.len().saturating_sub(2));
                val.extend(members.drain(..held));
                train.extend(members);
            }
        }
        Validation::Auto => unreachable!("resolved above"),
    }
    train.sort_by(|a, b| a.path.cmp(&b.path));
    val.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((train, val))
}

/// What a finished (or resumed and finished) run reports.
pub struct TrainSummary {
    pub rows: Vec<MetricsRow>,
    pub best_epoch: usize,
    pub warnings: Vec<String>,
}

/// Trains from scratch (`resume = false`) or continues the run in `cfg.out`.
pub fn run(cfg: &TrainConfig, resume: bool) -> Result<TrainSummary, TrainError> {
    let device = parse_device(&cfg.device).map_err(TrainError::Input)?;
    let run = &cfg.out;
    let corpus = corpus::open(&cfg.corpus)?;
    for p in &corpus.problems {
        eprintln!("warning: skipping {}: {}", p.path, p.reason);
    }
    let excluded = match &cfg.exclude {
        Some(path) => mine::read_exclude(path).map_err(|e| TrainError::Input(e.to_string()))?,
        None => HashSet::new(),
    };
    let samples: Vec<Sample> = corpus
        .samples
        .into_iter()
        .filter(|s| !excluded.contains(&s.path))
        .collect();
    let mut label_names: Vec<String> = samples.iter().map(|s| s.label.clone()).collect();
    label_names.sort();
    label_names.dedup();
    let label_ids: BTreeMap<String, u32> = label_names
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), i as u32))
        .collect();
    let (train_samples, val_samples) = split(samples, &cfg.validation, cfg.seed)?;
    let train = ImageSet::new(&train_samples, &cfg.network, &label_ids);
    let val = ImageSet::new(&val_samples, &cfg.network, &label_ids);
    check_trainable(&train.labels)?;

    let (mut model, mut optimizer, mut state, mut rows) = if resume {
        let dir = run_dir::resumable(run).ok_or_else(|| {
            TrainError::Input(format!(
                "{}: no checkpoint to resume (last/state.json)",
                run.display()
            ))
        })?;
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
        let model = Embedder::init(cfg.network.clone(), device)?;
        let optimizer = Optimizer::new(&model.vs, cfg.optim.clone());
        let state = RunState {
            epoch: 0,
            step: 0,
            best_map_at_r: f64::NEG_INFINITY,
            best_epoch: 0,
        };
        let (before, _) = validate(&model, &val, device)?;
        let row = MetricsRow {
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
        };
        (model, optimizer, state, vec![row])
    };

    let fixed = match &cfg.mining {
        Mining::Triplets(path) => Some(read_fixed_triplets(path, &train)?),
        _ => None,
    };
    if let Some(triplets) = &fixed {
        if !report::has_record(run, 0) {
            let mut recorder = report::RoundRecorder::new(0, 1, "triplets", cfg.loss.distance);
            recorder.add(triplets, &train.samples);
            recorder.save(run).map_err(io_err(run))?;
        }
    }
    let tiles = Tiles::new(&train.samples, report::THUMB);
    let steps_per_epoch = estimate_steps_per_epoch(cfg, &train, fixed.as_ref());
    let total_steps = steps_per_epoch * cfg.epochs;
    let mut warnings = Vec::new();
    let mut round_triplets: Option<Vec<Triplet>> = None;
    let bar = crate::progress::bar(
        (cfg.epochs - state.epoch.min(cfg.epochs)) as u64,
        "training",
    );
    for epoch in state.epoch..cfg.epochs {
        let started = Instant::now();
        let batches: Vec<StepBatch> = match (&cfg.mining, &fixed) {
            (_, Some(triplets)) => triplet_batches(triplets, cfg, epoch),
            (Mining::Global, _) => {
                let round = epoch / cfg.remine_every.max(1);
                if epoch % cfg.remine_every.max(1) == 0 || round_triplets.is_none() {
                    round_triplets =
                        Some(global_round(cfg, &model, &train, round, epoch + 1, device)?);
                }
                triplet_batches(round_triplets.as_ref().expect("mined above"), cfg, epoch)
            }
            _ => sampler::pk_batches(
                &train.labels,
                cfg.classes_per_batch,
                cfg.samples_per_class,
                cfg.seed,
                epoch,
            )
            .into_iter()
            .map(StepBatch::Images)
            .collect(),
        };
        let (mut loss_sum, mut active, mut total, mut lr) = (0.0, 0usize, 0usize, 0.0);
        // Each epoch of an in-batch miner is a mining round of its own.
        let mut in_batch = cfg.mining.is_in_batch().then(|| {
            report::RoundRecorder::new(epoch, epoch + 1, &cfg.mining.name(), cfg.loss.distance)
        });
        for (i, batch) in batches.iter().enumerate() {
            lr = learning_rate(&cfg.optim, state.step, total_steps, steps_per_epoch);
            let mut rng = Rng::for_item(cfg.seed ^ ((epoch as u64) << 32), i as u64);
            let Some(step) = train_step(cfg, &model, &train, batch, &mut rng)? else {
                continue;
            };
            let value = f64::try_from(&step.loss).unwrap_or(f64::NAN);
            if !value.is_finite() {
                return Err(TrainError::NonFinite {
                    value,
                    epoch: epoch + 1,
                    step: state.step,
                    last: run_dir::last(run),
                });
            }
            optimizer.zero_grad();
            step.loss.backward();
            optimizer.step(lr);
            state.step += 1;
            if let Some(recorder) = in_batch.as_mut() {
                recorder.add(&step.mined, &train.samples);
            }
            loss_sum += value * step.active as f64;
            active += step.active;
            total += step.total;
        }
        if let Some(recorder) = in_batch {
            recorder.save(run).map_err(io_err(run))?;
        }
        let (metrics, spread) = validate(&model, &val, device)?;
        state.epoch = epoch + 1;
        let row = MetricsRow {
            epoch: epoch + 1,
            step: state.step,
            loss: if active == 0 {
                0.0
            } else {
                loss_sum / active as f64
            },
            active_fraction: if total == 0 {
                0.0
            } else {
                active as f64 / total as f64
            },
            triplets: total,
            p_at_1: metrics.p_at_1,
            r_precision: metrics.r_precision,
            map_at_r: metrics.map_at_r,
            lr,
            seconds: started.elapsed().as_secs_f64(),
        };
        if active == 0 {
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
        let improved = metrics.map_at_r > state.best_map_at_r;
        if improved {
            state.best_map_at_r = metrics.map_at_r;
            state.best_epoch = epoch + 1;
        }
        model.spec.training = training_note(cfg, &state);
        // Metrics first: rows past the checkpoint's epoch are dropped on resume, missing ones
        // could not be recovered.
        run_dir::write_metrics(run, &rows).map_err(io_err(run))?;
        report::write(run, cfg, &rows, state.best_epoch, &tiles).map_err(io_err(run))?;
        run_dir::save_checkpoint(&run_dir::last(run), &model, &optimizer, &state)?;
        if improved {
            run_dir::save_checkpoint(&run_dir::best(run), &model, &optimizer, &state)?;
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
/// embedding pass over the validation split; both are absent below two samples.
fn validate(
    model: &Embedder,
    val: &ImageSet,
    device: Device,
) -> Result<(Metrics, Option<f64>), ModelError> {
    if val.len() < 2 {
        return Ok((eval::from_neighbours(&val.labels, &[], &[]), None));
    }
    let data = val.embed(model)?;
    let dim = model.spec.dim as usize;
    let points = Points {
        data: &data,
        dim,
        labels: &val.labels,
    };
    Ok((
        eval::evaluate(points, device),
        Some(mean_pairwise_distance(&data, dim)),
    ))
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

/// One optimisation step's input.
enum StepBatch {
    /// Triplets given in advance (global round or a CSV), as training-set indices.
    Triplets(Vec<Triplet>),
    /// A P×K batch to mine inside.
    Images(Vec<usize>),
}

fn triplet_batches(triplets: &[Triplet], cfg: &TrainConfig, epoch: usize) -> Vec<StepBatch> {
    let mut order: Vec<usize> = (0..triplets.len()).collect();
    Rng::for_item(cfg.seed ^ 0x7121, epoch as u64).shuffle(&mut order);
    order
        .chunks(cfg.batch_size.max(1))
        .map(|c| StepBatch::Triplets(c.iter().map(|&i| triplets[i]).collect()))
        .collect()
}

fn estimate_steps_per_epoch(
    cfg: &TrainConfig,
    train: &ImageSet,
    fixed: Option<&Vec<Triplet>>,
) -> usize {
    let per = |n: usize, b: usize| n.div_ceil(b.max(1)).max(1);
    match (&cfg.mining, fixed) {
        (_, Some(t)) => per(t.len(), cfg.batch_size),
        (Mining::Global, _) => per(train.len() * cfg.negatives_per_anchor, cfg.batch_size),
        _ => per(train.len(), cfg.classes_per_batch * cfg.samples_per_class),
    }
}

struct StepOutcome {
    loss: Tensor,
    active: usize,
    total: usize,
    /// What an in-batch miner chose, as training-set indices (empty for given triplets).
    mined: Vec<Triplet>,
}

/// Forward pass, mining (for in-batch miners) and the reduced loss of one batch.
fn train_step(
    cfg: &TrainConfig,
    model: &Embedder,
    train: &ImageSet,
    batch: &StepBatch,
    rng: &mut Rng,
) -> Result<Option<StepOutcome>, ModelError> {
    let images: Vec<usize> = match batch {
        StepBatch::Images(ids) => ids.clone(),
        StepBatch::Triplets(ts) => {
            let mut ids: Vec<usize> = ts
                .iter()
                .flat_map(|t| [t.anchor, t.positive, t.negative])
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        }
    };
    if images.len() < 3 {
        return Ok(None);
    }
    let position: HashMap<usize, i64> = images
        .iter()
        .enumerate()
        .map(|(i, &s)| (s, i as i64))
        .collect();
    let index = Tensor::from_slice(&images.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let mut x = train.pixels.index_select(0, &index);
    if cfg.augment {
        x = augment::augment(&x, rng);
    }
    let emb = model.forward(&x, true)?;
    let (triplets, mined): (Vec<(i64, i64, i64)>, Vec<Triplet>) = match batch {
        StepBatch::Triplets(ts) => (
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
        StepBatch::Images(_) => {
            let labels: Vec<u32> = images.iter().map(|&i| train.labels[i]).collect();
            let in_batch = mine_in_batch(cfg, &emb, &labels)?;
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
    let column = |f: fn(&(i64, i64, i64)) -> i64| {
        Tensor::from_slice(&triplets.iter().map(f).collect::<Vec<_>>()).to_device(emb.device())
    };
    let losses = loss::per_triplet(
        &emb,
        &column(|t| t.0),
        &column(|t| t.1),
        &column(|t| t.2),
        &cfg.loss,
    );
    let r = loss::reduce(&losses);
    Ok(Some(StepOutcome {
        loss: r.loss,
        active: r.active,
        total: r.total,
        mined,
    }))
}

/// The in-batch miners are the corpus miner run on the batch: same definitions, same code.
/// Indices are positions in the batch.
fn mine_in_batch(
    cfg: &TrainConfig,
    emb: &Tensor,
    labels: &[u32],
) -> Result<Vec<Triplet>, ModelError> {
    let data = Vec::<f32>::try_from(emb.detach().to_device(Device::Cpu).contiguous().view([-1]))?;
    let points = Points {
        data: &data,
        dim: cfg.network.dim as usize,
        labels,
    };
    let batch = labels.len();
    let (positives, strategy, k) = match cfg.mining {
        Mining::BatchHard => (PositiveRule::Hardest, "all", 1),
        Mining::BatchSemihard => (PositiveRule::All, "semihard", 1),
        _ => (PositiveRule::All, "all", batch),
    };
    let rules = MiningRules {
        margin: cfg.loss.margin,
        distance: cfg.loss.distance,
        strategy: strategy.parse().expect("valid strategy"),
        positives,
        negatives_per_anchor: k,
        negative_order: NegativeOrder::Nearest,
        anchors_per_class: None,
        seed: cfg.seed,
        start_depth: batch,
        max_depth: batch,
    };
    let index = ExactIndex::new(points, Device::Cpu);
    Ok(mine::mine(points, &index, &rules).0)
}

/// Embeds the training split, mines it whole and saves the round's triplets.
fn global_round(
    cfg: &TrainConfig,
    model: &Embedder,
    train: &ImageSet,
    round: usize,
    first_epoch: usize,
    device: Device,
) -> Result<Vec<Triplet>, TrainError> {
    let dir = run_dir::round_dir(&cfg.out, round);
    let csv = dir.join("triplets.csv");
    let record = |triplets: &[Triplet]| {
        let mut recorder =
            report::RoundRecorder::new(round, first_epoch, "global", cfg.loss.distance);
        recorder.add(triplets, &train.samples);
        recorder.save(&cfg.out).map_err(io_err(&dir))
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
    let rules = MiningRules {
        margin: cfg.loss.margin,
        distance: cfg.loss.distance,
        strategy: cfg.strategy.clone(),
        positives: cfg.positives,
        negatives_per_anchor: cfg.negatives_per_anchor,
        seed: cfg.seed ^ round as u64,
        ..MiningRules::default()
    };
    let started = Instant::now();
    let (triplets, stats, backend) = match cfg.knn.resolve(points.len()) {
        KnnChoice::Hnsw => {
            let index = HnswIndex::build(points, cfg.hnsw);
            let (t, s) = mine::mine(points, &index, &rules);
            (t, s, index.describe())
        }
        _ => {
            let index = ExactIndex::new(points, device);
            let (t, s) = mine::mine(points, &index, &rules);
            (t, s, index.describe())
        }
    };
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let rows = triplets
        .iter()
        .map(|t| TripletRow::new(t, |i| (&train.samples[i].path, &train.samples[i].label)));
    write_atomic(&csv, |w| triplets::write(w, rows)).map_err(io_err(&csv))?;
    let sidecar = serde_json::json!({
        "round": round,
        "margin": crate::definitions::json_f32(rules.margin),
        "distance": rules.distance,
        "strategy": rules.strategy.to_string(),
        "positives": rules.positives,
        "negatives_per_anchor": rules.negatives_per_anchor,
        "seed": rules.seed,
        "backend": backend,
        "counts": stats.per_kind,
        "anchors": { "considered": stats.anchors, "with_triplets": stats.anchors_with_triplets, "skipped": stats.skipped },
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    write_json(&dir.join("triplets.json"), &sidecar).map_err(io_err(&dir))?;
    record(&triplets)?;
    Ok(triplets)
}

/// Triplets of a CSV as training-set indices; unknown paths are an error naming a few.
fn read_fixed_triplets(path: &Path, train: &ImageSet) -> Result<Vec<Triplet>, TrainError> {
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
