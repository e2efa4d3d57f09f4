//! A checkpoint is a directory: `model.safetensors` (weights, readable by Python's
//! `safetensors`) and `model.json` (the [`ModelSpec`] needed to rebuild the network).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use tch::{Device, Tensor};

use super::{Embedder, ModelError, ModelSpec, SPEC_FORMAT};
use crate::output::{produce_atomic, write_json};

pub const MODEL_JSON: &str = "model.json";
pub const MODEL_WEIGHTS: &str = "model.safetensors";

pub(super) fn save(model: &Embedder, dir: &Path) -> Result<(), ModelError> {
    fs::create_dir_all(dir)?;
    produce_atomic(&dir.join(MODEL_WEIGHTS), |tmp| {
        model.vs.save(tmp).map_err(ModelError::from)
    })?;
    write_json(&dir.join(MODEL_JSON), &model.spec)?;
    Ok(())
}

pub(super) fn load(dir: &Path, device: Device) -> Result<Embedder, ModelError> {
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
    let spec: ModelSpec = serde_json::from_str(&json).map_err(|e| {
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
    if let super::Architecture::Backbone { file, sha256, .. } = &spec.architecture {
        let bytes = fs::read(file).map_err(|e| {
            bad(format!(
                "{MODEL_JSON} names the backbone {}, which cannot be read ({e}); put the \
                 TorchScript file back at that path",
                file.display()
            ))
        })?;
        let actual = crate::store::sha256_hex(&bytes);
        if actual != *sha256 {
            return Err(bad(format!(
                "the backbone {} has SHA-256 {actual}, but {MODEL_JSON} records {sha256}: the \
                 file was replaced after this checkpoint was made. Restore the original file \
                 or train a new head on this one",
                file.display()
            )));
        }
    }
    let model = Embedder::init(spec, device).map_err(|e| bad(e.to_string()))?;
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
