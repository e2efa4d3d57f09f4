//! The run directory: `config.json`, `metrics.csv`, `last/` and `best/` checkpoints (model,
//! optimiser state, run state) and `rounds/NNN/` triplets. Checkpoint directories are
//! replaced whole: written under a temporary name, then swapped in.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::optim::Optimizer;
use crate::model::{Embedder, ModelError};
use crate::output::{publish_dir, staging_dir, write_csv, write_json};

pub const CONFIG_JSON: &str = "config.json";
pub const METRICS_CSV: &str = "metrics.csv";
pub const STATE_JSON: &str = "state.json";
pub const OPTIMIZER_WEIGHTS: &str = "optimizer.safetensors";
pub const METRICS_HEADER: [&str; 10] = [
    "epoch",
    "step",
    "loss",
    "active_fraction",
    "triplets",
    "p_at_1",
    "r_precision",
    "map_at_r",
    "lr",
    "seconds",
];

/// Where a run stands after a completed epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Epochs completed (1-based count).
    pub epoch: usize,
    pub step: usize,
    /// NaN (written as `null`: JSON has no NaN) when the run has no validation metrics.
    #[serde(deserialize_with = "nan_if_null")]
    pub best_map_at_r: f64,
    pub best_epoch: usize,
}

/// serde_json writes a non-finite f64 as `null`; it reads back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One line of `metrics.csv`; epoch 0 is the network before training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub epoch: usize,
    pub step: usize,
    pub loss: f64,
    pub active_fraction: f64,
    pub triplets: usize,
    pub p_at_1: f64,
    pub r_precision: f64,
    pub map_at_r: f64,
    pub lr: f64,
    pub seconds: f64,
}

pub fn last(run: &Path) -> PathBuf {
    run.join("last")
}

pub fn best(run: &Path) -> PathBuf {
    run.join("best")
}

pub fn round_dir(run: &Path, round: usize) -> PathBuf {
    run.join("rounds").join(format!("{round:03}"))
}

/// Writes model, optimiser, state and what the batch source keeps (`source_state` writes into
/// the staged directory) into `dir`, replacing it whole.
pub fn save_checkpoint(
    dir: &Path,
    model: &Embedder,
    optimizer: &Optimizer,
    state: &RunState,
    source_state: &dyn Fn(&Path) -> std::io::Result<()>,
) -> Result<(), ModelError> {
    // Staged beside it and exchanged in one step (output::publish_dir): `dir` always holds a
    // whole checkpoint, the old one or the new one.
    let fresh = staging_dir(dir);
    let _ = fs::remove_dir_all(&fresh);
    model.save(&fresh)?;
    optimizer.save(&fresh.join(OPTIMIZER_WEIGHTS))?;
    write_json(&fresh.join(STATE_JSON), state)?;
    source_state(&fresh)?;
    publish_dir(&fresh, dir)?;
    Ok(())
}

/// Creates the run directory, removing what a start that never completed an epoch left.
pub fn clear_unfinished(run: &Path) -> std::io::Result<()> {
    fs::create_dir_all(run)?;
    for dir in ["rounds", super::report::ASSETS] {
        match fs::remove_dir_all(run.join(dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    for file in [METRICS_CSV, super::report::REPORT_HTML] {
        match fs::remove_file(run.join(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The checkpoint to resume from: `last/`, or its previous version if a swap was interrupted.
pub fn resumable(run: &Path) -> Option<PathBuf> {
    // `.last.old-PID` is where publish_dir moves the old set aside on systems without an
    // atomic exchange; a kill there leaves it as the only whole checkpoint.
    let aside = fs::read_dir(run)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".last.old-"))
        });
    std::iter::once(last(run))
        .chain(aside)
        .find(|d| d.join(STATE_JSON).is_file())
}

pub fn read_state(dir: &Path) -> Result<RunState, ModelError> {
    let text = fs::read_to_string(dir.join(STATE_JSON))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Checkpoint {
        dir: dir.to_path_buf(),
        message: format!("{STATE_JSON}: {e}"),
    })
}

pub fn write_metrics(run: &Path, rows: &[MetricsRow]) -> std::io::Result<()> {
    write_csv(&run.join(METRICS_CSV), rows, &METRICS_HEADER)
}

pub fn read_metrics(run: &Path) -> Vec<MetricsRow> {
    csv::Reader::from_path(run.join(METRICS_CSV))
        .map(|mut r| r.deserialize().filter_map(Result::ok).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_without_validation_metrics_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = RunState {
            epoch: 2,
            step: 14,
            best_map_at_r: f64::NAN,
            best_epoch: 2,
        };
        write_json(&dir.path().join(STATE_JSON), &state).unwrap();
        let back = read_state(dir.path()).unwrap();
        assert!(back.best_map_at_r.is_nan());
        assert_eq!((back.epoch, back.step, back.best_epoch), (2, 14, 2));
    }
}
