//! The network layers: a small ResNet, or a TorchScript trunk (frozen or fine-tuned) with a
//! linear head.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tch::nn::{self, ModuleT};
use tch::{CModule, Device, Kind, Tensor, TrainableCModule};

use super::{Architecture, HeadKind, ModelError, ModelSpec, TrunkMode, TRUNK_PREFIX};

pub(super) struct Net {
    trunk: Trunk,
    /// Batch norm on the embedding before L2 normalisation (a "BNNeck"): it centres the
    /// outputs, so that they spread over the sphere instead of sharing one direction, which
    /// otherwise lets hard mining collapse the embedding early in training.
    neck: nn::BatchNorm,
}

enum Trunk {
    Resnet(Box<Resnet>),
    Backbone(Backbone),
    Head(FeatureHead),
}

/// A projection head over feature rows: optional L2 normalisation, standardisation with
/// recorded statistics, then one linear layer or a two-layer MLP.
struct FeatureHead {
    normalise_input: bool,
    mean: Tensor,
    std: Tensor,
    layers: nn::Sequential,
}

impl FeatureHead {
    fn forward(&self, features: &Tensor) -> Tensor {
        let mut x = features.to_kind(Kind::Float);
        if self.normalise_input {
            x = &x
                / x.norm_scalaropt_dim(2, [1i64].as_slice(), true)
                    .clamp_min(1e-12);
        }
        ((x - &self.mean) / &self.std).apply(&self.layers)
    }
}

/// Hidden width of an MLP head: the input's, capped so a wide input stays a small GEMM.
const MLP_HIDDEN_MAX: i64 = 1024;

impl Net {
    /// `module` is the TorchScript file a backbone's trunk is read from.
    pub(super) fn build(
        p: &nn::Path,
        spec: &ModelSpec,
        device: Device,
        module: Option<&Path>,
    ) -> Result<Self, ModelError> {
        let trunk = Trunk::build(p, spec, device, module)?;
        let neck_cfg = nn::BatchNormConfig {
            affine: false,
            ..Default::default()
        };
        let neck = nn::batch_norm1d(p / "neck", spec.dim, neck_cfg);
        Ok(Net { trunk, neck })
    }

    pub(super) fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let raw = match &self.trunk {
            Trunk::Resnet(r) => r.forward_t(xs, train),
            Trunk::Backbone(b) => b.features(xs, train)?.apply(&b.head),
            Trunk::Head(_) => {
                return Err(ModelError::Config(
                    "this model is a head trained over feature rows: give it features with \
                     --embeddings, not images"
                        .into(),
                ))
            }
        };
        Ok(raw.apply_t(&self.neck, train))
    }

    pub(super) fn trunk_features(&self, xs: &Tensor) -> Result<Option<Tensor>, ModelError> {
        match &self.trunk {
            Trunk::Resnet(_) | Trunk::Head(_) => Ok(None),
            Trunk::Backbone(b) => Ok(Some(tch::no_grad(|| b.features(xs, false))?)),
        }
    }

    pub(super) fn forward_head(
        &self,
        features: &Tensor,
        train: bool,
    ) -> Result<Tensor, ModelError> {
        match &self.trunk {
            Trunk::Resnet(_) => Err(ModelError::Config(
                "the built-in network has no separate trunk whose features a head could take"
                    .into(),
            )),
            Trunk::Backbone(b) => Ok(features
                .to_kind(Kind::Float)
                .apply(&b.head)
                .apply_t(&self.neck, train)),
            Trunk::Head(h) => Ok(h.forward(features).apply_t(&self.neck, train)),
        }
    }

    pub(super) fn set_trunk_trainable(&self, trainable: bool) {
        if let Trunk::Backbone(b) = &self.trunk {
            b.trainable_now.store(trainable, Ordering::Relaxed);
        }
    }
}

impl Trunk {
    fn build(
        p: &nn::Path,
        spec: &ModelSpec,
        device: Device,
        module: Option<&Path>,
    ) -> Result<Self, ModelError> {
        match &spec.architecture {
            Architecture::Resnet { widths } => {
                if widths.is_empty() || widths.iter().any(|&w| w < 1) {
                    return Err(ModelError::Config(format!("bad resnet widths {widths:?}")));
                }
                let channels = spec.preprocess.channels as i64;
                let resnet = Resnet::new(p, channels, spec.preprocess.input_size, widths, spec.dim);
                Ok(Trunk::Resnet(Box::new(resnet)))
            }
            Architecture::Head {
                features,
                head,
                normalise_input,
                mean,
                std,
            } => {
                let width = *features as usize;
                if mean.len() != width || std.len() != width || std.iter().any(|s| *s <= 0.0) {
                    return Err(ModelError::Config(format!(
                        "a head over {features}-d features needs {features} means and positive standard deviations (got {} and {})",
                        mean.len(),
                        std.len()
                    )));
                }
                let stat = |v: &[f32]| Tensor::from_slice(v).view([1, *features]).to_device(device);
                let mut layers = nn::seq();
                match head {
                    HeadKind::Linear => {
                        layers = layers.add(nn::linear(
                            p / "head",
                            *features,
                            spec.dim,
                            Default::default(),
                        ));
                    }
                    HeadKind::Mlp => {
                        let hidden = (*features).min(MLP_HIDDEN_MAX);
                        layers = layers
                            .add(nn::linear(
                                p / "hidden",
                                *features,
                                hidden,
                                Default::default(),
                            ))
                            .add_fn(|x| x.relu())
                            .add(nn::linear(p / "head", hidden, spec.dim, Default::default()));
                    }
                }
                Ok(Trunk::Head(FeatureHead {
                    normalise_input: *normalise_input,
                    mean: stat(mean),
                    std: stat(std),
                    layers,
                }))
            }
            Architecture::Backbone {
                file,
                features,
                trunk,
                freeze_bn,
                ..
            } => {
                let file = module.unwrap_or(file);
                let module = match trunk {
                    TrunkMode::Frozen => TrunkModule::Frozen(Backbone::load_trunk(file, device)?),
                    TrunkMode::FineTuned => {
                        let path = p / TRUNK_PREFIX.trim_end_matches('.');
                        let mut m = TrainableCModule::load(file, path).map_err(|e| {
                            ModelError::Backbone {
                                file: file.to_path_buf(),
                                message: format!("not a loadable TorchScript module: {e}"),
                            }
                        })?;
                        m.set_eval();
                        TrunkModule::FineTuned(Mutex::new(Moded {
                            module: m,
                            training: false,
                        }))
                    }
                };
                let head = nn::linear(p / "head", *features, spec.dim, Default::default());
                Ok(Trunk::Backbone(Backbone {
                    trunk: module,
                    head,
                    freeze_bn: *freeze_bn,
                    trainable_now: AtomicBool::new(true),
                }))
            }
        }
    }
}

#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    shortcut: Option<(nn::Conv2D, nn::BatchNorm)>,
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: k / 2,
        bias: false,
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

impl BasicBlock {
    fn new(p: &nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || cin != cout).then(|| {
            (
                conv(p / "down", cin, cout, 1, stride),
                nn::batch_norm2d(p / "down_bn", cout, Default::default()),
            )
        });
        BasicBlock {
            conv1: conv(p / "conv1", cin, cout, 3, stride),
            bn1: nn::batch_norm2d(p / "bn1", cout, Default::default()),
            conv2: conv(p / "conv2", cout, cout, 3, 1),
            bn2: nn::batch_norm2d(p / "bn2", cout, Default::default()),
            shortcut,
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        // In place where autograd allows (batch norm keeps its input, not its output; a sum
        // keeps neither): two fewer activations per block held for the backward pass.
        let mut y = xs.apply(&self.conv1).apply_t(&self.bn1, train);
        let _ = y.relu_();
        let mut y = y.apply(&self.conv2).apply_t(&self.bn2, train);
        match &self.shortcut {
            Some((c, bn)) => y += xs.apply(c).apply_t(bn, train),
            None => y += xs,
        }
        let _ = y.relu_();
        y
    }
}

#[derive(Debug)]
pub(super) struct Resnet {
    stem: nn::Conv2D,
    stem_bn: nn::BatchNorm,
    /// Large inputs are reduced first, as in ResNet: a stride-2 stem above 64 px and a
    /// max-pool from 128 px, so that 224 px costs about what 56 px does.
    stem_pool: bool,
    blocks: Vec<BasicBlock>,
    head: nn::Linear,
}

impl Resnet {
    fn new(p: &nn::Path, channels: i64, input_size: u32, widths: &[i64], dim: i64) -> Self {
        let stem = conv(
            p / "stem",
            channels,
            widths[0],
            3,
            if input_size > 64 { 2 } else { 1 },
        );
        let stem_bn = nn::batch_norm2d(p / "stem_bn", widths[0], Default::default());
        let mut cin = widths[0];
        let blocks = widths
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let b = BasicBlock::new(
                    &(p / format!("block{i}")),
                    cin,
                    w,
                    if i == 0 { 1 } else { 2 },
                );
                cin = w;
                b
            })
            .collect();
        let head = nn::linear(p / "head", cin, dim, Default::default());
        Resnet {
            stem,
            stem_bn,
            stem_pool: input_size >= 128,
            blocks,
            head,
        }
    }
}

impl ModuleT for Resnet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = xs.apply(&self.stem).apply_t(&self.stem_bn, train);
        let _ = x.relu_();
        if self.stem_pool {
            x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for b in &self.blocks {
            x = b.forward_t(&x, train);
        }
        x.adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .apply(&self.head)
    }
}

pub(super) struct Backbone {
    trunk: TrunkModule,
    head: nn::Linear,
    freeze_bn: bool,
    /// Off while `--freeze-backbone-epochs` lets the head train alone.
    trainable_now: AtomicBool,
}

enum TrunkModule {
    /// Always in evaluation mode and run without gradients.
    Frozen(CModule),
    /// Switched between training and evaluation mode as each forward pass asks; the lock
    /// makes that switch and the pass one unit.
    FineTuned(Mutex<Moded>),
}

struct Moded {
    module: TrainableCModule,
    training: bool,
}

impl Backbone {
    fn load_trunk(file: &Path, device: Device) -> Result<CModule, ModelError> {
        let mut trunk =
            CModule::load_on_device(file, device).map_err(|e| ModelError::Backbone {
                file: file.to_path_buf(),
                message: format!("not a loadable TorchScript module: {e}"),
            })?;
        trunk.set_eval();
        Ok(trunk)
    }

    /// Features per image of the trunk on `input` (1 × C × S × S), checked to be usable.
    pub(super) fn probe_features(file: &Path, input: &Tensor) -> Result<i64, ModelError> {
        let trunk = Self::load_trunk(file, Device::Cpu)?;
        let out =
            tch::no_grad(|| trunk.forward_ts(&[input])).map_err(|e| ModelError::Backbone {
                file: file.to_path_buf(),
                message: format!("forward pass on a {:?} input failed: {e}", input.size()),
            })?;
        let feats = pooled(&out);
        match feats.size().as_slice() {
            [1, f] => Ok(*f),
            other => Err(ModelError::Backbone {
                file: file.to_path_buf(),
                message: format!("output of shape {other:?}; expected N×F or N×C×H×W"),
            }),
        }
    }

    /// Pooled float features of a batch. A frozen trunk's are constants for the head; a
    /// fine-tuned trunk runs in training mode (batch norm updating its statistics, dropout on:
    /// a scripted module follows this, a traced one keeps the mode it was traced in) with
    /// gradients when `train` asks and no `--freeze-bn` or frozen epoch says otherwise.
    fn features(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let raw = match &self.trunk {
            TrunkModule::Frozen(m) => tch::no_grad(|| m.forward_ts(&[xs]))?,
            TrunkModule::FineTuned(lock) => {
                let learning = train && self.trainable_now.load(Ordering::Relaxed);
                let mut m = lock.lock().unwrap_or_else(|e| e.into_inner());
                let training_mode = learning && !self.freeze_bn;
                if m.training != training_mode {
                    if training_mode {
                        m.module.set_train();
                    } else {
                        m.module.set_eval();
                    }
                    m.training = training_mode;
                }
                if learning {
                    m.module.forward_ts(&[xs])?
                } else {
                    tch::no_grad(|| m.module.forward_ts(&[xs]))?
                }
            }
        };
        Ok(pooled(&raw).to_kind(Kind::Float))
    }
}

impl Net {
    /// Writes a fine-tuned trunk (weights and batch-norm statistics) as TorchScript; a frozen
    /// trunk's module is its original file, and the built-in network has none.
    pub(super) fn save_module(&self, path: &Path) -> Result<(), ModelError> {
        match &self.trunk {
            Trunk::Backbone(Backbone {
                trunk: TrunkModule::FineTuned(lock),
                ..
            }) => {
                let m = lock.lock().unwrap_or_else(|e| e.into_inner());
                Ok(m.module.save(path)?)
            }
            _ => Err(ModelError::Config(
                "only a fine-tuned trunk is saved as a module".into(),
            )),
        }
    }
}

/// Spatial outputs (N × C × H × W) are average-pooled to N × C.
fn pooled(out: &Tensor) -> Tensor {
    if out.dim() == 4 {
        out.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    } else {
        out.shallow_clone()
    }
}
