//! `tripmine audit`.

use std::path::PathBuf;

use clap::Args;

use super::{embeddings_from, EmbeddingsArgs, KnnArgs, RuntimeArgs, UsageError};
use crate::audit::{AuditConfig, Thresholds};

#[derive(Debug, Clone, Args)]
#[command(
    allow_negative_numbers = true,
    after_help = "Examples:\n  tripmine audit --corpus photos/ --model run/best --out audit/\n  tripmine audit --corpus photos/ --embeddings emb/ --out audit/ && tripmine mine --embeddings emb/ --exclude audit/exclude.csv --out t.csv"
)]
pub struct AuditArgs {
    /// ImageFolder root or CSV manifest (read for pixel hashes and file names)
    #[arg(long)]
    pub corpus: PathBuf,
    /// Checkpoint directory to embed the corpus with
    #[arg(
        long,
        required_unless_present = "embeddings",
        conflicts_with = "embeddings"
    )]
    pub model: Option<PathBuf>,
    /// Embeddings of this corpus, instead of --model (their paths must name corpus files)
    #[command(flatten)]
    pub embeddings: EmbeddingsArgs,
    /// Output directory
    #[arg(long)]
    pub out: PathBuf,
    /// Neighbours per sample in the k-NN graph
    #[arg(long, default_value_t = Thresholds::default().k)]
    pub k: usize,
    /// Near-duplicates lie within this fraction of the corpus's median nearest-neighbour
    /// distance (a share, not a distance)
    #[arg(long, alias = "near-duplicate", default_value_t = Thresholds::default().near_duplicate_fraction)]
    pub near_duplicate_fraction: f64,

    /// Flag a likely mislabel when the posterior probability that its label is wrong reaches this
    #[arg(long, default_value_t = Thresholds::default().mislabel_probability)]
    pub mislabel_probability: f64,
    /// Warn that label findings are not to be trusted below this leave-one-out P@1 of the model
    #[arg(long, default_value_t = Thresholds::default().min_model_p_at_1)]
    pub min_model_p_at_1: f64,
    /// Flag an outlier when a signal's robust z-score against its class reaches this
    #[arg(long, default_value_t = Thresholds::default().outlier_z)]
    pub outlier_z: f64,
    /// Classes with fewer samples are reported as tiny
    #[arg(long, default_value_t = Thresholds::default().tiny_class)]
    pub tiny_class: usize,
    #[command(flatten)]
    pub neighbours: KnnArgs,
    /// Images per forward pass when embedding with --model
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl AuditArgs {
    pub fn to_config(&self) -> Result<AuditConfig, anyhow::Error> {
        self.runtime.apply()?;
        let thresholds = Thresholds {
            k: self.k,
            near_duplicate_fraction: self.near_duplicate_fraction,
            mislabel_probability: self.mislabel_probability,
            min_model_p_at_1: self.min_model_p_at_1,
            outlier_z: self.outlier_z,
            tiny_class: self.tiny_class,
        };
        thresholds
            .validate(|field| format!("--{}", field.replace('_', "-")))
            .map_err(UsageError)?;
        let source = embeddings_from(
            &self.embeddings,
            Some(&self.corpus),
            self.model.as_deref(),
            self.batch_size,
            &self.runtime,
        )?;
        Ok(AuditConfig {
            corpus: self.corpus.clone(),
            source,
            out: self.out.clone(),
            knn: self.neighbours.config()?,
            thresholds,
        })
    }
}
