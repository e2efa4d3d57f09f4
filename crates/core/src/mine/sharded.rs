//! `tripmine mine --embeddings SHARDS/` out of core: the blocked miner (`blocks.rs`) with
//! each shard an anchor block, and every corpus shard streamed past it one at a time. What is
//! held at once: two shards, the anchor block's questions and answers (fixed-size per anchor),
//! the triplets found, and each row's path and label for the CSV; nothing N×N.

use std::path::Path;
use std::time::Instant;

use super::blocks::{self, Answers, Block};
use super::{write_triplet_set, MineConfig, MineError, MineStats, MineSummary};
use crate::knn::Points;
use crate::shards::{self, Shard};
use crate::store::{RowCheck, StoreError};
use crate::triplets::{self, TripletRow};

fn invalid(dir: &Path, message: String) -> MineError {
    MineError::Store(StoreError::Invalid {
        dir: dir.to_path_buf(),
        message,
    })
}

fn block_of(s: &Shard, dim: usize) -> Block<'_> {
    Block {
        points: Points {
            data: &s.data,
            dim,
            labels: &s.codes,
        },
        ids: &s.rows,
    }
}

/// Mines every shard of `dir` against every shard, exactly as `mine` with the exact index.
pub fn run(dir: &Path, normalise: bool, cfg: &MineConfig) -> Result<MineSummary, MineError> {
    let start = Instant::now();
    let (manifest, manifest_sha256) = shards::read_manifest(dir).map_err(|e| invalid(dir, e))?;
    let check = if normalise {
        RowCheck::Normalise
    } else {
        RowCheck::UnitLength
    };
    let load = |i: usize| -> Result<Shard, MineError> {
        shards::load_shard(dir, &manifest, &manifest.shards[i], check).map_err(|e| invalid(dir, e))
    };
    let n = manifest.rows;
    let count = manifest.shards.len();
    let rules = &cfg.rules;
    let mut paths = vec![String::new(); n];
    let mut labels = vec![String::new(); n];
    let mut triplets = Vec::new();
    let mut stats = MineStats::default();
    let bar = crate::progress::bar((count * count) as u64, "mining");
    for a in 0..count {
        let anchors = load(a)?;
        let dim = manifest.dim;
        let questions = blocks::questions(block_of(&anchors, dim), rules, n)
            .map_err(|e| invalid(dir, e.to_string()))?;
        let mut answers: Option<Answers> = None;
        for c in 0..count {
            let loaded;
            let corpus = if c == a {
                &anchors
            } else {
                loaded = load(c)?;
                &loaded
            };
            if a == 0 {
                for (i, &row) in corpus.rows.iter().enumerate() {
                    paths[row] = corpus.path(i);
                    labels[row] = manifest.labels[corpus.codes[i] as usize].clone();
                }
            }
            let part = blocks::answer(
                block_of(&anchors, dim),
                &questions,
                block_of(corpus, dim),
                rules,
            );
            answers = Some(match answers {
                None => part,
                Some(so_far) => blocks::merge(&questions, [&so_far, &part])
                    .map_err(|e| invalid(dir, e.to_string()))?,
            });
            bar.inc(1);
        }
        let answers = answers.expect("a shard directory has a shard");
        let (found, s) = blocks::finalise(block_of(&anchors, dim), &questions, &answers, rules, n)
            .map_err(|e| invalid(dir, e.to_string()))?;
        triplets.extend(found);
        stats.add(&s);
    }
    bar.finish_and_clear();
    triplets.sort_by_key(|t| t.anchor);
    let backend = serde_json::json!({
        "backend": "exact",
        "out_of_core": true,
        "shards": count,
        "chosen": "a shard directory is mined block by block with the exact index (--knn classes or hnsw read it whole)",
    });
    let rows = triplets
        .iter()
        .map(|t| TripletRow::new(t, |i| (paths[i].as_str(), labels[i].as_str())));
    match &cfg.out {
        None => match triplets::write(std::io::stdout().lock(), rows) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.map_err(|source| MineError::Write {
                path: "-".into(),
                source,
            })?,
        },
        Some(path) => {
            let mut sidecar = super::rules_sidecar(rules, &backend, &stats);
            sidecar["embeddings"] = serde_json::json!({
                "shards": dir,
                "manifest_sha256": manifest_sha256,
                "count": n,
                "dim": manifest.dim,
            });
            sidecar["wall_seconds"] = start.elapsed().as_secs_f64().into();
            write_triplet_set(path, rows, sidecar)?;
        }
    }
    Ok(MineSummary {
        stats,
        backend,
        excluded: 0,
        seconds: start.elapsed().as_secs_f64(),
        warnings: Vec::new(),
    })
}
