//! `tripmine train`.

use std::path::PathBuf;

use clap::Args;

use super::embed::NetworkArgs;
use super::{GuardArgs, KnnArgs, RuntimeArgs, UsageError};
use crate::definitions::{check_number, Allowed, Distance, DEFAULT_MARGIN};
use crate::mine::{PositiveRule, Strategy};
use crate::model::{Architecture, HeadKind, ModelSpec, TrunkMode};
use crate::train::{
    FeatureSource, InBatchMiner, LossConfig, Mining, OptimConfig, OptimizerKind, Period,
    ScheduleKind, TrainConfig, Validation, DEFAULT_BACKBONE_LR_SCALE, DEFAULT_CACHED_VIEWS,
    DEFAULT_RANDOM_CLASSES,
};

#[derive(Debug, Clone, Args)]
#[command(
    allow_negative_numbers = true,
    after_help = "Examples:\n  tripmine train --corpus photos/ --out run/                     # --mining auto (config.json says what it chose)\n  tripmine train --corpus photos/ --out run/ --mining neighbour-batches --exclude audit/exclude.csv\n  tripmine train --corpus photos/ --out run/ --mining batch-hard --classes-per-batch 16 --samples-per-class 4\n  tripmine train --corpus photos/ --out run/ --mining global      # export every round's triplets\n  tripmine train --corpus products/ --out run2/ --model run/best --lr 1e-4  # fine-tune an earlier model\n  tripmine train --resume run/                                   # continue after an interruption",
    group(clap::ArgGroup::new("fresh").multiple(true).args([
        "mining", "remine_every", "batch_miner", "random_classes", "memory_negatives",
        "memory_warmup", "global_warmup", "skip_nearest", "negative_floor", "triplets_per_step", "classes_per_batch", "samples_per_class",
        "margin", "distance", "soft_margin", "swap", "optimizer", "lr", "weight_decay", "momentum",
        "schedule", "warmup_epochs", "lr_step", "lr_gamma", "no_augment", "strategy", "positives",
        "negatives_per_anchor", "knn", "candidate_classes", "hnsw_m", "ef_construction",
        "ef_search", "val_classes", "val_samples", "exclude", "device", "seed",
        "dim", "input_size", "channels", "backbone", "preprocess", "mean", "std", "resize",
        "freeze_backbone", "backbone_lr_scale", "freeze_backbone_epochs", "freeze_bn",
        "cached_views", "head", "embeddings", "model",
    ]))
)]
pub struct TrainArgs {
    /// ImageFolder root or CSV manifest
    #[arg(long, required_unless_present_any = ["resume", "embeddings"], conflicts_with = "embeddings")]
    pub corpus: Option<PathBuf>,
    /// Train a projection head over feature rows instead of a network over images: a
    /// directory with embeddings.npy + samples.csv, or an .npy (N×F) with --labels. Rows are
    /// read as they are (any length) and standardised with the training rows' statistics
    #[arg(long, conflicts_with_all = ["backbone", "input_size", "channels", "preprocess", "mean", "std"])]
    pub embeddings: Option<PathBuf>,
    /// CSV naming the rows of --embeddings in order: path,label[,split] (or just label)
    #[arg(long, requires = "embeddings")]
    pub labels: Option<PathBuf>,
    /// L2-normalise each feature row before it is standardised (the head keeps doing so when
    /// it embeds)
    #[arg(long, requires = "embeddings")]
    pub normalise: bool,
    /// The head over --embeddings: linear, or mlp (linear, ReLU, linear)
    #[arg(long, value_enum, default_value_t = HeadKind::default(), requires = "embeddings")]
    pub head: HeadKind,
    /// Start from this checkpoint (a run's best/ or last/): its network, input preprocessing
    /// and weights, trained further on --corpus with a fresh optimiser and schedule (fine-tune
    /// a model trained before, e.g. on other classes). Default: a fresh network from --seed
    #[arg(long, conflicts_with_all = ["embeddings", "dim", "input_size", "channels", "backbone", "preprocess", "mean", "std", "resize", "freeze_backbone", "freeze_bn"])]
    pub model: Option<PathBuf>,
    /// Run directory (metrics.csv, last/, best/, rounds/, config.json)
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from last/ with its config.json (its options cannot
    /// be changed, except a larger --epochs; --threads defaults to the recorded count)
    #[arg(long, conflicts_with_all = ["corpus", "out", "fresh"])]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Keep the --backbone trunk's weights fixed and train only the head
    #[arg(long, requires = "backbone")]
    pub freeze_backbone: bool,
    /// Learning rate of a fine-tuned --backbone trunk relative to --lr (the head's)
    #[arg(long, default_value_t = DEFAULT_BACKBONE_LR_SCALE, requires = "backbone", conflicts_with = "freeze_backbone")]
    pub backbone_lr_scale: f64,
    /// Train the head alone for the first N epochs, then fine-tune the --backbone trunk too
    #[arg(
        long,
        default_value_t = 0,
        requires = "backbone",
        conflicts_with = "freeze_backbone"
    )]
    pub freeze_backbone_epochs: usize,
    /// Keep the --backbone trunk's batch norm statistics while it fine-tunes (evaluation
    /// mode: dropout off too), the usual practice in metric learning
    #[arg(long, requires = "backbone", conflicts_with = "freeze_backbone")]
    pub freeze_bn: bool,
    /// With --freeze-backbone and augmentation: augmented views per image whose trunk
    /// features are computed once and cached in the run directory (features/)
    #[arg(long, default_value_t = DEFAULT_CACHED_VIEWS)]
    pub cached_views: usize,
    /// Epochs (default: enough for about 3,000 steps, between 10 and 60). With --resume, a
    /// larger count extends the run
    #[arg(long)]
    pub epochs: Option<usize>,
    /// auto | batch-semihard | batch-hard | batch-all | neighbour-batches | global |
    /// triplets:FILE.csv. auto: neighbour-batches with at most 10 samples per class, else
    /// batch-semihard (measured by `make bench-regime` and `make bench-train`); config.json
    /// records the choice and why
    #[arg(long, default_value = "auto")]
    pub mining: String,
    /// Between refreshes of the neighbour graph (and memory) or global re-mining rounds:
    /// epochs (fractions such as 0.5 allowed) or steps (500steps)
    #[arg(long, default_value = "1")]
    pub remine_every: Period,
    /// Miner inside neighbour batches
    #[arg(long, value_enum, default_value_t = InBatchMiner::default())]
    pub batch_miner: InBatchMiner,
    /// Share of a neighbour batch's classes (or seed images) drawn at random, not from the graph
    #[arg(long, default_value_t = DEFAULT_RANDOM_CLASSES)]
    pub random_classes: f64,
    /// Neighbour batches: K extra negatives per anchor from the last refresh's stored
    /// embeddings, by the --strategy bands (0: off)
    #[arg(long, default_value_t = 0)]
    pub memory_negatives: usize,
    /// Training before memory negatives start: epochs (fractions allowed) or steps (500steps)
    #[arg(long, default_value = "1")]
    pub memory_warmup: Period,
    /// Global mining: training on P×K batches mined inside (--batch-miner) before the first
    /// round, in epochs or steps
    #[arg(long, default_value = "0")]
    pub global_warmup: Period,
    /// The guard of global rounds and memory negatives (as `mine`'s); --skip-nearest also
    /// keeps a seed image's nearest neighbours out of its neighbour batch
    #[command(flatten)]
    pub guard: GuardArgs,
    /// Triplets per step of global rounds and triplets:FILE (the in-batch regimes' step is a
    /// P×K batch; `--batch-size` elsewhere is images per forward pass)
    #[arg(long, default_value_t = 32)]
    pub triplets_per_step: usize,
    /// P: classes per batch for the in-batch miners
    #[arg(long, default_value_t = 8)]
    pub classes_per_batch: usize,
    /// K: samples per class per batch for the in-batch miners
    #[arg(long, default_value_t = 4)]
    pub samples_per_class: usize,
    #[arg(long, default_value_t = DEFAULT_MARGIN)]
    pub margin: f32,
    #[arg(long, value_enum, default_value_t = Distance::Euclidean)]
    pub distance: Distance,
    /// softplus(d_ap − d_an) instead of the margin hinge
    #[arg(long)]
    pub soft_margin: bool,
    /// Distance swap: use min(d(a,n), d(p,n))
    #[arg(long)]
    pub swap: bool,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    pub optimizer: OptimizerKind,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// SGD momentum
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    #[arg(long, value_enum, default_value_t = ScheduleKind::Cosine)]
    pub schedule: ScheduleKind,
    /// Linear warm-up length in epochs (fractions allowed)
    #[arg(long, default_value_t = 0.5)]
    pub warmup_epochs: f64,
    /// Step schedule: epochs between decays
    #[arg(long, default_value_t = 5)]
    pub lr_step: usize,
    /// Step schedule: decay factor
    #[arg(long, default_value_t = 0.1)]
    pub lr_gamma: f64,
    /// Turn off random resized crop and horizontal flip
    #[arg(long)]
    pub no_augment: bool,
    /// Global mining and memory negatives: hard | semihard | easy | violating (hard or
    /// semihard) | any (every negative), or a mix such as semihard=0.7,hard=0.3. Not
    /// `mine`'s default (semihard): a round trains on what it mines, and half hard
    /// negatives keep the loss from vanishing once semi-hard ones are satisfied
    #[arg(long, default_value = "semihard=0.5,hard=0.5")]
    pub strategy: Strategy,
    /// Positive of each anchor in global rounds. Not `mine`'s default (hardest): a random
    /// positive varies the pairs a round trains on (hardest is deterministic, and the
    /// farthest positive is the likeliest to be mislabelled)
    #[arg(long, value_enum, default_value_t = PositiveRule::Random)]
    pub positives: PositiveRule,
    #[arg(long, default_value_t = 1)]
    pub negatives_per_anchor: usize,
    /// The neighbour layer of global rounds, neighbour batches and memory negatives
    #[command(flatten)]
    pub neighbours: KnnArgs,
    /// Hold out this fraction of the classes for validation (unseen classes). Default: the
    /// corpus's split column if it has one, else 0.1 of every class's samples
    #[arg(long, conflicts_with = "val_samples")]
    pub val_classes: Option<f64>,
    /// Hold out this fraction of every class's samples for validation instead
    #[arg(long)]
    pub val_samples: Option<f64>,
    /// CSV with a `path` column: those samples are left out of training and validation
    #[arg(long)]
    pub exclude: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl TrainArgs {
    /// The run's config, or (with --resume) the saved one and `true`.
    pub fn to_config(&self) -> Result<(TrainConfig, bool), anyhow::Error> {
        let usage = |m: String| -> anyhow::Error { UsageError(m).into() };
        if let Some(run) = &self.resume {
            let path = run.join(crate::train::CONFIG_JSON);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| usage(format!("{}: {e}", path.display())))?;
            let mut cfg: TrainConfig = serde_json::from_str(&text)
                .map_err(|e| usage(format!("{}: {e}", path.display())))?;
            cfg.out = run.clone();
            if let Some(epochs) = self.epochs {
                // More epochs continue the run; the schedule then spans the new total.
                if epochs < cfg.epochs {
                    return Err(usage(format!(
                        "--epochs {epochs} with --resume: the run was planned for {} epochs; a resumed run can only be extended",
                        cfg.epochs
                    )));
                }
                cfg.epochs = epochs;
            }
            let runtime = RuntimeArgs {
                threads: self.runtime.threads.or(cfg.threads),
                ..self.runtime.clone()
            };
            super::torch_runtime(&runtime)?;
            return Ok((cfg, true));
        }
        super::torch_runtime(&self.runtime)?;
        let mining: Mining = self.mining.parse().map_err(usage)?;
        if self.epochs == Some(0)
            || self.triplets_per_step == 0
            || self.negatives_per_anchor == 0
            || self.classes_per_batch < 2
            || self.samples_per_class < 2
        {
            return Err(usage("--epochs, --triplets-per-step and --negatives-per-anchor must be positive; P×K needs at least 2 classes × 2 samples".into()));
        }
        let every_ok = match self.remine_every {
            Period::Epochs(e) => e >= 0.05,
            Period::Steps(n) => n >= 1,
        };
        if !every_ok {
            return Err(usage(
                "--remine-every must be at least 0.05 epochs or 1 step".into(),
            ));
        }
        self.guard.validate()?;
        for (option, value, allowed) in [
            ("--lr", self.lr, Allowed::Positive),
            (
                "--backbone-lr-scale",
                self.backbone_lr_scale,
                Allowed::NonNegative,
            ),
            ("--margin", f64::from(self.margin), Allowed::NonNegative),
            ("--weight-decay", self.weight_decay, Allowed::NonNegative),
            ("--momentum", self.momentum, Allowed::FractionBelowOne),
            ("--warmup-epochs", self.warmup_epochs, Allowed::NonNegative),
            ("--lr-gamma", self.lr_gamma, Allowed::Positive),
            ("--random-classes", self.random_classes, Allowed::Fraction),
        ] {
            check_number(option, value, allowed).map_err(usage)?;
        }
        let validation = match (self.val_classes, self.val_samples) {
            (_, Some(f)) => Validation::Samples(f),
            (Some(f), None) => Validation::Classes(f),
            (None, None) => Validation::Auto,
        };
        if let Validation::Samples(f) | Validation::Classes(f) = validation {
            if !Allowed::FractionBelowOne.holds(f) {
                return Err(usage(format!(
                    "--val-samples / --val-classes {f}: must be a number in [0, 1)"
                )));
            }
        }
        Ok((
            TrainConfig {
                corpus: self.corpus.clone().unwrap_or_default(),
                features: self.embeddings.as_ref().map(|e| FeatureSource {
                    embeddings: e.clone(),
                    labels: self.labels.clone(),
                    normalise: self.normalise,
                }),
                cached_views: self.cached_views,
                out: self.out.clone().expect("required by clap"),
                network: match (&self.model, &self.embeddings) {
                    (Some(dir), _) => {
                        let spec = ModelSpec::from_checkpoint(dir)?;
                        if matches!(spec.architecture, Architecture::Head { .. }) {
                            return Err(usage(format!(
                                "--model {}: a head over feature rows; --model starts image training from an image network's checkpoint",
                                dir.display()
                            )));
                        }
                        spec.warm_start(dir, self.runtime.seed)
                    }
                    // Width and standardisation are filled from the training rows.
                    (None, Some(_)) => ModelSpec::head(
                        0,
                        self.head,
                        self.normalise,
                        (Vec::new(), Vec::new()),
                        self.network.dim,
                        self.runtime.seed,
                    ),
                    (None, None) => self.network.fresh_spec(
                        self.runtime.seed,
                        if self.freeze_backbone {
                            TrunkMode::Frozen
                        } else {
                            TrunkMode::FineTuned
                        },
                        self.freeze_bn,
                    )?,
                },
                model: self.model.clone(),
                freeze_backbone_epochs: self.freeze_backbone_epochs,
                device: self.runtime.device.clone(),
                seed: self.runtime.seed,
                epochs: self.epochs.unwrap_or(0),
                triplets_per_step: self.triplets_per_step,
                classes_per_batch: self.classes_per_batch,
                samples_per_class: self.samples_per_class,
                augment: !self.no_augment,
                loss: LossConfig {
                    margin: self.margin,
                    distance: self.distance,
                    soft_margin: self.soft_margin,
                    swap: self.swap,
                },
                optim: OptimConfig {
                    kind: self.optimizer,
                    lr: self.lr,
                    weight_decay: self.weight_decay,
                    momentum: self.momentum,
                    schedule: self.schedule,
                    warmup_epochs: self.warmup_epochs,
                    lr_step_epochs: self.lr_step,
                    lr_gamma: self.lr_gamma,
                    backbone_lr_scale: self.backbone_lr_scale,
                },
                mining,
                remine_every: self.remine_every,
                batch_miner: self.batch_miner,
                random_classes: self.random_classes,
                memory_negatives: self.memory_negatives,
                memory_warmup: self.memory_warmup,
                global_warmup: self.global_warmup,
                skip_nearest: self.guard.skip_nearest,
                negative_floor: self.guard.negative_floor,
                threads: self.runtime.threads,
                strategy: self.strategy.clone(),
                positives: self.positives,
                negatives_per_anchor: self.negatives_per_anchor,
                knn: self.neighbours.config()?,
                validation,
                exclude: self.exclude.clone(),
                mining_choice: None,
            },
            false,
        ))
    }
}
