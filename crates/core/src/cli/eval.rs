//! `tripmine eval`.

use std::path::PathBuf;

use clap::Args;

use super::{embeddings_from, EmbeddingsArgs, RuntimeArgs};
use crate::eval::EvalConfig;

#[derive(Debug, Clone, Args)]
#[command(
    allow_negative_numbers = true,
    after_help = "Example:\n  tripmine eval --corpus list.csv --model run/best --split test --json\n  tripmine eval --embeddings vectors.npy --labels labels.csv --normalise"
)]
pub struct EvalArgs {
    /// ImageFolder root or CSV manifest
    #[arg(long, requires = "model", conflicts_with = "embeddings")]
    pub corpus: Option<PathBuf>,
    /// Checkpoint directory (model.json + model.safetensors)
    #[arg(long, requires = "corpus", required_unless_present = "embeddings")]
    pub model: Option<PathBuf>,
    /// Measure these embeddings instead of embedding --corpus with --model
    #[command(flatten)]
    pub embeddings: EmbeddingsArgs,
    /// Only samples whose split column has this value
    #[arg(long)]
    pub split: Option<String>,
    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl EvalArgs {
    pub fn to_config(&self) -> Result<EvalConfig, anyhow::Error> {
        self.runtime.apply()?;
        let source = embeddings_from(
            &self.embeddings,
            self.corpus.as_deref(),
            self.model.as_deref(),
            self.batch_size,
            &self.runtime,
        )?;
        Ok(EvalConfig {
            source,
            split: self.split.clone(),
        })
    }
}
