//! The embedding network (built-in residual CNN, or a TorchScript trunk with a linear head),
//! its description (`model.json`) and its checkpoint directory.

mod checkpoint;
mod net;

pub use checkpoint::{BACKBONE_MODULE, MODEL_JSON, MODEL_WEIGHTS};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::corpus::Preprocess;
use net::Net;

/// The network's shape, enough to rebuild it before loading weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Architecture {
    /// A small residual CNN: one basic block per stage, stride 2 from the second stage on.
    Resnet { widths: Vec<i64> },
    /// A TorchScript trunk followed by a trainable linear head.
    Backbone {
        /// The original TorchScript file: absolute in memory, relative to the checkpoint
        /// folder in a checkpoint's `model.json` (so that a copied run directory still finds it).
        file: PathBuf,
        sha256: String,
        features: i64,
        /// Whether training changes the trunk's weights (checkpoints of fine-tuned trunks hold
        /// them, with the module itself, in `backbone.pt`).
        #[serde(default)]
        trunk: TrunkMode,
        /// Keep the trunk in evaluation mode while it trains: batch norm uses and keeps its
        /// running statistics, dropout is off.
        #[serde(default)]
        freeze_bn: bool,
    },
    /// A projection head over feature rows (`train --embeddings`): rows are L2-normalised
    /// first when `normalise_input`, then standardised with the training rows' statistics.
    Head {
        features: i64,
        head: HeadKind,
        normalise_input: bool,
        mean: Vec<f32>,
        std: Vec<f32>,
    },
}

/// The layers of a projection head over feature rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum HeadKind {
    /// One linear layer.
    #[default]
    Linear,
    /// Linear, ReLU, linear (hidden width = the input's, at most 1,024).
    Mlp,
}

/// What training does to a TorchScript trunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrunkMode {
    /// Constant: only the head trains, and the trunk's features can be computed once.
    #[default]
    Frozen,
    /// Trained with the head (its parameters join the VarStore under `trunk.`).
    FineTuned,
}

/// Prefix of the trunk's parameters in the VarStore, the checkpoint and the optimiser state.
pub const TRUNK_PREFIX: &str = "trunk.";

/// Everything `model.json` records about a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub format: String,
    pub architecture: Architecture,
    pub preprocess: Preprocess,
    /// Embedding dimension; outputs are L2-normalised.
    pub dim: i64,
    pub seed: u64,
    /// How the weights came to be, e.g. "random initialisation (seed 7)".
    pub origin: String,
    /// Filled by the trainer; free-form so older checkpoints stay readable.
    #[serde(default)]
    pub training: serde_json::Value,
}

pub const SPEC_FORMAT: &str = "tripmine-model-1";
pub const DEFAULT_WIDTHS: [i64; 4] = [32, 64, 128, 256];

impl ModelSpec {
    /// Whether training changes a TorchScript trunk (checkpoints then carry its module).
    pub fn fine_tunes_trunk(&self) -> bool {
        matches!(
            self.architecture,
            Architecture::Backbone {
                trunk: TrunkMode::FineTuned,
                ..
            }
        )
    }

    /// What the checkpoint in `dir` describes (its backbone located), without its weights.
    pub fn from_checkpoint(dir: &Path) -> Result<Self, ModelError> {
        checkpoint::read_spec(dir).map(|(spec, _)| spec)
    }

    /// This checkpoint's network as the start of a new run: the weights of `dir`, trained
    /// further from `seed`, with no training record yet.
    pub fn warm_start(mut self, dir: &Path, seed: u64) -> Self {
        self.origin = format!("the checkpoint {} ({})", dir.display(), self.origin);
        self.seed = seed;
        self.training = serde_json::Value::Null;
        self
    }

    /// A freshly initialised built-in network.
    pub fn resnet(preprocess: Preprocess, dim: i64, seed: u64) -> Self {
        ModelSpec {
            format: SPEC_FORMAT.into(),
            architecture: Architecture::Resnet {
                widths: DEFAULT_WIDTHS.to_vec(),
            },
            preprocess,
            dim,
            seed,
            origin: format!("random initialisation (seed {seed})"),
            training: serde_json::Value::Null,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("checkpoint {dir}: {message}")]
    Checkpoint { dir: PathBuf, message: String },
    #[error("backbone {file}: {message}")]
    Backbone { file: PathBuf, message: String },
    #[error("model configuration: {0}")]
    Config(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Parses `auto|cpu|cuda|cuda:N`; `auto` takes the first GPU when libtorch sees one.
pub fn parse_device(name: &str) -> Result<Device, String> {
    match name {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "cuda:0" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        _ if name.starts_with("cuda") => match name.strip_prefix("cuda:").map(str::parse::<i64>) {
            Some(Ok(i)) if tch::Cuda::is_available() && i < tch::Cuda::device_count() => {
                Ok(Device::Cuda(i as usize))
            }
            _ => Err(format!(
                "device {name} is not available (libtorch sees {} GPU(s))",
                tch::Cuda::device_count()
            )),
        },
        _ => Err(format!(
            "unknown device {name:?}; expected auto, cpu, cuda or cuda:N"
        )),
    }
}

/// A network with its weights, ready to embed or train.
pub struct Embedder {
    pub spec: ModelSpec,
    pub vs: nn::VarStore,
    net: Net,
}

impl Embedder {
    /// Builds the network of `spec` with fresh weights drawn from `spec.seed`.
    pub fn init(spec: ModelSpec, device: Device) -> Result<Self, ModelError> {
        if spec.dim < 1 {
            return Err(ModelError::Config(format!(
                "embedding dim must be positive, got {}",
                spec.dim
            )));
        }
        let p = &spec.preprocess;
        let takes_images = !matches!(spec.architecture, Architecture::Head { .. });
        if takes_images
            && (!(p.channels == 1 || p.channels == 3)
                || p.mean.len() != p.channels as usize
                || p.std.len() != p.channels as usize)
        {
            return Err(ModelError::Config(format!(
                "channels must be 1 or 3 with one mean and std each (got channels {}, mean {:?}, std {:?})",
                p.channels, p.mean, p.std
            )));
        }
        if takes_images && p.input_size < 8 {
            return Err(ModelError::Config(format!(
                "input size must be at least 8, got {}",
                p.input_size
            )));
        }
        tch::manual_seed(spec.seed as i64);
        let vs = nn::VarStore::new(device);
        let module = match &spec.architecture {
            Architecture::Backbone { file, .. } => Some(file.clone()),
            Architecture::Resnet { .. } | Architecture::Head { .. } => None,
        };
        let net = Net::build(&vs.root(), &spec, device, module.as_deref())?;
        Ok(Embedder { spec, vs, net })
    }

    /// Like [`Embedder::init`], with the TorchScript trunk read from `module` (a checkpoint's
    /// fine-tuned `backbone.pt`, or the original file found where the checkpoint says).
    fn init_with_module(
        spec: ModelSpec,
        device: Device,
        module: &Path,
    ) -> Result<Self, ModelError> {
        let mut with_module = spec.clone();
        if let Architecture::Backbone { file, .. } = &mut with_module.architecture {
            *file = module.to_path_buf();
        }
        let mut model = Embedder::init(with_module, device)?;
        model.spec = spec;
        Ok(model)
    }

    /// Whether the trunk's weights get gradients in the steps that follow (with
    /// `--freeze-backbone-epochs` the head trains alone first). No effect on a frozen trunk.
    pub fn set_trunk_trainable(&self, trainable: bool) {
        self.net.set_trunk_trainable(trainable);
    }

    /// The features the trunk gives a batch (N × F, no gradient, evaluation mode): what a
    /// frozen trunk's cache holds. `None` for the built-in network, which has no separate trunk.
    pub fn trunk_features(&self, images: &Tensor) -> Result<Option<Tensor>, ModelError> {
        self.net.trunk_features(&self.network_input(images))
    }

    /// Unit-norm embeddings of trunk features (N × F, as [`Embedder::trunk_features`] gives
    /// them): the head and neck alone, so that a frozen trunk runs once per image.
    pub fn forward_features(&self, features: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let raw = self
            .net
            .forward_head(&features.to_device(self.device()), train)?;
        Ok(l2_normalise(&raw))
    }

    /// Loads a checkpoint directory written by [`Embedder::save`].
    pub fn load(dir: &Path, device: Device) -> Result<Self, ModelError> {
        checkpoint::load(dir, device)
    }

    /// The checkpoint in `dir` as the start of a run whose network is `spec` (what
    /// [`ModelSpec::warm_start`] made of it): its weights, and `spec.seed` for what is random.
    pub fn load_as(dir: &Path, spec: ModelSpec, device: Device) -> Result<Self, ModelError> {
        let mut model = checkpoint::load(dir, device)?;
        let loaded = &model.spec;
        if (&loaded.architecture, &loaded.preprocess, loaded.dim)
            != (&spec.architecture, &spec.preprocess, spec.dim)
        {
            return Err(ModelError::Checkpoint {
                dir: dir.to_path_buf(),
                message: "changed since this run was configured: its network is no longer the one config.json records".into(),
            });
        }
        tch::manual_seed(spec.seed as i64);
        model.spec = spec;
        Ok(model)
    }

    /// Writes `model.safetensors` and `model.json` into `dir`, each atomically.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        checkpoint::save(self, dir)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Whether the network takes feature rows rather than images (a head trained with
    /// `train --embeddings`).
    pub fn takes_features(&self) -> bool {
        matches!(self.spec.architecture, Architecture::Head { .. })
    }

    /// Embeddings of feature rows without gradients, in evaluation mode.
    pub fn embed_features(&self, features: &Tensor) -> Result<Tensor, ModelError> {
        tch::no_grad(|| self.forward_features(features, false))
    }

    /// Unit-norm embeddings of a batch (N × C × H × W, already preprocessed).
    pub fn forward(&self, images: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let raw = self.net.forward(&self.network_input(images), train)?;
        Ok(l2_normalise(&raw))
    }

    /// A batch on the network's device in channels-last memory, which the built-in ResNet and
    /// TorchScript trunks alike run faster on (EfficientNet-Lite0 fine-tuning at 64 px: 123
    /// images/s against 95 with NCHW-contiguous input, 2 cores).
    fn network_input(&self, images: &Tensor) -> Tensor {
        channels_last(&images.to_device(self.device()))
    }

    /// Embeddings without gradients, in evaluation mode.
    pub fn embed(&self, images: &Tensor) -> Result<Tensor, ModelError> {
        tch::no_grad(|| self.forward(images, false))
    }
}

/// A batch of images in channels-last memory, shape unchanged: oneDNN's convolutions run
/// faster on it than on NCHW-contiguous input (1.24× per training step of the built-in ResNet
/// at 32 px, batch 64, on 2 CPU cores; the same measured in PyTorch). Other ranks pass as they are.
fn channels_last(images: &Tensor) -> Tensor {
    let size = images.size();
    let &[_, c, h, w] = size.as_slice() else {
        return images.shallow_clone();
    };
    if images.stride() == [h * w * c, 1, w * c, c] {
        return images.shallow_clone();
    }
    images
        .permute([0, 2, 3, 1])
        .contiguous()
        .permute([0, 3, 1, 2])
}

fn l2_normalise(x: &Tensor) -> Tensor {
    let norm = x
        .norm_scalaropt_dim(2, [1i64].as_slice(), true)
        .clamp_min(1e-12);
    x / norm
}

impl ModelSpec {
    /// A fresh projection head over `features`-wide rows, standardised with `mean` and `std`.
    pub fn head(
        features: i64,
        head: HeadKind,
        normalise_input: bool,
        (mean, std): (Vec<f32>, Vec<f32>),
        dim: i64,
        seed: u64,
    ) -> Self {
        ModelSpec {
            architecture: Architecture::Head {
                features,
                head,
                normalise_input,
                mean,
                std,
            },
            origin: format!(
                "random initialisation of a {head:?} head over {features}-d features (seed {seed})"
            )
            .to_lowercase(),
            ..ModelSpec::resnet(Preprocess::standard(8, 3), dim, seed)
        }
    }

    /// A head's spec with the width and standardisation of its training rows (`data`, N ×
    /// `dim`, as read: normalised here first when the head normalises its input). Other
    /// architectures are returned as they are.
    pub fn with_input_statistics(&self, data: &[f32], dim: usize) -> Self {
        let mut spec = self.clone();
        if let Architecture::Head {
            features,
            normalise_input,
            mean,
            std,
            ..
        } = &mut spec.architecture
        {
            let n = (data.len() / dim.max(1)).max(1) as f64;
            let (mut sum, mut square) = (vec![0f64; dim], vec![0f64; dim]);
            for row in data.chunks_exact(dim) {
                let scale = if *normalise_input {
                    1.0 / row
                        .iter()
                        .map(|v| (*v as f64).powi(2))
                        .sum::<f64>()
                        .sqrt()
                        .max(1e-12)
                } else {
                    1.0
                };
                for (j, v) in row.iter().enumerate() {
                    let v = *v as f64 * scale;
                    sum[j] += v;
                    square[j] += v * v;
                }
            }
            *features = dim as i64;
            *mean = sum.iter().map(|s| (s / n) as f32).collect();
            // A constant feature keeps unit scale rather than being blown up.
            *std = sum
                .iter()
                .zip(&square)
                .map(|(s, q)| {
                    let var = (q / n - (s / n).powi(2)).max(0.0);
                    if var.sqrt() < 1e-6 {
                        1.0
                    } else {
                        var.sqrt() as f32
                    }
                })
                .collect();
        }
        spec
    }

    /// A TorchScript trunk from `file` with a fresh linear head; the trunk's feature size is
    /// found by running it once on a blank input.
    pub fn backbone(
        file: &Path,
        preprocess: Preprocess,
        dim: i64,
        seed: u64,
        trunk: TrunkMode,
        freeze_bn: bool,
    ) -> Result<Self, ModelError> {
        let bytes = std::fs::read(file).map_err(|e| ModelError::Backbone {
            file: file.to_path_buf(),
            message: e.to_string(),
        })?;
        let sha256 = crate::store::sha256_hex(&bytes);
        let s = preprocess.input_size as i64;
        let blank = Tensor::zeros(
            [1, preprocess.channels as i64, s, s],
            (tch::Kind::Float, Device::Cpu),
        );
        let features = net::Backbone::probe_features(file, &blank)?;
        let file = std::fs::canonicalize(file)?;
        Ok(ModelSpec {
            architecture: Architecture::Backbone {
                file,
                sha256,
                features,
                trunk,
                freeze_bn,
            },
            ..ModelSpec::resnet(preprocess, dim, seed)
        })
    }
}

impl crate::exit::Classify for ModelError {
    fn is_input_error(&self) -> bool {
        matches!(
            self,
            ModelError::Checkpoint { .. } | ModelError::Backbone { .. } | ModelError::Config(_)
        )
    }
}

/// Network inputs (N × C × S × S, in the channels-last memory the network runs on; see
/// `Embedder::forward`) of images given as concatenated HWC bytes from
/// [`Preprocess::pixels`].
pub fn input_tensor(preprocess: &Preprocess, pixels: &[u8]) -> Tensor {
    let values = preprocess.input_values(pixels);
    let (side, c) = (preprocess.input_size as i64, preprocess.channels as i64);
    let n = (pixels.len() / preprocess.len().max(1)) as i64;
    Tensor::from_slice(&values)
        .view([n, side, side, c])
        .permute([0, 3, 1, 2])
}

#[cfg(test)]
mod tests {
    #[test]
    fn inputs_are_nchw_views_of_the_normalised_channels_last_values() {
        let p = Preprocess::standard(4, 3);
        let img =
            image::RgbImage::from_fn(4, 4, |x, y| image::Rgb([x as u8 * 60, y as u8 * 60, 7]));
        let bytes = p.pixels(&image::DynamicImage::ImageRgb8(img));
        let values = p.input_values(&bytes);
        let x = super::input_tensor(&p, &bytes);
        assert_eq!(x.size(), [1, 3, 4, 4]);
        assert_eq!(x.stride(), [48, 1, 12, 3], "channels-last strides");
        for (h, w, c) in [(0, 0, 0), (1, 2, 0), (3, 1, 1), (2, 3, 2)] {
            let want = values[(h * 4 + w) * 3 + c] as f64;
            assert_eq!(x.double_value(&[0, c as i64, h as i64, w as i64]), want);
        }
    }

    use super::*;

    #[test]
    fn resnet_outputs_unit_rows_of_the_requested_dim() {
        let spec = ModelSpec::resnet(Preprocess::standard(16, 3), 24, 1);
        let m = Embedder::init(spec, Device::Cpu).unwrap();
        let x = Tensor::randn([5, 3, 16, 16], (tch::Kind::Float, Device::Cpu));
        let e = m.embed(&x).unwrap();
        assert_eq!(e.size(), [5, 24]);
        let norms =
            Vec::<f32>::try_from(e.norm_scalaropt_dim(2, [1i64].as_slice(), false)).unwrap();
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
    }

    #[test]
    fn bad_configurations_are_errors() {
        let mut spec = ModelSpec::resnet(Preprocess::standard(16, 3), 8, 1);
        spec.preprocess.channels = 2;
        assert!(matches!(
            Embedder::init(spec, Device::Cpu),
            Err(ModelError::Config(_))
        ));
    }
}
