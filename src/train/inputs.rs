//! The training inputs of one split, behind one trait: decoded images (augmented as batches
//! are drawn), or feature rows (a frozen trunk's cached features, or any model's features from
//! `train --embeddings`). Batch sources, prefetch and validation see only [`Inputs`].

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::{augment, io_err, TrainError};
use crate::corpus::{Preprocess, Sample};
use crate::embed::{embed_feature_rows, embed_pixels};
use crate::model::{Architecture, Embedder, ModelError};
use crate::output::{write_atomic, write_json};
use crate::rng::Rng;
use crate::store::sha256_hex;

/// What a batch of one input kind is made of, and how the network takes it.
pub(super) trait Inputs: Send + Sync {
    /// The network input of the samples at `indices`, in that order; `augment` (when given)
    /// draws this batch's augmentation.
    fn batch(&self, indices: &[usize], augment: Option<Rng>) -> Tensor;
    /// The model on a batch built by [`Inputs::batch`].
    fn forward(&self, model: &Embedder, input: &Tensor, train: bool) -> Result<Tensor, ModelError>;
    /// Every sample's embedding (evaluation mode, unaugmented), N × D row-major.
    fn embed(&self, model: &Embedder) -> Result<Vec<f32>, ModelError>;
    /// Whether a training step is so small (a head over feature rows: a 32-row GEMM) that
    /// libtorch's worker threads cost more than they give: waking them for every small op
    /// took 11.4 s an epoch over 100,000 rows on 2 threads against 5.0 s on one.
    fn light_steps(&self) -> bool {
        false
    }
}

/// Decoded images kept as HWC bytes ([`Preprocess::pixels`]), a quarter of their f32 size;
/// batches are normalised (and augmented) from them as they are drawn.
pub(super) struct DecodedImages {
    pub pixels: Vec<u8>,
    pub preprocess: Preprocess,
}

impl Inputs for DecodedImages {
    fn batch(&self, indices: &[usize], augment: Option<Rng>) -> Tensor {
        let len = self.preprocess.len();
        let mut bytes = Vec::with_capacity(indices.len() * len);
        for &i in indices {
            bytes.extend_from_slice(&self.pixels[i * len..(i + 1) * len]);
        }
        let input = crate::model::input_tensor(&self.preprocess, &bytes);
        match augment {
            Some(mut rng) => augment::augment(&input, &mut rng),
            None => input,
        }
    }

    fn forward(&self, model: &Embedder, input: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        model.forward(input, train)
    }

    fn embed(&self, model: &Embedder) -> Result<Vec<f32>, ModelError> {
        embed_pixels(model, &self.pixels, 256)
    }
}

/// Feature rows, `views` per sample (view-major): view 0 is the unaugmented image (or the
/// given row), views 1.. are augmented ones; an augmented batch picks one of those per sample.
pub(super) struct FeatureRows {
    pub data: Vec<f32>,
    pub dim: usize,
    pub samples: usize,
    pub views: usize,
}

impl FeatureRows {
    fn row(&self, view: usize, i: usize) -> &[f32] {
        let at = (view * self.samples + i) * self.dim;
        &self.data[at..at + self.dim]
    }
}

impl Inputs for FeatureRows {
    fn batch(&self, indices: &[usize], augment: Option<Rng>) -> Tensor {
        let mut rng = augment.filter(|_| self.views > 1);
        let mut values = Vec::with_capacity(indices.len() * self.dim);
        for &i in indices {
            let view = rng.as_mut().map_or(0, |r| 1 + r.below(self.views - 1));
            values.extend_from_slice(self.row(view, i));
        }
        Tensor::from_slice(&values).view([indices.len() as i64, self.dim as i64])
    }

    fn forward(&self, model: &Embedder, input: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        model.forward_features(input, train)
    }

    fn embed(&self, model: &Embedder) -> Result<Vec<f32>, ModelError> {
        embed_feature_rows(model, &self.data[..self.samples * self.dim], self.dim)
    }

    fn light_steps(&self) -> bool {
        true
    }
}

/// What a cache of trunk features was computed from; a cache is reused only when all of it
/// matches (`--resume`, or a new run into the same directory's cache).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CacheKey {
    backbone_sha256: String,
    preprocess: Preprocess,
    /// SHA-256 over every sample's path and file contents, in order.
    corpus_sha256: String,
    views: usize,
    /// The augmentation seed (absent without augmented views).
    seed: Option<u64>,
}

/// Images per trunk pass while the cache is filled.
const TRUNK_BATCH: usize = 64;

/// A frozen trunk's features of `images` (view 0 unaugmented, then `views` augmented views
/// drawn from `seed`), read from `cache_dir/NAME.npy` when its key matches, else computed
/// once and written there.
pub(super) fn cached_trunk_features(
    model: &Embedder,
    images: &DecodedImages,
    samples: &[Sample],
    augmented_views: usize,
    seed: u64,
    cache_dir: &Path,
    name: &str,
) -> Result<FeatureRows, TrainError> {
    let Architecture::Backbone { sha256, .. } = &model.spec.architecture else {
        return Err(TrainError::Input(
            "only a TorchScript trunk has features to cache".into(),
        ));
    };
    let mut listing = String::new();
    for s in samples {
        let bytes = fs::read(&s.file).map_err(io_err(&s.file))?;
        // One line per sample: a path cannot hold a newline's worth of ambiguity here,
        // because the hash that follows it has a fixed length.
        listing.push_str(&format!("{}\t{}\n", s.path, sha256_hex(&bytes)));
    }
    let key = CacheKey {
        backbone_sha256: sha256.clone(),
        preprocess: images.preprocess.clone(),
        corpus_sha256: sha256_hex(listing.as_bytes()),
        views: augmented_views,
        seed: (augmented_views > 0).then_some(seed),
    };
    let npy = cache_dir.join(format!("{name}.npy"));
    let json = cache_dir.join(format!("{name}.json"));
    let views = 1 + augmented_views;
    let stored = fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str::<CacheKey>(&t).ok());
    if stored.as_ref() == Some(&key) {
        if let Ok((rows, dim, data)) = fs::read(&npy)
            .map_err(|e| e.to_string())
            .and_then(|b| crate::npy::read_f32_matrix(&b).map_err(|e| e.to_string()))
        {
            if rows == views * samples.len() {
                return Ok(FeatureRows {
                    data,
                    dim,
                    samples: samples.len(),
                    views,
                });
            }
        }
    }
    let n = samples.len();
    let bar = crate::progress::bar((views * n) as u64, "caching trunk features");
    let mut data = Vec::new();
    let mut dim = 0;
    let all: Vec<usize> = (0..n).collect();
    for view in 0..views {
        for (c, chunk) in all.chunks(TRUNK_BATCH).enumerate() {
            let rng = (view > 0).then(|| Rng::for_item(seed ^ VIEW_SALT ^ view as u64, c as u64));
            let input = images.batch(chunk, rng);
            let feats = model.trunk_features(&input)?.ok_or_else(|| {
                TrainError::Input("only a TorchScript trunk has features to cache".into())
            })?;
            dim = feats.size()[1] as usize;
            data.extend(
                Vec::<f32>::try_from(feats.to_device(Device::Cpu).contiguous().view([-1]))
                    .map_err(ModelError::from)?,
            );
            bar.inc(chunk.len() as u64);
        }
    }
    bar.finish_and_clear();
    fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    let bytes = crate::store::npy_bytes(views * n, dim, &data);
    write_atomic(&npy, |w| std::io::Write::write_all(w, &bytes)).map_err(io_err(&npy))?;
    write_json(&json, &key).map_err(io_err(&json))?;
    Ok(FeatureRows {
        data,
        dim,
        samples: n,
        views,
    })
}

/// Keeps the augmentation streams of cached views apart from those of training batches.
const VIEW_SALT: u64 = 0xCAC4_ED00_0000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn augmented_batches_draw_views_and_clean_batches_take_view_zero() {
        // Two samples, one clean and two augmented views each, rows filled with their view.
        let rows = FeatureRows {
            data: (0..3)
                .flat_map(|v| std::iter::repeat_n(v as f32, 2 * 2))
                .collect(),
            dim: 2,
            samples: 2,
            views: 3,
        };
        let clean = Vec::<f32>::try_from(rows.batch(&[1, 0], None).view([-1])).unwrap();
        assert_eq!(clean, [0.0; 4]);
        let mut seen = std::collections::BTreeSet::new();
        for s in 0..20 {
            let b =
                Vec::<f32>::try_from(rows.batch(&[0, 1], Some(Rng::new(s))).view([-1])).unwrap();
            assert!(b.iter().all(|&v| v == 1.0 || v == 2.0), "{b:?}");
            seen.extend(b.iter().map(|&v| v as u8));
        }
        assert_eq!(seen.len(), 2, "both augmented views are used");
    }
}
