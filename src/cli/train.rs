//! `tripmine train`.

use std::path::PathBuf;

use clap::Args;

use super::embed::NetworkArgs;
use super::{RuntimeArgs, UsageError};
use crate::definitions::{Distance, DEFAULT_MARGIN};
use crate::knn::{HnswParams, KnnChoice};
use crate::mine::{PositiveRule, Strategy};
use crate::train::{
    LossConfig, Mining, OptimConfig, OptimizerKind, ScheduleKind, TrainConfig, Validation,
};

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Examples:\n  tripmine train --corpus photos/ --out run/ --epochs 20                  # global re-mining\n  tripmine train --corpus photos/ --out run/ --mining batch-hard --classes-per-batch 16 --samples-per-class 4\n  tripmine train --resume run/                                           # continue after an interruption"
)]
pub struct TrainArgs {
    /// ImageFolder root or CSV manifest
    #[arg(long, required_unless_present = "resume")]
    pub corpus: Option<PathBuf>,
    /// Run directory (metrics.csv, last/, best/, rounds/, config.json)
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from last/ with its config.json
    #[arg(long, conflicts_with_all = ["corpus", "out"])]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub network: NetworkArgs,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// global | batch-hard | batch-semihard | batch-all | triplets:FILE.csv
    #[arg(long, default_value = "global")]
    pub mining: String,
    /// Epochs between global re-mining rounds
    #[arg(long, default_value_t = 1)]
    pub remine_every: usize,
    /// Triplets per step (global and triplets:FILE)
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
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
    /// Global mining: hard | semihard | easy | all, or a mix such as semihard=0.7,hard=0.3
    #[arg(long, default_value = "semihard=0.5,hard=0.5")]
    pub strategy: Strategy,
    #[arg(long, value_enum, default_value_t = PositiveRule::Random)]
    pub positives: PositiveRule,
    #[arg(long, default_value_t = 1)]
    pub negatives_per_anchor: usize,
    #[arg(long, value_enum, default_value_t = KnnChoice::Auto)]
    pub knn: KnnChoice,
    /// Hold out this fraction of the classes for validation (unseen classes). Default: the
    /// corpus's split column if it has one, else 0.25 of the classes
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
        self.runtime.apply()?;
        if let Some(run) = &self.resume {
            let path = run.join(crate::train::CONFIG_JSON);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| usage(format!("{}: {e}", path.display())))?;
            let mut cfg: TrainConfig = serde_json::from_str(&text)
                .map_err(|e| usage(format!("{}: {e}", path.display())))?;
            cfg.out = run.clone();
            return Ok((cfg, true));
        }
        let mining: Mining = self.mining.parse().map_err(usage)?;
        if self.epochs == 0
            || self.batch_size == 0
            || self.classes_per_batch < 2
            || self.samples_per_class < 2
        {
            return Err(usage("--epochs and --batch-size must be positive; P×K needs at least 2 classes × 2 samples".into()));
        }
        let lr_ok = self.lr.is_finite() && self.lr > 0.0;
        let margin_ok = self.margin.is_finite() && self.margin >= 0.0;
        if !(lr_ok && margin_ok) {
            return Err(usage(
                "--lr must be positive and --margin non-negative".into(),
            ));
        }
        let validation = match (self.val_classes, self.val_samples) {
            (_, Some(f)) => Validation::Samples(f),
            (Some(f), None) => Validation::Classes(f),
            (None, None) => Validation::Auto,
        };
        if let Validation::Samples(f) | Validation::Classes(f) = validation {
            if !(0.0..1.0).contains(&f) {
                return Err(usage("validation fractions must be in [0, 1)".into()));
            }
        }
        Ok((
            TrainConfig {
                corpus: self.corpus.clone().expect("required by clap"),
                out: self.out.clone().expect("required by clap"),
                network: self.network.fresh_spec(self.runtime.seed)?,
                device: self.runtime.device.clone(),
                seed: self.runtime.seed,
                epochs: self.epochs,
                batch_size: self.batch_size,
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
                },
                mining,
                remine_every: self.remine_every.max(1),
                strategy: self.strategy.clone(),
                positives: self.positives,
                negatives_per_anchor: self.negatives_per_anchor.max(1),
                knn: self.knn,
                hnsw: HnswParams::default(),
                validation,
                exclude: self.exclude.clone(),
            },
            false,
        ))
    }
}
