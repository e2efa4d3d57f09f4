//! `tripmine eval`.

use std::path::PathBuf;

use clap::Args;

use super::RuntimeArgs;
use crate::eval::EvalConfig;

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Example:\n  tripmine eval --corpus list.csv --model run/best --split test --json"
)]
pub struct EvalArgs {
    /// ImageFolder root or CSV manifest
    #[arg(long)]
    pub corpus: PathBuf,
    /// Checkpoint directory (model.json + model.safetensors)
    #[arg(long)]
    pub model: PathBuf,
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
        Ok(EvalConfig {
            corpus: self.corpus.clone(),
            model: self.model.clone(),
            split: self.split.clone(),
            batch_size: self.batch_size.max(1),
            device: self.runtime.apply()?,
        })
    }
}
