//! `tripmine embed`.

use std::path::PathBuf;

use clap::Args;

use super::{RuntimeArgs, UsageError};
use crate::corpus::Preprocess;
use crate::embed::{EmbedConfig, ModelChoice};
use crate::model::ModelSpec;

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Example:\n  tripmine embed --corpus photos/ --out emb/            # fresh network, seed 0\n  tripmine embed --corpus list.csv --model run/best --out emb/ --device cuda"
)]
pub struct EmbedArgs {
    /// ImageFolder root (root/<label>/<image>) or CSV manifest (path,label[,split])
    #[arg(long)]
    pub corpus: PathBuf,
    /// Checkpoint directory (model.json + model.safetensors); default: a fresh network from --seed
    #[arg(long, conflicts_with_all = ["dim", "input_size", "channels", "backbone"])]
    pub model: Option<PathBuf>,
    /// Output directory
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Images per forward pass
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Fail (exit 2, writing nothing) if any file cannot be used
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// The shape of a fresh network (with --model, its model.json decides instead).
#[derive(Debug, Clone, Args)]
pub struct NetworkArgs {
    /// Embedding dimension of a fresh network
    #[arg(long, default_value_t = 128)]
    pub dim: i64,
    /// Square input size in pixels of a fresh network
    #[arg(long, default_value_t = 64)]
    pub input_size: u32,
    /// Input channels of a fresh network: 3 (RGB) or 1 (grey)
    #[arg(long, default_value_t = 3)]
    pub channels: u32,
    /// TorchScript module (.pt) used as a frozen trunk under a trainable linear head
    #[arg(long)]
    pub backbone: Option<PathBuf>,
}

impl NetworkArgs {
    pub fn fresh_spec(&self, seed: u64) -> Result<ModelSpec, anyhow::Error> {
        if !(self.channels == 1 || self.channels == 3) {
            return Err(
                UsageError(format!("--channels must be 1 or 3, got {}", self.channels)).into(),
            );
        }
        let pre = Preprocess::standard(self.input_size, self.channels);
        Ok(match &self.backbone {
            Some(file) => ModelSpec::backbone(file, pre, self.dim, seed)?,
            None => ModelSpec::resnet(pre, self.dim, seed),
        })
    }
}

impl EmbedArgs {
    pub fn to_config(&self) -> Result<EmbedConfig, anyhow::Error> {
        let device = self.runtime.apply()?;
        if self.batch_size == 0 {
            return Err(UsageError("--batch-size must be at least 1".into()).into());
        }
        let model = match &self.model {
            Some(dir) => ModelChoice::Checkpoint(dir.clone()),
            None => ModelChoice::Fresh(self.network.fresh_spec(self.runtime.seed)?),
        };
        Ok(EmbedConfig {
            corpus: self.corpus.clone(),
            model,
            out: self.out.clone(),
            device,
            batch_size: self.batch_size,
            strict: self.strict,
        })
    }
}
