//! The network layers: a small ResNet, or a TorchScript trunk with a linear head.

use std::path::Path;

use tch::nn::{self, ModuleT};
use tch::{CModule, Device, Kind, Tensor};

use super::{Architecture, ModelError, ModelSpec};

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
}

impl Net {
    pub(super) fn build(
        p: &nn::Path,
        spec: &ModelSpec,
        device: Device,
    ) -> Result<Self, ModelError> {
        let trunk = Trunk::build(p, spec, device)?;
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
            Trunk::Backbone(b) => b.forward(xs)?,
        };
        Ok(raw.apply_t(&self.neck, train))
    }
}

impl Trunk {
    fn build(p: &nn::Path, spec: &ModelSpec, device: Device) -> Result<Self, ModelError> {
        match &spec.architecture {
            Architecture::Resnet { widths } => {
                if widths.is_empty() || widths.iter().any(|&w| w < 1) {
                    return Err(ModelError::Config(format!("bad resnet widths {widths:?}")));
                }
                let channels = spec.preprocess.channels as i64;
                let resnet = Resnet::new(p, channels, spec.preprocess.input_size, widths, spec.dim);
                Ok(Trunk::Resnet(Box::new(resnet)))
            }
            Architecture::Backbone { file, features, .. } => {
                let trunk = Backbone::load_trunk(file, device)?;
                let head = nn::linear(p / "head", *features, spec.dim, Default::default());
                Ok(Trunk::Backbone(Backbone { trunk, head }))
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
    trunk: CModule,
    head: nn::Linear,
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

    fn forward(&self, xs: &Tensor) -> Result<Tensor, ModelError> {
        // The trunk is frozen: its features are constants for the head.
        let feats = tch::no_grad(|| self.trunk.forward_ts(&[xs]))?;
        Ok(pooled(&feats).to_kind(Kind::Float).apply(&self.head))
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
