//! `tripmine audit`.

use std::path::PathBuf;

use clap::Args;

use super::{EmbeddingsArgs, RuntimeArgs};
use crate::audit::{AuditConfig, AuditSource, Thresholds};
use crate::knn::{HnswParams, KnnChoice};

#[derive(Debug, Clone, Args)]
#[command(
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
    /// Cosine similarity from which two samples count as near-duplicates
    #[arg(long, default_value_t = Thresholds::default().near_duplicate_similarity)]
    pub near_duplicate: f32,
    /// Flag a likely mislabel when at most this fraction of its neighbours share its label
    #[arg(long, default_value_t = Thresholds::default().mislabel_agreement)]
    pub mislabel_agreement: f64,
    /// ... and at least this fraction of them agree on another label
    #[arg(long, default_value_t = Thresholds::default().mislabel_support)]
    pub mislabel_support: f64,
    /// Classes with fewer samples are reported as tiny
    #[arg(long, default_value_t = Thresholds::default().tiny_class)]
    pub tiny_class: usize,
    #[arg(long, value_enum, default_value_t = KnnChoice::Auto)]
    pub knn: KnnChoice,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl AuditArgs {
    pub fn to_config(&self) -> Result<AuditConfig, anyhow::Error> {
        let source = match (&self.model, self.embeddings.input()?) {
            (Some(m), _) => AuditSource::Model(m.clone()),
            (None, Some(input)) => AuditSource::Embeddings {
                input,
                normalise: self.embeddings.normalise,
            },
            (None, None) => unreachable!("clap requires one of them"),
        };
        Ok(AuditConfig {
            corpus: self.corpus.clone(),
            source,
            out: self.out.clone(),
            knn: self.knn,
            hnsw: HnswParams::default(),
            device: self.runtime.apply()?,
            batch_size: self.batch_size.max(1),
            thresholds: Thresholds {
                k: self.k.max(1),
                near_duplicate_similarity: self.near_duplicate,
                mislabel_agreement: self.mislabel_agreement,
                mislabel_support: self.mislabel_support,
                tiny_class: self.tiny_class,
            },
        })
    }
}
