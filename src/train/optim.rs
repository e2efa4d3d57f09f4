//! Optimisers (Adam, AdamW, SGD with momentum) and the learning-rate schedule, written out
//! here rather than taken from libtorch so that their state can be checkpointed and a resumed
//! run continues bit for bit.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::model::ModelError;
use crate::output::produce_atomic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// cosine decay to 0 over the run
    Cosine,
    /// multiply by --lr-gamma every --lr-step epochs
    Step,
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub schedule: ScheduleKind,
    pub warmup_epochs: f64,
    pub lr_step_epochs: usize,
    pub lr_gamma: f64,
    /// A fine-tuned trunk's learning rate relative to the head's.
    #[serde(default = "default_backbone_lr_scale")]
    pub backbone_lr_scale: f64,
}

/// A pretrained trunk learns ten times slower than the fresh head on it, so that the head's
/// first, large gradients do not wreck its features.
pub const DEFAULT_BACKBONE_LR_SCALE: f64 = 0.1;

fn default_backbone_lr_scale() -> f64 {
    DEFAULT_BACKBONE_LR_SCALE
}

/// Where a step falls in the run: `epoch` (0-based) and the step's place in that epoch's true
/// number of steps. Every batch source yields its epochs' real step counts, so the schedule
/// reaches its end at the last step that actually runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunPosition {
    pub epoch: usize,
    /// 0-based step within the epoch.
    pub step: usize,
    pub steps_in_epoch: usize,
    pub epochs: usize,
}

impl RunPosition {
    /// Epochs completed once this step has run: in (0, epochs].
    fn epochs_done(&self) -> f64 {
        let within = (self.step + 1) as f64 / self.steps_in_epoch.max(self.step + 1) as f64;
        self.epoch as f64 + within
    }
}

/// The learning rate of one step: a linear warm-up over `warmup_epochs`, then the schedule. A
/// plain function of the position, so resuming needs nothing else; the cosine reaches 0 at the
/// last step of the last epoch.
pub fn learning_rate(cfg: &OptimConfig, at: RunPosition) -> f64 {
    let done = at.epochs_done();
    if done < cfg.warmup_epochs {
        return cfg.lr * done / cfg.warmup_epochs;
    }
    match cfg.schedule {
        ScheduleKind::Constant => cfg.lr,
        ScheduleKind::Cosine => {
            let span = (at.epochs as f64 - cfg.warmup_epochs).max(f64::EPSILON);
            let progress = ((done - cfg.warmup_epochs) / span).clamp(0.0, 1.0);
            0.5 * cfg.lr * (1.0 + (std::f64::consts::PI * progress).cos())
        }
        ScheduleKind::Step => {
            cfg.lr
                * cfg
                    .lr_gamma
                    .powi((at.epoch / cfg.lr_step_epochs.max(1)) as i32)
        }
    }
}

pub struct Optimizer {
    cfg: OptimConfig,
    params: Vec<(String, Tensor)>,
    /// Each parameter's learning rate relative to the step's (a trunk's is scaled).
    lr_scale: Vec<f64>,
    /// First moments (Adam) or momentum buffers (SGD), one per parameter.
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    /// Adam's denominator, one per parameter, rewritten every step (not state): a step of a
    /// fine-tuned trunk then allocates nothing parameter-sized.
    scratch: Vec<Tensor>,
    pub steps: i64,
    /// Steps each parameter has taken (had a gradient in), for Adam's bias correction, as
    /// PyTorch counts them: a trunk frozen for the first epochs starts its moments, and their
    /// correction, at its first step, not at the run's.
    param_steps: Vec<i64>,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Optimizer {
    pub fn new(vs: &nn::VarStore, cfg: OptimConfig) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = || {
            params
                .iter()
                .map(|(_, p)| p.zeros_like())
                .collect::<Vec<_>>()
        };
        let lr_scale = params
            .iter()
            .map(|(name, _)| {
                if name.starts_with(crate::model::TRUNK_PREFIX) {
                    cfg.backbone_lr_scale
                } else {
                    1.0
                }
            })
            .collect();
        Optimizer {
            first: zeros(),
            second: zeros(),
            scratch: zeros(),
            lr_scale,
            param_steps: vec![0; params.len()],
            params,
            cfg,
            steps: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            p.shallow_clone().zero_grad();
        }
    }

    pub fn step(&mut self, step_lr: f64) {
        self.steps += 1;
        let cfg = &self.cfg;
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter().enumerate() {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                self.param_steps[i] += 1;
                let t = self.param_steps[i] as i32;
                let lr = step_lr * self.lr_scale[i];
                let mut p = p.shallow_clone();
                let decayed = |grad: Tensor| {
                    if cfg.weight_decay == 0.0 {
                        grad
                    } else {
                        grad + cfg.weight_decay * &p
                    }
                };
                // State and weights are updated in place; each step allocates only a few
                // parameter-sized temporaries.
                match cfg.kind {
                    OptimizerKind::Sgd => {
                        let g = decayed(grad);
                        let velocity = &mut self.first[i];
                        *velocity *= cfg.momentum;
                        *velocity += &g;
                        p += &*velocity * -lr;
                    }
                    OptimizerKind::Adam | OptimizerKind::Adamw => {
                        let g = if cfg.kind == OptimizerKind::Adam {
                            decayed(grad)
                        } else {
                            p *= 1.0 - lr * cfg.weight_decay;
                            grad
                        };
                        let (mean, square, denominator) = (
                            &mut self.first[i],
                            &mut self.second[i],
                            &mut self.scratch[i],
                        );
                        // In place throughout: m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²
                        // (scaled first so that addcmul_ needs no temporary).
                        let _ = mean.lerp_(&g, 1.0 - BETA1);
                        *square *= BETA2 / (1.0 - BETA2);
                        let _ = square.addcmul_(&g, &g);
                        *square *= 1.0 - BETA2;
                        if lr == 0.0 {
                            continue;
                        }
                        // p −= lr/(1−β1ᵗ) · m / (√(v/(1−β2ᵗ)) + ε), with the step's factor folded
                        // into the denominator.
                        let _ = square.sqrt_out(denominator);
                        *denominator *= 1.0 / (1.0 - BETA2.powi(t)).sqrt();
                        *denominator += EPS;
                        *denominator *= -(1.0 - BETA1.powi(t)) / lr;
                        let _ = p.addcdiv_(mean, denominator);
                    }
                }
            }
        });
    }

    /// Saves the moment buffers and each parameter's step count (safetensors); the run's step
    /// count goes into the run state.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let counts: Vec<Tensor> = self
            .param_steps
            .iter()
            .map(|&n| Tensor::from_slice(&[n]))
            .collect();
        let named: Vec<(String, &Tensor)> = self
            .params
            .iter()
            .enumerate()
            .flat_map(|(i, (name, _))| {
                [
                    (format!("first.{name}"), &self.first[i]),
                    (format!("second.{name}"), &self.second[i]),
                    (format!("step.{name}"), &counts[i]),
                ]
            })
            .collect();
        produce_atomic(path, |tmp| {
            Tensor::write_safetensors(&named, tmp).map_err(ModelError::from)
        })
    }

    pub fn load(&mut self, path: &Path, steps: i64) -> Result<(), ModelError> {
        let stored: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(path)?.into_iter().collect();
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (prefix, slot) in [
                ("first", &mut self.first[i]),
                ("second", &mut self.second[i]),
            ] {
                let t = stored.get(&format!("{prefix}.{name}")).ok_or_else(|| {
                    ModelError::Checkpoint {
                        dir: path.to_path_buf(),
                        message: format!("optimiser state lacks {prefix}.{name}"),
                    }
                })?;
                *slot = t.to_device(p.device());
            }
            // A checkpoint from before per-parameter counts: every parameter at the run's.
            self.param_steps[i] = stored
                .get(&format!("step.{name}"))
                .map_or(steps, |t| t.int64_value(&[0]));
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: ScheduleKind) -> OptimConfig {
        OptimConfig {
            kind: OptimizerKind::Adam,
            lr: 1.0,
            weight_decay: 0.0,
            momentum: 0.9,
            schedule,
            warmup_epochs: 1.0,
            lr_step_epochs: 2,
            lr_gamma: 0.1,
            backbone_lr_scale: 0.1,
        }
    }

    fn at(epoch: usize, step: usize, steps_in_epoch: usize) -> RunPosition {
        RunPosition {
            epoch,
            step,
            steps_in_epoch,
            epochs: 10,
        }
    }

    #[test]
    fn warmup_then_schedule() {
        let c = cfg(ScheduleKind::Cosine);
        assert_eq!(learning_rate(&c, at(0, 0, 10)), 0.1);
        assert_eq!(learning_rate(&c, at(0, 9, 10)), 1.0);
        assert!(learning_rate(&c, at(5, 0, 10)) < 1.0);
        let s = cfg(ScheduleKind::Step);
        assert_eq!(learning_rate(&s, at(1, 5, 10)), 1.0);
        assert!((learning_rate(&s, at(2, 5, 10)) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn cosine_reaches_its_floor_at_the_last_real_step_whatever_the_epoch_lengths() {
        let c = cfg(ScheduleKind::Cosine);
        // Epochs of unequal length, as a global round with skipped anchors gives.
        for steps in [3usize, 17, 250] {
            assert!(learning_rate(&c, at(9, steps - 1, steps)).abs() < 1e-12);
            assert!(learning_rate(&c, at(9, steps - 2, steps.max(2))) > 0.0);
        }
        let mut last = f64::INFINITY;
        for epoch in 1..10 {
            for step in 0..7 {
                let lr = learning_rate(&c, at(epoch, step, 7));
                assert!(lr <= last, "the cosine never rises after the warm-up");
                last = lr;
            }
        }
    }

    /// PyTorch's Adam (torch 2.13, lr 0.1, float64, recorded) on p = [0.5, −1] with these
    /// gradients: a parameter whose first gradient comes at the run's third step (a trunk
    /// frozen for a while) moves as PyTorch moves a parameter on its own first steps.
    #[test]
    fn adam_counts_steps_per_parameter_as_pytorch_does() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let start = Tensor::from_slice(&[0.5f32, -1.0]);
        let early = vs.root().var_copy("early", &start);
        let late = vs.root().var_copy("late", &start);
        let mut opt = Optimizer::new(
            &vs,
            OptimConfig {
                lr: 0.1,
                ..cfg(ScheduleKind::Constant)
            },
        );
        let grads = [[0.3f32, -0.2], [0.1, 0.4], [-0.5, 0.2]];
        let pytorch = [
            [0.400_000_003_333_333_2, -0.900_000_004_999_999_8],
            [0.312_893_612_157_195_6, -0.936_610_356_546_036_9],
            [0.330_931_033_298_161_2, -0.988_534_436_331_662_4],
        ];
        let term = |p: &Tensor, g: &[f32; 2]| (p * Tensor::from_slice(g)).sum(tch::Kind::Float);
        for g in &grads[..2] {
            opt.zero_grad();
            term(&early, g).backward();
            opt.step(0.1);
        }
        for (g, want) in grads.iter().zip(pytorch) {
            opt.zero_grad();
            (term(&early, g) + term(&late, g)).backward();
            opt.step(0.1);
            let got = Vec::<f32>::try_from(&late).unwrap();
            for (x, w) in got.iter().zip(want) {
                assert!(
                    (*x as f64 - w).abs() < 1e-5,
                    "{got:?} against PyTorch's {want:?}"
                );
            }
        }
    }

    #[test]
    fn adam_minimises_a_quadratic() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let x = vs.root().var("x", &[3], nn::Init::Const(5.0));
        let mut opt = Optimizer::new(
            &vs,
            OptimConfig {
                lr: 0.1,
                ..cfg(ScheduleKind::Constant)
            },
        );
        for _ in 0..300 {
            opt.zero_grad();
            (&x * &x).sum(tch::Kind::Float).backward();
            opt.step(0.1);
        }
        assert!(f64::try_from(x.abs().max()).unwrap() < 0.05);
    }

    /// Two steps on f(x) = Σ x² from x = [1, -2] against the update rules written out in f64.
    #[test]
    fn updates_follow_the_textbook_rules_for_each_optimiser() {
        for (kind, weight_decay) in [
            (OptimizerKind::Adam, 0.1),
            (OptimizerKind::Adamw, 0.1),
            (OptimizerKind::Sgd, 0.1),
        ] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let x = vs
                .root()
                .var_copy("x", &Tensor::from_slice(&[1.0f32, -2.0]));
            let c = OptimConfig {
                kind,
                weight_decay,
                ..cfg(ScheduleKind::Constant)
            };
            let mut opt = Optimizer::new(&vs, c.clone());
            let lr = 0.05;
            let mut expected = [1.0f64, -2.0];
            let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
            for t in 1..=2 {
                opt.zero_grad();
                (&x * &x).sum(tch::Kind::Float).backward();
                opt.step(lr);
                for j in 0..2 {
                    let p = expected[j];
                    let mut g = 2.0 * p;
                    match kind {
                        OptimizerKind::Sgd => {
                            g += weight_decay * p;
                            m[j] = c.momentum * m[j] + g;
                            expected[j] = p - lr * m[j];
                        }
                        _ => {
                            let mut p = p;
                            if kind == OptimizerKind::Adam {
                                g += weight_decay * p;
                            } else {
                                p *= 1.0 - lr * weight_decay;
                            }
                            m[j] = BETA1 * m[j] + (1.0 - BETA1) * g;
                            v[j] = BETA2 * v[j] + (1.0 - BETA2) * g * g;
                            let m_hat = m[j] / (1.0 - BETA1.powi(t));
                            let v_hat = v[j] / (1.0 - BETA2.powi(t));
                            expected[j] = p - lr * m_hat / (v_hat.sqrt() + EPS);
                        }
                    }
                }
            }
            let got = Vec::<f32>::try_from(&x.detach()).unwrap();
            for j in 0..2 {
                assert!(
                    (got[j] as f64 - expected[j]).abs() < 1e-5,
                    "{kind:?}: {got:?} against {expected:?}"
                );
            }
        }
    }
}
