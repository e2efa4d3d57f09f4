//! Where a job's embeddings come from: files (tripmine's directory, another tool's, or an
//! `.npy` with its labels), or a corpus run through a trained network. `mine`, `eval` and
//! `audit` all take one [`EmbeddingsFrom`]. The network lives in the libtorch crate; this
//! crate reaches it only through [`Network`], so reading files never loads libtorch.

use std::path::{Path, PathBuf};

use crate::corpus::{split_matches, Problem};
use crate::store::{self, EmbeddingSet, EmbeddingsInput, StoreError};

/// A corpus to embed with a checkpoint.
#[derive(Debug, Clone)]
pub struct ModelRun {
    pub corpus: PathBuf,
    pub model: PathBuf,
    /// Images per forward pass.
    pub batch_size: usize,
    /// `auto`, `cpu`, `cuda` or `cuda:N`, resolved by the network crate.
    pub device: String,
}

/// Where the embeddings come from.
#[derive(Debug, Clone)]
pub enum EmbeddingsFrom {
    /// Read from files; `normalise` L2-normalises rows that are not unit length instead of
    /// refusing them.
    Files {
        input: EmbeddingsInput,
        normalise: bool,
    },
    /// A corpus embedded with a checkpoint.
    Model(ModelRun),
}

/// Embeddings and the files that could not be used (a corpus's undecodable images, or the
/// `skipped.csv` of a tripmine embeddings directory).
pub struct Loaded {
    pub set: EmbeddingSet,
    pub problems: Vec<Problem>,
}

/// Embeds a corpus with a checkpoint: the libtorch crate implements it.
pub trait Network {
    /// The corpus's samples (of `split` only, when given, matched as [`split_matches`] does).
    fn embed_corpus(&self, run: &ModelRun, split: Option<&str>) -> Result<Loaded, NetworkError>;
}

/// An error of the network crate, with its exit status decided there; it reads as the error
/// it carries (the same message and causes).
#[derive(Debug)]
pub struct NetworkError {
    pub error: Box<dyn std::error::Error + Send + Sync + 'static>,
    pub input: bool,
}

impl std::fmt::Display for NetworkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for NetworkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(
        "--model {0} needs tripmine's network part (libtorch), which this build does not have: \
         give --embeddings from `tripmine embed`, or use the full build (README: clone and `make build`)"
    )]
    NoNetwork(PathBuf),
    #[error("{input}: no sample has split {split:?}")]
    NoSplit { input: PathBuf, split: String },
}

impl crate::exit::Classify for SourceError {
    fn is_input_error(&self) -> bool {
        match self {
            SourceError::Store(e) => e.is_input_error(),
            SourceError::Network(e) => e.input,
            SourceError::NoNetwork(_) | SourceError::NoSplit { .. } => true,
        }
    }
}

impl EmbeddingsFrom {
    /// The file or corpus the embeddings come from, for messages.
    pub fn path(&self) -> &Path {
        match self {
            EmbeddingsFrom::Files { input, .. } => input.path(),
            EmbeddingsFrom::Model(run) => &run.corpus,
        }
    }

    pub fn needs_network(&self) -> bool {
        matches!(self, EmbeddingsFrom::Model(_))
    }

    /// Reads or computes the embeddings, of `split` only when given (refused when no sample
    /// has it).
    pub fn load(
        &self,
        network: Option<&dyn Network>,
        split: Option<&str>,
    ) -> Result<Loaded, SourceError> {
        let loaded = match self {
            EmbeddingsFrom::Files { input, normalise } => {
                let set = store::open(input, *normalise)?;
                let problems = match input {
                    EmbeddingsInput::Dir(dir) => {
                        csv::Reader::from_path(dir.join(store::SKIPPED_CSV))
                            .map(|mut r| r.deserialize().filter_map(Result::ok).collect())
                            .unwrap_or_default()
                    }
                    EmbeddingsInput::Files { .. } | EmbeddingsInput::Shards(_) => Vec::new(),
                };
                let set = match split {
                    Some(split) => set.retain(|s| split_matches(&s.split, split)),
                    None => set,
                };
                Loaded { set, problems }
            }
            EmbeddingsFrom::Model(run) => match network {
                Some(network) => network.embed_corpus(run, split)?,
                None => return Err(SourceError::NoNetwork(run.model.clone())),
            },
        };
        match split {
            Some(split) if loaded.set.is_empty() => Err(SourceError::NoSplit {
                input: self.path().to_path_buf(),
                split: split.to_string(),
            }),
            _ => Ok(loaded),
        }
    }
}
