//! A checkpoint is a directory: `model.safetensors` (weights, readable by Python's
//! `safetensors`), `model.json` (the [`ModelSpec`] needed to rebuild the network) and, for a
//! fine-tuned TorchScript trunk, `backbone.pt` (the trained module with its batch-norm
//! statistics, which are buffers, not parameters, and so not in the VarStore).

use std::collections::HashMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use tch::{Device, Tensor};

use super::{Architecture, Embedder, ModelError, ModelSpec, TrunkMode, SPEC_FORMAT};
use crate::output::{produce_atomic, write_json};

pub const MODEL_JSON: &str = "model.json";
pub const MODEL_WEIGHTS: &str = "model.safetensors";
pub const BACKBONE_MODULE: &str = "backbone.pt";

pub(super) fn save(model: &Embedder, dir: &Path) -> Result<(), ModelError> {
    fs::create_dir_all(dir)?;
    produce_atomic(&dir.join(MODEL_WEIGHTS), |tmp| {
        model.vs.save(tmp).map_err(ModelError::from)
    })?;
    if model.spec.fine_tunes_trunk() {
        produce_atomic(&dir.join(BACKBONE_MODULE), |tmp| model.net.save_module(tmp))?;
    }
    let mut spec = model.spec.clone();
    if let Architecture::Backbone { file, .. } = &mut spec.architecture {
        *file = relative_to(file, &fs::canonicalize(dir)?);
    }
    write_json(&dir.join(MODEL_JSON), &spec)?;
    Ok(())
}

/// `file` (absolute) as a path relative to the folder `from` (absolute, canonical).
fn relative_to(file: &Path, from: &Path) -> PathBuf {
    let file = fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let (a, b): (Vec<Component>, Vec<Component>) =
        (file.components().collect(), from.components().collect());
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return file;
    }
    let mut rel: PathBuf = b[common..].iter().map(|_| Component::ParentDir).collect();
    rel.extend(&a[common..]);
    rel
}

/// The TorchScript file a checkpoint's `model.json` names: at the recorded path (relative to
/// the checkpoint folder), else any file beside the checkpoint, its run directory or the
/// folder above with the recorded SHA-256 (a run directory copied with its backbone).
fn locate_backbone(dir: &Path, recorded: &Path, sha256: &str) -> Result<PathBuf, String> {
    let at = dir.join(recorded);
    let at_hash = fs::read(&at).map(|b| crate::store::sha256_hex(&b));
    if at_hash.as_deref().ok() == Some(sha256) {
        return Ok(at);
    }
    let mut searched = Vec::new();
    let mut folder = Some(dir);
    for _ in 0..3 {
        let Some(f) = folder else { break };
        searched.push(f.display().to_string());
        let mut entries: Vec<PathBuf> = fs::read_dir(f)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.extension().is_some_and(|e| {
                        ["pt", "pth", "ts", "jit"].contains(&&*e.to_string_lossy())
                    })
            })
            .collect();
        entries.sort();
        for candidate in entries {
            let bytes = fs::read(&candidate).unwrap_or_default();
            if crate::store::sha256_hex(&bytes) == sha256 {
                return Ok(candidate);
            }
        }
        folder = f.parent();
    }
    Err(match at_hash {
        Ok(actual) => format!(
            "the backbone {} has SHA-256 {actual}, but {MODEL_JSON} records {sha256}: the \
             file was replaced after this checkpoint was made, and no file with the recorded \
             hash is beside the checkpoint ({}). Restore the original file or train a new \
             head on this one",
            at.display(),
            searched.join(", ")
        ),
        Err(e) => format!(
            "{MODEL_JSON} names the backbone {} (SHA-256 {sha256}), which cannot be read \
             ({e}), and no file with that hash is beside the checkpoint ({}); put the \
             TorchScript file back at that path or beside the run directory",
            at.display(),
            searched.join(", ")
        ),
    })
}

/// The network a checkpoint describes, its backbone located, and the TorchScript module its
/// trunk loads from (a fine-tuned trunk's own copy in the checkpoint).
pub(super) fn read_spec(dir: &Path) -> Result<(ModelSpec, Option<PathBuf>), ModelError> {
    let bad = |message: String| ModelError::Checkpoint {
        dir: dir.to_path_buf(),
        message,
    };
    if !dir.is_dir() {
        return Err(bad(
            "not a directory (a checkpoint holds model.json and model.safetensors)".into(),
        ));
    }
    let json =
        fs::read_to_string(dir.join(MODEL_JSON)).map_err(|e| bad(format!("{MODEL_JSON}: {e}")))?;
    let mut spec: ModelSpec = serde_json::from_str(&json).map_err(|e| {
        bad(format!(
            "{MODEL_JSON} is not a valid model description: {e}"
        ))
    })?;
    if spec.format != SPEC_FORMAT {
        return Err(bad(format!(
            "{MODEL_JSON} has format {:?}; this tripmine reads {SPEC_FORMAT:?}",
            spec.format
        )));
    }
    let module = match &mut spec.architecture {
        Architecture::Backbone {
            file,
            sha256,
            trunk,
            ..
        } => {
            // The original is named for provenance; a fine-tuned trunk loads from the
            // checkpoint's own module, so a copied run directory needs nothing else.
            let original = locate_backbone(dir, file, sha256);
            let module = match trunk {
                TrunkMode::FineTuned => dir.join(BACKBONE_MODULE),
                TrunkMode::Frozen => original.clone().map_err(bad)?,
            };
            *file = original.unwrap_or_else(|_| dir.join(&*file));
            Some(module)
        }
        Architecture::Resnet { .. } | Architecture::Head { .. } => None,
    };
    Ok((spec, module))
}

pub(super) fn load(dir: &Path, device: Device) -> Result<Embedder, ModelError> {
    let bad = |message: String| ModelError::Checkpoint {
        dir: dir.to_path_buf(),
        message,
    };
    let (spec, module) = read_spec(dir)?;
    let model = match &module {
        Some(m) => Embedder::init_with_module(spec, device, m),
        None => Embedder::init(spec, device),
    }
    .map_err(|e| bad(e.to_string()))?;
    let weights = dir.join(MODEL_WEIGHTS);
    if !weights.is_file() {
        return Err(bad(format!("{MODEL_WEIGHTS} is missing")));
    }
    let stored: HashMap<String, Tensor> = Tensor::read_safetensors(&weights)
        .map_err(|e| {
            bad(format!(
                "{MODEL_WEIGHTS} is not a readable safetensors file: {e}"
            ))
        })?
        .into_iter()
        .collect();
    let mut problems = Vec::new();
    let variables = model.vs.variables();
    let mut names: Vec<_> = variables.keys().collect();
    names.sort();
    for name in names {
        let var = &variables[name];
        match stored.get(name) {
            None => problems.push(format!("{name} missing")),
            Some(t) if t.size() != var.size() => problems.push(format!(
                "{name} has shape {:?}, the network needs {:?}",
                t.size(),
                var.size()
            )),
            Some(t) => tch::no_grad(|| var.shallow_clone().copy_(t)),
        }
    }
    if let Some(extra) = stored.keys().find(|k| !variables.contains_key(*k)) {
        problems.push(format!("{extra} is not part of the network"));
    }
    if !problems.is_empty() {
        let more = if problems.len() > 5 {
            format!(" (and {} more)", problems.len() - 5)
        } else {
            String::new()
        };
        return Err(bad(format!(
            "weights do not match {MODEL_JSON}: {}{more}",
            problems[..problems.len().min(5)].join("; ")
        )));
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::Preprocess;

    fn tiny(dim: i64) -> ModelSpec {
        let mut s = ModelSpec::resnet(Preprocess::standard(8, 1), dim, 3);
        s.architecture = super::super::Architecture::Resnet { widths: vec![4, 8] };
        s
    }

    #[test]
    fn round_trip_keeps_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let m = Embedder::init(tiny(6), Device::Cpu).unwrap();
        m.save(dir.path()).unwrap();
        let back = Embedder::load(dir.path(), Device::Cpu).unwrap();
        let x = Tensor::randn([2, 1, 8, 8], (tch::Kind::Float, Device::Cpu));
        assert!(m
            .embed(&x)
            .unwrap()
            .allclose(&back.embed(&x).unwrap(), 1e-6, 1e-6, false));
    }

    #[test]
    fn mismatched_json_and_weights_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        Embedder::init(tiny(6), Device::Cpu)
            .unwrap()
            .save(dir.path())
            .unwrap();
        let mut spec = tiny(7);
        spec.seed = 3;
        write_json(&dir.path().join(MODEL_JSON), &spec).unwrap();
        let e = Embedder::load(dir.path(), Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("head.weight has shape [6, 8]"), "{e}");
    }

    #[test]
    fn corrupt_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        Embedder::init(tiny(6), Device::Cpu)
            .unwrap()
            .save(dir.path())
            .unwrap();
        fs::write(dir.path().join(MODEL_WEIGHTS), b"garbage").unwrap();
        let e = Embedder::load(dir.path(), Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a readable safetensors"), "{e}");
        fs::write(dir.path().join(MODEL_JSON), b"{").unwrap();
        let e = Embedder::load(dir.path(), Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a valid model description"), "{e}");
    }
}
