//! Index-guided batches (`--mining neighbour-batches`): the whole-corpus neighbour graph
//! decides which samples meet in a P×K batch, and an in-batch miner mines inside it (HTL,
//! Doppelganger mining, BatchSampler). Optionally, stored embeddings of the last refresh serve
//! as extra negatives (XBM, ANCE).
//!
//! Every `remine_every` epochs (fractions allowed) the neighbour layer gives each sample its
//! nearest other-label samples, over a bank of embeddings that every training step updates
//! for its images (slightly stale, like XBM's memory, and free: no extra forward pass; only the
//! first refresh embeds the training split). The graph and the batches come from
//! `tripmine_core::batches`, the composition that `tripmine.torch.NeighbourBatchSampler` also
//! calls. Every sample is still trained once per epoch.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use serde::Serialize;

use super::period::EpochSpan;
use super::source::{
    BatchSource, BatchTriplets, EpochRecorder, MemoryNegatives, StepBatch, TrainedStep,
};
use super::{io_err, run_dir, TrainConfig, TrainError, TrainingSet};
use crate::batches::{self, compose, epoch_rng, neighbour_graph, Composition, Graph};
use crate::knn::{self, Points};
use crate::mine::{self, PositiveRule, Triplet};
use crate::model::Embedder;
use crate::npy;
use crate::output::{write_atomic, write_json};

/// Class pairs listed in a round's `batches.json`.
const PAIRS_RECORDED: usize = 50;

/// What a refresh computed from the stored embeddings.
struct Refresh {
    embeddings: Vec<f32>,
    graph: Graph,
    /// Per sample, its memory triplets as (positive, negative): the stored positive each
    /// negative was chosen for (empty when memory negatives are off or warming up).
    memory: Vec<Vec<(usize, usize)>>,
}

/// Which classes met in an epoch's batches: `rounds/NNN/batches.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct BatchComposition {
    pub level: String,
    pub batches: usize,
    /// Refreshes of the neighbour graph during the epoch.
    pub refreshes: usize,
    /// Seconds the epoch's refreshes took (embedding when they do, indexing, the graph and
    /// memory mining).
    #[serde(default)]
    pub refresh_seconds: f64,
    /// Class pairs that shared the most batches: (label, label, batches together).
    pub pairs: Vec<(String, String, usize)>,
    /// Share of the class pairs in batches that the graph lists as neighbours.
    pub neighbour_pair_share: f64,
}

pub const BATCHES_JSON: &str = "batches.json";

/// The bank of embeddings in a checkpoint directory.
const BANK_NPY: &str = "bank.npy";

pub struct NeighbourBatches<'a> {
    cfg: &'a TrainConfig,
    /// Each training sample's embedding from its latest training step (or from the first
    /// refresh's embedding pass): what refreshes index, so they cost no extra forward pass.
    bank: Option<Vec<f32>>,
    train: &'a TrainingSet,
    eligible: Vec<usize>,
    classes: usize,
    span: EpochSpan,
    refresh: Option<Refresh>,
    plan: VecDeque<Vec<usize>>,
    unused: Vec<bool>,
    /// Steps of the epoch after which the graph is refreshed, soonest first.
    refresh_steps: VecDeque<usize>,
    step: usize,
    refreshes: usize,
    refresh_seconds: f64,
    met: HashMap<(u32, u32), usize>,
    recorder: EpochRecorder<'a>,
}

impl<'a> NeighbourBatches<'a> {
    pub fn new(cfg: &'a TrainConfig, train: &'a TrainingSet) -> Self {
        let eligible = batches::eligible(&train.labels);
        let name = format!("neighbour-batches ({})", cfg.batch_miner.name());
        NeighbourBatches {
            cfg,
            bank: None,
            train,
            eligible,
            classes: train
                .labels
                .iter()
                .map(|&l| l as usize + 1)
                .max()
                .unwrap_or(0),
            span: EpochSpan::starting(0, 0),
            refresh: None,
            plan: VecDeque::new(),
            unused: Vec::new(),
            refresh_steps: VecDeque::new(),
            step: 0,
            refreshes: 0,
            refresh_seconds: 0.0,
            met: HashMap::new(),
            recorder: EpochRecorder::new(cfg, train, name),
        }
    }

    fn composition(&self) -> Composition {
        Composition {
            groups: self.cfg.classes_per_batch,
            group_size: self.cfg.samples_per_class,
            random_share: self.cfg.random_classes,
            skip_nearest: self.cfg.skip_nearest,
        }
    }

    /// Rebuilds the graph (and the memory negatives) from the bank of embeddings, embedding
    /// the training split first when there is no bank yet. Over light inputs (feature rows,
    /// cached trunk features) the whole split is re-embedded through the current head every
    /// time: a GEMM, and the graph is never stale.
    fn refresh(&mut self, model: &Embedder) -> Result<(), TrainError> {
        let started = std::time::Instant::now();
        let cfg = self.cfg;
        let embeddings = match &self.bank {
            Some(bank) if !self.train.inputs.light_steps() => bank.clone(),
            _ => {
                let fresh = self.train.embed(model)?;
                self.bank = Some(fresh.clone());
                fresh
            }
        };
        let points = Points {
            data: &embeddings,
            dim: cfg.network.dim as usize,
            labels: &self.train.labels,
        };
        let index = knn::build(points, &cfg.knn);
        let memory_on = cfg.memory_negatives > 0 && cfg.memory_warmup.over_at(self.span, self.step);
        let graph = neighbour_graph(points, &index, cfg.skip_nearest);
        let memory = if memory_on {
            let seed = cfg.seed ^ ((self.span.epoch as u64) << 8) ^ ((self.step as u64) << 32);
            let rules = cfg.index_rules(PositiveRule::Hardest, cfg.memory_negatives, seed);
            let (triplets, _) = mine::mine(points, &index, &rules);
            memory_lists(&triplets, points.len())
        } else {
            Vec::new()
        };
        drop(index);
        self.refreshes += 1;
        self.refresh_seconds += started.elapsed().as_secs_f64();
        self.refresh = Some(Refresh {
            embeddings,
            graph,
            memory,
        });
        Ok(())
    }

    /// Composes batches of the samples not yet trained this epoch.
    fn compose_rest(&mut self) {
        let available: Vec<usize> = self
            .eligible
            .iter()
            .copied()
            .filter(|&i| self.unused[i])
            .collect();
        let graph = &self.refresh.as_ref().expect("refreshed").graph;
        let mut rng = epoch_rng(self.cfg.seed, self.span.epoch, self.step);
        let mut plan = compose(
            &self.train.labels,
            &available,
            graph,
            &self.composition(),
            &mut rng,
        );
        // A refresh inside the epoch recomposes its rest into the steps still announced.
        if self.step > 0 {
            fit_batches(&mut plan, self.span.steps.saturating_sub(self.step));
        }
        self.plan = plan.into();
    }

    fn memory_for(&self, images: &[usize]) -> Option<MemoryNegatives> {
        let refresh = self.refresh.as_ref()?;
        if refresh.memory.is_empty() {
            return None;
        }
        memory_negatives(
            images,
            &refresh.memory,
            &refresh.embeddings,
            self.cfg.network.dim as usize,
        )
    }

    fn note_meetings(&mut self, images: &[usize]) {
        let mut labels: Vec<u32> = images.iter().map(|&i| self.train.labels[i]).collect();
        labels.sort_unstable();
        labels.dedup();
        for (x, &a) in labels.iter().enumerate() {
            for &b in &labels[x + 1..] {
                *self.met.entry((a, b)).or_default() += 1;
            }
        }
    }

    fn save_composition(&mut self, batches: usize) -> Result<(), TrainError> {
        let graph = &self.refresh.as_ref().expect("refreshed").graph;
        let neighbours_of = |a: u32, b: u32| {
            graph
                .class_neighbours
                .get(a as usize)
                .is_some_and(|l| l.iter().take(self.cfg.classes_per_batch).any(|&c| c == b))
        };
        let total: usize = self.met.values().sum();
        let near: usize = self
            .met
            .iter()
            .filter(|((a, b), _)| neighbours_of(*a, *b) || neighbours_of(*b, *a))
            .map(|(_, n)| n)
            .sum();
        let mut pairs: Vec<((u32, u32), usize)> = self.met.drain().collect();
        pairs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let name = |l: u32| self.train.label_names[l as usize].clone();
        let record = BatchComposition {
            level: if self.composition().image_level(self.classes) {
                "image".into()
            } else {
                "class".into()
            },
            batches,
            refreshes: self.refreshes,
            refresh_seconds: self.refresh_seconds,
            pairs: pairs
                .into_iter()
                .take(PAIRS_RECORDED)
                .map(|((a, b), n)| (name(a), name(b), n))
                .collect(),
            neighbour_pair_share: if total == 0 {
                0.0
            } else {
                near as f64 / total as f64
            },
        };
        let dir = run_dir::round_dir(&self.cfg.out, self.span.epoch);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        write_json(&dir.join(BATCHES_JSON), &record).map_err(io_err(&dir))
    }
}

/// Per anchor, its memory triplets as (positive, negative), from the refresh's mining (which
/// already applied the strategy, the count and the false-negative guard).
fn memory_lists(triplets: &[Triplet], n: usize) -> Vec<Vec<(usize, usize)>> {
    let mut lists: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    for t in triplets {
        lists[t.anchor].push((t.positive, t.negative));
    }
    lists
}

/// The memory triplets of a batch's anchors, with the stored embeddings of their positives
/// and negatives.
fn memory_negatives(
    images: &[usize],
    memory: &[Vec<(usize, usize)>],
    stored: &[f32],
    dim: usize,
) -> Option<MemoryNegatives> {
    let row = |i: usize| &stored[i * dim..(i + 1) * dim];
    let mut out = MemoryNegatives::default();
    for &a in images {
        for &(p, n) in &memory[a] {
            out.triplets.push((a, p, n));
            out.positives.extend_from_slice(row(p));
            out.negatives.extend_from_slice(row(n));
        }
    }
    (!out.triplets.is_empty()).then_some(out)
}

/// Makes `plan` exactly `steps` batches (the epoch's announced step count, which the learning
/// rate follows): the smallest two merge while there are too many, the largest splits at a
/// group boundary while there are too few, and when none can split (under 4 samples) the
/// largest is drawn again.
fn fit_batches(plan: &mut Vec<Vec<usize>>, steps: usize) {
    while plan.len() > steps.max(1) {
        plan.sort_by_key(|b| std::cmp::Reverse(b.len()));
        let smallest = plan.pop().expect("more than one");
        plan.last_mut().expect("more than one").extend(smallest);
    }
    while plan.len() < steps {
        let Some((at, largest)) = plan.iter().enumerate().max_by_key(|(_, b)| b.len()) else {
            return;
        };
        if largest.len() < 4 {
            let again = largest.clone();
            plan.push(again);
            continue;
        }
        let half = largest.len() / 2;
        let second = plan[at].split_off(half);
        plan.push(second);
    }
}

impl BatchSource for NeighbourBatches<'_> {
    fn begin_epoch(
        &mut self,
        epoch: usize,
        first_step: usize,
        model: &Embedder,
    ) -> Result<usize, TrainError> {
        let cfg = self.cfg;
        self.span = EpochSpan::starting(epoch, first_step);
        self.step = 0;
        self.refreshes = 0;
        self.refresh_seconds = 0.0;
        self.met.clear();
        self.unused = vec![true; self.train.len()];
        // A resumed run has no graph yet and refreshes at once (so it continues bit for bit
        // only when refreshing at every epoch start); memory negatives start with a refresh.
        let memory_starts =
            cfg.memory_negatives > 0 && cfg.memory_warmup.ends_at_start(epoch, first_step);
        let at_start = cfg.remine_every.repeats_at_start(epoch, first_step);
        if at_start || self.refresh.is_none() || memory_starts {
            self.refresh(model)?;
        }
        self.compose_rest();
        self.span.steps = self.plan.len();
        let mut points = cfg.remine_every.repeats_in(self.span);
        if cfg.memory_negatives > 0 {
            points.extend(cfg.memory_warmup.ends_in(self.span));
        }
        points.retain(|&o| o > 0);
        points.sort_unstable();
        points.dedup();
        self.refresh_steps = points.into();
        self.recorder.begin(epoch);
        Ok(self.span.steps)
    }

    fn next_batch(&mut self, model: &Embedder) -> Result<Option<StepBatch>, TrainError> {
        if self.refresh_steps.front() == Some(&self.step) {
            self.refresh_steps.pop_front();
            self.refresh(model)?;
            self.compose_rest();
        }
        let Some(images) = self.plan.pop_front() else {
            return Ok(None);
        };
        self.step += 1;
        images.iter().for_each(|&i| self.unused[i] = false);
        self.note_meetings(&images);
        let memory = self.memory_for(&images);
        Ok(Some(StepBatch {
            images,
            triplets: BatchTriplets::Mine(self.cfg.batch_miner),
            memory,
        }))
    }

    fn trained(&mut self, step: &TrainedStep) {
        let dim = self.cfg.network.dim as usize;
        if let Some(bank) = self.bank.as_mut() {
            for (row, &i) in step.images.iter().enumerate() {
                if let Some(v) = step.embeddings.get(row * dim..(row + 1) * dim) {
                    bank[i * dim..(i + 1) * dim].copy_from_slice(v);
                }
            }
        }
        self.recorder.add(step.mined);
    }

    fn save_state(&self, dir: &Path) -> std::io::Result<()> {
        match &self.bank {
            Some(bank) => {
                let dim = self.cfg.network.dim as usize;
                write_atomic(&dir.join(BANK_NPY), |w| {
                    npy::write_f32_matrix(w, bank.len() / dim, dim, bank)
                })
            }
            None => Ok(()),
        }
    }

    fn load_state(&mut self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join(BANK_NPY);
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(());
        };
        let (rows, cols, data) = npy::read_f32_matrix(&bytes)
            .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))?;
        if (rows, cols) != (self.train.len(), self.cfg.network.dim as usize) {
            return Err(TrainError::Input(format!(
                "{}: {rows}×{cols} embeddings, but the training split has {} samples of dimension {}",
                path.display(),
                self.train.len(),
                self.cfg.network.dim
            )));
        }
        self.bank = Some(data);
        Ok(())
    }

    fn end_epoch(&mut self) -> Result<(), TrainError> {
        self.save_composition(self.step)?;
        self.recorder.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_triplets_keep_the_positive_each_negative_was_mined_for() {
        let t = |a, p, n| Triplet {
            anchor: a,
            positive: p,
            negative: n,
            d_ap: 0.5,
            d_an: 0.6,
            kind: crate::definitions::TripletKind::Semihard,
        };
        let lists = memory_lists(&[t(0, 1, 5), t(0, 2, 7), t(3, 4, 5)], 8);
        assert_eq!(lists[0], vec![(1, 5), (2, 7)]);
        let stored: Vec<f32> = (0..8).flat_map(|i| [i as f32, 0.0]).collect();
        let memory = memory_negatives(&[0, 6], &lists, &stored, 2).unwrap();
        assert_eq!(memory.triplets, vec![(0, 1, 5), (0, 2, 7)]);
        assert_eq!(memory.negatives, vec![5.0, 0.0, 7.0, 0.0]);
        assert_eq!(memory.positives, vec![1.0, 0.0, 2.0, 0.0]);
    }

    #[test]
    fn a_recomposed_rest_fits_the_steps_announced() {
        let batch = |n: usize, from: usize| (from..from + n).collect::<Vec<usize>>();
        let mut plan = vec![batch(8, 0), batch(8, 8), batch(3, 16), batch(8, 19)];
        fit_batches(&mut plan, 3);
        assert_eq!(plan.len(), 3);
        fit_batches(&mut plan, 5);
        assert_eq!(plan.len(), 5);
        let mut all: Vec<usize> = plan.into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..27).collect::<Vec<_>>(),
            "no sample lost or repeated"
        );
        // Batches too small to split are drawn again rather than leaving steps unrun.
        let mut tiny = vec![batch(2, 0), batch(3, 2)];
        fit_batches(&mut tiny, 4);
        assert_eq!(tiny.len(), 4);
        assert!(tiny.iter().all(|b| !b.is_empty()));
    }
}
