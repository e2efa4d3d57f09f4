//! Batched embedding of a corpus: decode in parallel, run the network, keep what decoded.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tch::Device;

use crate::corpus::{self, decode_image, Corpus, CorpusError, Preprocess, Problem, Sample};
use crate::definitions::Distance;
use crate::embeddings::{Loaded, ModelRun, Network, NetworkError};
use crate::exit::Classify;
use crate::model::{Embedder, ModelError, ModelSpec};
use crate::progress;
pub use crate::store::model_summary;
use crate::store::{self, EmbeddingSet, EmbeddingsMeta, SampleRow, StoreError, NO_CHECKPOINT};

/// Which network embeds the corpus.
#[derive(Debug, Clone)]
pub enum ModelChoice {
    Checkpoint(PathBuf),
    /// A freshly initialised network (its spec carries the seed).
    Fresh(ModelSpec),
}

impl ModelChoice {
    pub fn build(&self, device: Device) -> Result<Embedder, ModelError> {
        match self {
            ModelChoice::Checkpoint(dir) => Embedder::load(dir, device),
            ModelChoice::Fresh(spec) => Embedder::init(spec.clone(), device),
        }
    }

    /// What `embeddings.json` and triplet sidecars record about the model.
    pub fn describe(&self, model: &Embedder) -> serde_json::Value {
        let source = match self {
            ModelChoice::Checkpoint(dir) => dir.display().to_string(),
            ModelChoice::Fresh(_) => NO_CHECKPOINT.into(),
        };
        serde_json::json!({ "checkpoint": source, "origin": model.spec.origin, "spec": model.spec })
    }
}

/// What `tripmine embed` runs the network on.
#[derive(Debug, Clone)]
pub enum EmbedSource {
    /// The images of a corpus.
    Corpus(PathBuf),
    /// Feature rows, for a head trained with `train --embeddings`.
    Features(store::EmbeddingsInput),
}

/// `tripmine embed`, validated.
#[derive(Debug, Clone)]
pub struct EmbedConfig {
    pub source: EmbedSource,
    pub model: ModelChoice,
    pub out: PathBuf,
    pub device: Device,
    pub batch_size: usize,
    pub strict: bool,
    /// `--shard-rows`: write a shard directory of about this many rows per shard instead.
    pub shard_rows: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("--strict: {} file(s) could not be used, nothing was written:\n{}", .0.len(), list_problems(.0))]
    Strict(Vec<Problem>),
    #[error("no image of {0} could be decoded; see the reasons above")]
    NothingDecoded(PathBuf),
    #[error("{0}")]
    Input(String),
}

fn list_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {}: {}", p.path, p.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Embeddings of the samples that decoded; `samples[i]` owns row `i` of `data`.
pub struct Embedded {
    pub samples: Vec<Sample>,
    pub data: Vec<f32>,
    pub dim: usize,
    pub problems: Vec<Problem>,
}

/// Decodes `samples` in parallel into one buffer of HWC bytes ([`Preprocess::pixels`]);
/// returns the buffer, the samples that decoded (in order) and the problems of the rest.
pub fn decode_samples(
    samples: &[Sample],
    pre: &Preprocess,
) -> (Vec<u8>, Vec<Sample>, Vec<Problem>) {
    let decoded: Vec<Result<Vec<u8>, String>> = samples
        .par_iter()
        .map(|s| decode_image(&s.file).map(|img| pre.pixels(&img)))
        .collect();
    let mut pixels = Vec::with_capacity(samples.len() * pre.len());
    let mut kept = Vec::new();
    let mut problems = Vec::new();
    for (sample, result) in samples.iter().zip(decoded) {
        match result {
            Ok(values) => {
                pixels.extend_from_slice(&values);
                kept.push(sample.clone());
            }
            Err(reason) => problems.push(Problem {
                path: sample.path.clone(),
                reason,
            }),
        }
    }
    (pixels, kept, problems)
}

/// Embeddings of decoded images (concatenated HWC bytes), `batch_size` at a time, as N×D
/// row-major floats; only one batch is ever held as network input.
pub fn embed_pixels(
    model: &Embedder,
    pixels: &[u8],
    batch_size: usize,
) -> Result<Vec<f32>, ModelError> {
    let pre = &model.spec.preprocess;
    let mut out = Vec::with_capacity(pixels.len() / pre.len().max(1) * model.spec.dim as usize);
    for chunk in pixels.chunks(batch_size.max(1) * pre.len().max(1)) {
        let emb = model
            .embed(&crate::model::input_tensor(pre, chunk))?
            .to_device(Device::Cpu)
            .contiguous()
            .view([-1]);
        out.extend(Vec::<f32>::try_from(&emb)?);
    }
    Ok(out)
}

/// Rows a head embeds per call.
const FEATURE_CHUNK: usize = 4096;

/// Embeddings of feature rows (N × `width`, row-major) through a head, in chunks, as N×D
/// row-major floats. A head is a small GEMM: no progress bar.
pub fn embed_feature_rows(
    model: &Embedder,
    rows: &[f32],
    width: usize,
) -> Result<Vec<f32>, ModelError> {
    let width = width.max(1);
    let n = rows.len() / width;
    let mut out = Vec::with_capacity(n * model.spec.dim as usize);
    for chunk in rows.chunks(FEATURE_CHUNK * width) {
        let x = tch::Tensor::from_slice(chunk).view([-1, width as i64]);
        let emb = model
            .embed_features(&x)?
            .to_device(Device::Cpu)
            .contiguous();
        out.extend(Vec::<f32>::try_from(emb.view([-1]))?);
    }
    Ok(out)
}

/// Embeds `samples` in batches. A scoped thread decodes the next batch (on rayon's pool)
/// while the network (on libtorch's) embeds the current one.
pub fn embed_samples(
    samples: &[Sample],
    model: &Embedder,
    batch_size: usize,
) -> Result<Embedded, ModelError> {
    let pre = &model.spec.preprocess;
    let bar = progress::bar(samples.len() as u64, "embedding");
    let mut out = Embedded {
        samples: Vec::new(),
        data: Vec::new(),
        dim: model.spec.dim as usize,
        problems: Vec::new(),
    };
    std::thread::scope(|scope| {
        let (decoded, ready) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for chunk in samples.chunks(batch_size.max(1)) {
                if decoded
                    .send((chunk.len(), decode_samples(chunk, pre)))
                    .is_err()
                {
                    return; // the embedding side stopped on an error
                }
            }
        });
        for (len, (pixels, kept, problems)) in ready {
            out.data.extend(embed_pixels(model, &pixels, len)?);
            out.samples.extend(kept);
            out.problems.extend(problems);
            bar.inc(len as u64);
        }
        Ok::<_, ModelError>(())
    })?;
    bar.finish_and_clear();
    Ok(out)
}

fn undecodable(samples: &[Sample]) -> Vec<Problem> {
    samples
        .par_iter()
        .filter_map(|s| {
            decode_image(&s.file).err().map(|reason| Problem {
                path: s.path.clone(),
                reason,
            })
        })
        .collect()
}

/// A corpus embedded in memory, with the files that could not be used.
pub struct CorpusEmbedding {
    pub set: EmbeddingSet,
    /// `embeddings.npy` exactly as it is written (and hashed).
    pub npy: Vec<u8>,
    pub problems: Vec<Problem>,
    pub singleton_labels: Vec<String>,
}

/// Opens, decodes and embeds a corpus; under `strict` any unusable file is an error.
pub fn embed_corpus(
    corpus: &Path,
    model: &ModelChoice,
    device: Device,
    batch_size: usize,
    strict: bool,
    split: Option<&str>,
) -> Result<CorpusEmbedding, EmbedError> {
    let mut listed = corpus::open(corpus)?;
    if let Some(split) = split {
        listed
            .samples
            .retain(|s| corpus::split_matches(&s.split, split));
        if listed.samples.is_empty() {
            return Err(EmbedError::Input(format!(
                "{}: no sample has split {split:?}",
                corpus.display()
            )));
        }
    }
    if strict {
        // Fail before any network work, naming every unusable file at once.
        let mut problems = listed.problems.clone();
        problems.extend(undecodable(&listed.samples));
        if !problems.is_empty() {
            problems.sort_by(|a, b| a.path.cmp(&b.path));
            return Err(EmbedError::Strict(problems));
        }
    }
    let network = model.build(device)?;
    if network.takes_features() {
        return Err(EmbedError::Input(format!(
            "this model is a head trained over feature rows, not a network over images: give it \
             the features with --embeddings FILE [--labels CSV] instead of --corpus {}",
            corpus.display()
        )));
    }
    let embedded = embed_samples(&listed.samples, &network, batch_size)?;
    let mut problems = listed.problems.clone();
    problems.extend(embedded.problems.iter().cloned());
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    if strict && !problems.is_empty() {
        return Err(EmbedError::Strict(problems));
    }
    if embedded.samples.is_empty() {
        return Err(EmbedError::NothingDecoded(corpus.to_path_buf()));
    }
    let count = embedded.samples.len();
    let npy = store::npy_bytes(count, embedded.dim, &embedded.data);
    let meta = EmbeddingsMeta {
        tripmine_version: env!("CARGO_PKG_VERSION").into(),
        corpus: corpus.display().to_string(),
        count,
        dim: embedded.dim,
        distance: Distance::Euclidean,
        normalised: true,
        skipped: problems.len(),
        model: model.describe(&network),
        sha256: store::sha256_hex(&npy),
        samples_sha256: None,
        corpus_root: corpus::root_of(corpus).map(|r| r.display().to_string()),
    };
    let kept = Corpus {
        samples: embedded.samples,
        ..listed
    };
    let singleton_labels = kept
        .singleton_labels()
        .into_iter()
        .map(String::from)
        .collect();
    let samples = kept
        .samples
        .into_iter()
        .enumerate()
        .map(|(index, s)| SampleRow {
            index,
            path: s.path,
            label: s.label,
            split: s.split,
        })
        .collect();
    let set = EmbeddingSet {
        dim: embedded.dim,
        data: embedded.data,
        samples,
        meta,
        loaded: None,
    };
    Ok(CorpusEmbedding {
        set,
        npy,
        problems,
        singleton_labels,
    })
}

/// Feature rows through a head trained over features (`train --embeddings`): an ordinary
/// embeddings set, named and labelled as the rows were.
pub fn embed_features(
    input: &store::EmbeddingsInput,
    model: &ModelChoice,
    device: Device,
) -> Result<CorpusEmbedding, EmbedError> {
    let network = model.build(device)?;
    if !network.takes_features() {
        return Err(EmbedError::Input(format!(
            "this model embeds images, not feature rows: give it --corpus instead of --embeddings {}",
            input.path().display()
        )));
    }
    let rows = store::open_rows(input, store::RowCheck::AsTheyAre)?;
    let expected = match &network.spec.architecture {
        crate::model::Architecture::Head { features, .. } => *features as usize,
        _ => unreachable!("takes_features"),
    };
    if rows.dim != expected {
        return Err(EmbedError::Input(format!(
            "{} has {}-d rows, but the head was trained on {expected}-d features",
            input.path().display(),
            rows.dim
        )));
    }
    let dim = network.spec.dim as usize;
    let data = embed_feature_rows(&network, &rows.data, rows.dim)?;
    let count = rows.len();
    let npy = store::npy_bytes(count, dim, &data);
    let meta = EmbeddingsMeta {
        tripmine_version: env!("CARGO_PKG_VERSION").into(),
        corpus: input.path().display().to_string(),
        count,
        dim,
        distance: Distance::Euclidean,
        normalised: true,
        skipped: 0,
        model: model.describe(&network),
        sha256: store::sha256_hex(&npy),
        samples_sha256: None,
        corpus_root: rows.meta.corpus_root.clone(),
    };
    let samples: Vec<SampleRow> = rows
        .samples
        .into_iter()
        .enumerate()
        .map(|(index, s)| SampleRow { index, ..s })
        .collect();
    let mut per_label: std::collections::BTreeMap<&str, usize> = Default::default();
    for s in &samples {
        *per_label.entry(&s.label).or_default() += 1;
    }
    let singleton_labels = per_label
        .into_iter()
        .filter(|(_, n)| *n == 1)
        .map(|(l, _)| l.to_string())
        .collect();
    Ok(CorpusEmbedding {
        set: EmbeddingSet {
            dim,
            data,
            samples,
            meta,
            loaded: None,
        },
        npy,
        problems: Vec::new(),
        singleton_labels,
    })
}

/// Runs `tripmine embed`: nothing is written under `--strict` if any file was unusable.
pub fn run(cfg: &EmbedConfig) -> Result<CorpusEmbedding, EmbedError> {
    // Refuse a foreign --out before the work, not after it.
    let marker = match cfg.shard_rows {
        Some(_) => crate::shards::MANIFEST,
        None => store::EMBEDDINGS_JSON,
    };
    if crate::output::is_foreign(&cfg.out, marker) {
        return Err(StoreError::NotOurs(cfg.out.clone()).into());
    }
    let embedded = match &cfg.source {
        EmbedSource::Corpus(corpus) => embed_corpus(
            corpus,
            &cfg.model,
            cfg.device,
            cfg.batch_size,
            cfg.strict,
            None,
        )?,
        EmbedSource::Features(input) => embed_features(input, &cfg.model, cfg.device)?,
    };
    match cfg.shard_rows {
        Some(shard_rows) => {
            let set = &embedded.set;
            let labels: Vec<String> = set.samples.iter().map(|s| s.label.clone()).collect();
            let paths: Vec<String> = set.samples.iter().map(|s| s.path.clone()).collect();
            let rows = crate::shards::Rows {
                data: &set.data,
                dim: set.dim,
                labels: &labels,
                paths: Some(&paths),
                model: Some(set.meta.model.clone()),
            };
            crate::shards::write(&cfg.out, &rows, shard_rows).map_err(|message| {
                StoreError::Invalid {
                    dir: cfg.out.clone(),
                    message,
                }
            })?;
        }
        None => store::write(
            &cfg.out,
            &embedded.npy,
            &embedded.set.samples,
            &embedded.problems,
            &embedded.set.meta,
        )?,
    }
    Ok(embedded)
}

impl crate::exit::Classify for EmbedError {
    fn is_input_error(&self) -> bool {
        match self {
            EmbedError::Corpus(_)
            | EmbedError::Strict(_)
            | EmbedError::NothingDecoded(_)
            | EmbedError::Input(_) => true,
            EmbedError::Model(e) => e.is_input_error(),
            EmbedError::Store(e) => e.is_input_error(),
        }
    }
}

/// The network behind `mine`, `eval` and `audit` given `--corpus` with `--model`.
pub struct CheckpointNetwork;

impl Network for CheckpointNetwork {
    fn embed_corpus(&self, run: &ModelRun, split: Option<&str>) -> Result<Loaded, NetworkError> {
        let fail = |e: EmbedError| NetworkError {
            input: e.is_input_error(),
            error: Box::new(e),
        };
        let device = crate::model::parse_device(&run.device)
            .map_err(|message| fail(EmbedError::Input(message)))?;
        // `--threads` sized the worker pool (`RuntimeArgs::apply`); libtorch gets as many.
        tch::set_num_threads(rayon::current_num_threads() as i32);
        let done = embed_corpus(
            &run.corpus,
            &ModelChoice::Checkpoint(run.model.clone()),
            device,
            run.batch_size,
            false,
            split,
        )
        .map_err(fail)?;
        Ok(Loaded {
            set: done.set,
            problems: done.problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_summary_names_the_checkpoint_when_there_is_one() {
        let trained = serde_json::json!({"checkpoint": "run/best", "origin": "random initialisation (seed 7)"});
        assert_eq!(model_summary(&trained), "checkpoint run/best");
        let fresh = serde_json::json!({"checkpoint": NO_CHECKPOINT, "origin": "random initialisation (seed 7)"});
        assert_eq!(model_summary(&fresh), "random initialisation (seed 7)");
    }
}
