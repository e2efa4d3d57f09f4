//! `tripmine embed`.

use std::path::PathBuf;

use clap::Args;

use super::{RuntimeArgs, UsageError};
use crate::corpus::{Preprocess, Resize, IMAGENET_MEAN, IMAGENET_STD};
use crate::embed::{EmbedConfig, EmbedSource, ModelChoice};
use crate::model::{ModelSpec, TrunkMode};

#[derive(Debug, Clone, Args)]
#[command(
    allow_negative_numbers = true,
    after_help = "Example:\n  tripmine embed --corpus photos/ --out emb/            # fresh network, seed 0\n  tripmine embed --corpus list.csv --model run/best --out emb/ --device cuda\n  tripmine embed --corpus photos/ --backbone resnet50.pt --preprocess imagenet --input-size 224 --out emb/\n  tripmine embed --model head-run/best --embeddings feats.npy --labels labels.csv --out emb/\n  tripmine embed --corpus photos/ --model run/best --out shards/ --shard-rows 1000000"
)]
pub struct EmbedArgs {
    /// ImageFolder root (root/<label>/<image>) or CSV manifest (path,label[,split])
    #[arg(
        long,
        required_unless_present = "embeddings",
        conflicts_with = "embeddings"
    )]
    pub corpus: Option<PathBuf>,
    /// Feature rows for a --model trained with `train --embeddings`: a directory with
    /// embeddings.npy + samples.csv, or an .npy with --labels; the output is an ordinary
    /// embeddings directory that mine, eval, audit and view read
    #[arg(long, requires = "model")]
    pub embeddings: Option<PathBuf>,
    /// CSV naming the rows of --embeddings in order: path,label[,split] (or just label)
    #[arg(long, requires = "embeddings")]
    pub labels: Option<PathBuf>,
    /// Checkpoint directory (model.json + model.safetensors); default: a fresh network from --seed
    #[arg(long, conflicts_with_all = ["dim", "input_size", "channels", "backbone", "preprocess", "mean", "std", "resize"])]
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
    /// Write a shard directory (manifest.json and .npy shards of about N rows, each class in
    /// one shard) instead of an embeddings directory: what `tripmine mine` streams out of core
    /// and tripmine.ray reads
    #[arg(long)]
    pub shard_rows: Option<usize>,
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
    /// TorchScript module (.pt) used as the trunk under a linear head (export your own with
    /// scripts/export_backbone.py); `train` fine-tunes it unless --freeze-backbone
    #[arg(long)]
    pub backbone: Option<PathBuf>,
    /// imagenet: 3 channels with ImageNet's mean and std, what ImageNet-pretrained backbones
    /// expect (the default for 3 channels too; for 1 channel the default is mean 0.5, std 0.25)
    #[arg(long, value_enum)]
    pub preprocess: Option<PreprocessPreset>,
    /// Per-channel mean of the input normalisation, e.g. 0.5,0.5,0.5 (with --std)
    #[arg(
        long,
        value_delimiter = ',',
        requires = "std",
        conflicts_with = "preprocess"
    )]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation of the input normalisation (with --mean)
    #[arg(long, value_delimiter = ',', requires = "mean")]
    pub std: Option<Vec<f32>>,
    /// How a non-square image becomes square: centre-crop keeps the aspect ratio (shorter
    /// side to --input-size, then the centre); stretch distorts it
    #[arg(long, value_enum, default_value_t = Resize::CentreCrop)]
    pub resize: Resize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PreprocessPreset {
    Imagenet,
}

impl NetworkArgs {
    /// The preprocessing of a fresh network, checked.
    fn preprocess(&self) -> Result<Preprocess, UsageError> {
        if !(self.channels == 1 || self.channels == 3) {
            return Err(UsageError(format!(
                "--channels must be 1 or 3, got {}",
                self.channels
            )));
        }
        let mut pre = Preprocess::standard(self.input_size, self.channels);
        pre.resize = self.resize;
        if self.preprocess == Some(PreprocessPreset::Imagenet) {
            if self.channels != 3 {
                return Err(UsageError(
                    "--preprocess imagenet needs --channels 3 (ImageNet statistics are RGB)".into(),
                ));
            }
            (pre.mean, pre.std) = (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec());
        }
        if let (Some(mean), Some(std)) = (&self.mean, &self.std) {
            let c = self.channels as usize;
            if mean.len() != c || std.len() != c {
                return Err(UsageError(format!(
                    "--mean and --std need one value per channel ({c}), got {} and {}",
                    mean.len(),
                    std.len()
                )));
            }
            if std.iter().any(|s| !(s.is_finite() && *s > 0.0))
                || mean.iter().any(|m| !m.is_finite())
            {
                return Err(UsageError(
                    "--std values must be positive and --mean values finite".into(),
                ));
            }
            (pre.mean, pre.std) = (mean.clone(), std.clone());
        }
        Ok(pre)
    }

    /// A fresh network; a backbone's trunk is trained or kept as `trunk` says.
    pub fn fresh_spec(
        &self,
        seed: u64,
        trunk: TrunkMode,
        freeze_bn: bool,
    ) -> Result<ModelSpec, anyhow::Error> {
        let pre = self.preprocess()?;
        Ok(match &self.backbone {
            Some(file) => ModelSpec::backbone(file, pre, self.dim, seed, trunk, freeze_bn)?,
            None => ModelSpec::resnet(pre, self.dim, seed),
        })
    }
}

impl EmbedArgs {
    pub fn to_config(&self) -> Result<EmbedConfig, anyhow::Error> {
        let device = super::torch_runtime(&self.runtime)?;
        super::images_per_pass(self.batch_size)?;
        let model = match &self.model {
            Some(dir) => ModelChoice::Checkpoint(dir.clone()),
            // Nothing trains here: a backbone is a frozen trunk under a fresh head.
            None => ModelChoice::Fresh(self.network.fresh_spec(
                self.runtime.seed,
                TrunkMode::Frozen,
                false,
            )?),
        };
        let source = match (&self.corpus, &self.embeddings) {
            (_, Some(e)) => EmbedSource::Features(
                crate::store::EmbeddingsInput::from_args(e, self.labels.as_deref())
                    .map_err(UsageError)?,
            ),
            (Some(c), None) => EmbedSource::Corpus(c.clone()),
            (None, None) => unreachable!("clap requires --corpus or --embeddings"),
        };
        Ok(EmbedConfig {
            source,
            model,
            out: self.out.clone(),
            device,
            batch_size: self.batch_size,
            strict: self.strict,
            shard_rows: self.shard_rows,
        })
    }
}
