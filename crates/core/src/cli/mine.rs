//! `tripmine mine`.

use std::path::PathBuf;

use clap::Args;

use super::{embeddings_from, EmbeddingsArgs, GuardArgs, KnnArgs, RuntimeArgs, UsageError};
use crate::definitions::{check_number, Allowed, Distance, DEFAULT_MARGIN};
use crate::mine::{MineConfig, MiningRules, NegativeOrder, PositiveRule, Strategy};

#[derive(Debug, Clone, Args)]
#[command(
    allow_negative_numbers = true,
    after_help = "Examples:\n  tripmine mine --embeddings emb/ --out triplets.csv --strategy semihard=0.7,hard=0.3\n  tripmine mine --embeddings vectors.npy --labels labels.csv --normalise --out triplets.csv\n  tripmine mine --corpus photos/ --model run/best --out - --negatives-per-anchor 5 | head\n  tripmine mine --embeddings emb/ --out t.csv --knn classes --candidate-classes 1000\n  tripmine mine --embeddings shards/ --out t.csv --knn classes   # a shard directory, out of core\n  tripmine mine --embeddings emb/ --out t.csv --skip-nearest 2 --negative-floor 0.9   # guard against false negatives"
)]
pub struct MineArgs {
    #[command(flatten)]
    pub embeddings: EmbeddingsArgs,
    /// Corpus to embed first (with --model)
    #[arg(long, requires = "model", conflicts_with = "embeddings")]
    pub corpus: Option<PathBuf>,
    /// Checkpoint directory used with --corpus
    #[arg(long, requires = "corpus")]
    pub model: Option<PathBuf>,
    /// Triplet CSV to write, or - for stdout (a sidecar .json is written next to a file)
    #[arg(long)]
    pub out: PathBuf,
    /// Margin m: semi-hard means 0 < d(a,n) − d(a,p) ≤ m
    #[arg(long, default_value_t = DEFAULT_MARGIN)]
    pub margin: f32,
    #[arg(long, value_enum, default_value_t = Distance::Euclidean)]
    pub distance: Distance,
    /// hard | semihard | easy | violating (hard or semihard) | any (every negative), or a
    /// mix such as semihard=0.7,hard=0.3
    #[arg(long, default_value = "semihard")]
    pub strategy: Strategy,
    #[arg(long, value_enum, default_value_t = PositiveRule::Hardest)]
    pub positives: PositiveRule,
    /// Negatives per anchor–positive pair
    #[arg(long, default_value_t = 1)]
    pub negatives_per_anchor: usize,
    #[arg(long, value_enum, default_value_t = NegativeOrder::Nearest)]
    pub negative_order: NegativeOrder,
    /// Mine from N anchors of each class instead of every sample
    #[arg(long)]
    pub anchors_per_class: Option<usize>,
    /// CSV with a `path` column: those samples take no role in any triplet
    #[arg(long)]
    pub exclude: Option<PathBuf>,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[command(flatten)]
    pub neighbours: KnnArgs,
    /// Deepest other-label neighbour search before an anchor is recorded as short
    #[arg(long, default_value_t = MiningRules::default().max_depth)]
    pub max_search_depth: usize,
    /// Images per forward pass when embedding --corpus
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl MineArgs {
    pub fn to_config(&self) -> Result<MineConfig, anyhow::Error> {
        self.runtime.apply()?;
        self.guard.validate()?;
        let usage = |m: &str| -> anyhow::Error { UsageError(m.into()).into() };
        check_number("--margin", f64::from(self.margin), Allowed::NonNegative)
            .map_err(UsageError)?;
        if self.negatives_per_anchor == 0 || self.anchors_per_class == Some(0) {
            return Err(usage(
                "--negatives-per-anchor and --anchors-per-class must be at least 1",
            ));
        }
        let knn = self.neighbours.config()?;
        if self.out.as_os_str() != "-" && crate::triplets::sidecar_path(&self.out).is_none() {
            return Err(UsageError(format!(
                "--out {}: a triplet CSV cannot end in .json, which is the name of its sidecar",
                self.out.display()
            ))
            .into());
        }
        if self.max_search_depth == 0 {
            return Err(usage("--max-search-depth must be at least 1"));
        }
        if self.negatives_per_anchor > self.max_search_depth {
            return Err(UsageError(format!(
                "--negatives-per-anchor {} exceeds --max-search-depth {}: no anchor's search \
                 reaches that many negatives",
                self.negatives_per_anchor, self.max_search_depth
            ))
            .into());
        }
        let source = embeddings_from(
            &self.embeddings,
            self.corpus.as_deref(),
            self.model.as_deref(),
            self.batch_size,
            &self.runtime,
        )?;
        let defaults = MiningRules::default();
        Ok(MineConfig {
            source,
            out: (self.out.as_os_str() != "-").then(|| self.out.clone()),
            rules: MiningRules {
                margin: self.margin,
                distance: self.distance,
                strategy: self.strategy.clone(),
                positives: self.positives,
                negatives_per_anchor: self.negatives_per_anchor,
                negative_order: self.negative_order,
                anchors_per_class: self.anchors_per_class,
                seed: self.runtime.seed,
                start_depth: defaults.start_depth.min(self.max_search_depth),
                max_depth: self.max_search_depth,
                skip_nearest: self.guard.skip_nearest,
                negative_floor: self.guard.negative_floor,
            },
            knn,
            exclude: self.exclude.clone(),
        })
    }
}
