//! `tripmine mine --embeddings SHARDS/` out of core: the blocked miner (`blocks.rs`) over a
//! shard directory. A first pass reads and checks every shard once (SHA-256, rows, each class
//! in one shard), keeping each row's label code (and path) for the CSV and, on the classes
//! path, each class's mean and radius for the class level. Then each anchor block meets every
//! corpus shard in turn (read again, its files checked against the first reading): with the
//! exact index an anchor block is a shard; on the classes path it is a run of whole classes of
//! a shard, sized so that its class picks stay bounded, and it meets only the shards that hold
//! a class it picked. What is held at once: two shards, one anchor block's questions, picks and
//! answers, the class level, the triplets found, and a label code per row; nothing N×N.

use std::path::Path;
use std::time::Instant;

use super::blocks::{self, Answers, Block, BlockError, LevelBuilder};
use super::{write_triplet_set, MineConfig, MineError, MineStats, MineSummary};
use crate::knn::{ClassLevel, ClassPicks, KnnChoice, Points};
use crate::shards::{self, Manifest, Shard, Stamp, Verify};
use crate::store::{RowCheck, StoreError};
use crate::triplets::{self, TripletRow};

/// Class picks an anchor block may hold (4 bytes each, twice while they are turned around):
/// with 500 candidate classes, anchor blocks of 268,435 rows.
const PICKS_PER_BLOCK: usize = 1 << 27;

fn invalid(dir: &Path, message: String) -> MineError {
    MineError::Store(StoreError::Invalid {
        dir: dir.to_path_buf(),
        message,
    })
}

/// Rows `range` of a class-grouped shard as a block.
fn block_of(s: &Shard, dim: usize, range: std::ops::Range<usize>) -> Block<'_> {
    Block {
        points: Points {
            data: &s.data[range.start * dim..range.end * dim],
            dim,
            labels: &s.codes[range.clone()],
        },
        ids: &s.rows[range],
    }
}

/// What the first pass keeps of every shard.
struct Survey {
    /// Label code of each corpus row.
    codes: Vec<u32>,
    /// Path of each corpus row, where the shards record paths.
    paths: Option<Vec<String>>,
    stamps: Vec<Stamp>,
    /// Each class's mean and radius (classes path only).
    level: Option<ClassLevel>,
}

/// Reads every shard once: SHA-256 and rows checked, each class in one shard.
fn survey(
    dir: &Path,
    manifest: &Manifest,
    check: RowCheck,
    classes_path: Option<usize>,
) -> Result<Survey, MineError> {
    let (n, dim, classes) = (manifest.rows, manifest.dim, manifest.labels.len());
    let mut codes = vec![0u32; n];
    let mut paths = manifest.paths.then(|| vec![String::new(); n]);
    let mut stamps = Vec::with_capacity(manifest.shards.len());
    // The level's builder also finds a class split over two shards; the exact path keeps a
    // builder of no dimensions for that.
    let mut level = LevelBuilder::new(classes, if classes_path.is_some() { dim } else { 0 });
    let bar = crate::progress::bar(manifest.shards.len() as u64, "reading shards");
    for (s, entry) in manifest.shards.iter().enumerate() {
        stamps.push(shards::stamp(dir, entry));
        let shard = shards::load_shard(dir, manifest, entry, check, Verify::Sha256, None)
            .map_err(|e| invalid(dir, e))?;
        for (i, (&row, &code)) in shard.rows.iter().zip(&shard.codes).enumerate() {
            codes[row] = code;
            if let Some(paths) = &mut paths {
                paths[row] = shard.path(i);
            }
        }
        let summaries = match classes_path {
            Some(_) => blocks::class_summaries(block_of(&shard, dim, 0..shard.rows.len())),
            // Only which classes the shard holds: no means or radii to compute.
            None => {
                let mut classes = shard.codes.clone();
                classes.sort_unstable();
                classes.dedup();
                let radius = vec![0.0; classes.len()];
                blocks::ClassSummaries {
                    classes,
                    means: Vec::new(),
                    radius,
                }
            }
        };
        level.add(s, &summaries).map_err(|e| match e {
            BlockError::SplitClass {
                class,
                blocks: [a, b],
            } => invalid(
                dir,
                format!(
                    "class {:?} has rows in {} and {}; shards are placed by label (each class \
                     in one shard, as `tripmine embed --shard-rows` and tripmine.write_shards \
                     write them)",
                    manifest.labels[class], manifest.shards[a].name, manifest.shards[b].name
                ),
            ),
            other => invalid(dir, other.to_string()),
        })?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Survey {
        codes,
        paths,
        stamps,
        level: classes_path.map(|candidates| level.build(candidates)),
    })
}

/// Mines every shard of `dir` against every shard, exactly as `mine` with the exact index,
/// or, when `--knn` (or `auto`) chooses it, with the classes index.
pub fn run(dir: &Path, normalise: bool, cfg: &MineConfig) -> Result<MineSummary, MineError> {
    let start = Instant::now();
    let (manifest, manifest_sha256) = shards::read_manifest(dir).map_err(|e| invalid(dir, e))?;
    let check = if normalise {
        RowCheck::Normalise
    } else {
        RowCheck::UnitLength
    };
    let (n, dim, count) = (manifest.rows, manifest.dim, manifest.shards.len());
    let (choice, mut reason) = cfg.knn.resolve_for(n, manifest.labels.len());
    if choice == KnnChoice::Hnsw {
        reason += "; HNSW is built over a corpus in memory, so a shard directory is mined \
                   block by block with the exact index";
    }
    let classes_path = (choice == KnnChoice::Classes).then_some(cfg.knn.candidate_classes);
    let survey = survey(dir, &manifest, check, classes_path)?;
    let level = survey.level.as_ref();
    let load = |i: usize| -> Result<Shard, MineError> {
        let entry = &manifest.shards[i];
        let seen = Some(&survey.stamps[i]);
        let mut shard = shards::load_shard(dir, &manifest, entry, check, Verify::Unchanged, seen)
            .map_err(|e| invalid(dir, e))?;
        shard.group_by_class(dim);
        Ok(shard)
    };
    let block_rows = level.map_or(usize::MAX, |l| (PICKS_PER_BLOCK / l.candidates()).max(1));
    let rules = &cfg.rules;
    let mut triplets = Vec::new();
    let mut stats = MineStats::default();
    let failed = |e: blocks::BlockError| invalid(dir, e.to_string());
    let bar = crate::progress::bar(n as u64, "mining");
    for a in 0..count {
        let anchors = load(a)?;
        for range in class_runs(&anchors.codes, block_rows) {
            let block = block_of(&anchors, dim, range.clone());
            let questions = blocks::questions(block, rules, n).map_err(failed)?;
            let picks = level.map(|l| blocks::pick(block, &questions, l, rules));
            let mut answers: Option<Answers> = None;
            for c in 0..count {
                let [first, end] = manifest.shards[c].labels;
                // The anchor's own shard is always asked, so that even a block that picked
                // no class gets answers (empty, complete where nothing was reachable).
                let picked = |p: &blocks::Picks| {
                    let some = |c: &ClassPicks| (first..end).any(|k| !c.rows_of(k).is_empty());
                    some(&p.guard) || some(&p.bands)
                };
                if c != a && picks.as_ref().is_some_and(|p| !picked(p)) {
                    continue;
                }
                let loaded;
                let corpus = if c == a {
                    &anchors
                } else {
                    loaded = load(c)?;
                    &loaded
                };
                let corpus = block_of(corpus, dim, 0..corpus.rows.len());
                let asked = match &answers {
                    Some(so_far) => blocks::narrowed(&questions, so_far),
                    None => questions.clone(),
                };
                let part = match (level, &picks) {
                    (Some(l), Some(p)) => {
                        blocks::answer_picked(block, &asked, p, l.classes(), corpus, rules)
                            .map_err(failed)?
                    }
                    _ => blocks::answer(block, &asked, corpus, rules),
                };
                answers = Some(match answers {
                    None => part,
                    Some(so_far) => blocks::merge(&questions, [&so_far, &part]).map_err(failed)?,
                });
            }
            let answers = answers.expect("the anchor's own shard is always asked");
            let candidates = level.map(ClassLevel::candidates);
            let (found, s) = blocks::finalise(block, &questions, &answers, rules, n, candidates)
                .map_err(failed)?;
            triplets.extend(found);
            stats.add(&s);
            bar.inc(range.len() as u64);
        }
    }
    bar.finish_and_clear();
    triplets.sort_by_key(|t| t.anchor);
    let mut backend = match level {
        Some(l) => l.describe(),
        None => serde_json::json!({ "backend": "exact" }),
    };
    backend["out_of_core"] = true.into();
    backend["shards"] = count.into();
    if block_rows != usize::MAX {
        backend["anchor_block_rows"] = block_rows.into();
    }
    backend["chosen"] = reason.into();
    let rows = triplets.iter().map(|t| {
        TripletRow::new(t, |i| {
            let path = match &survey.paths {
                Some(paths) => paths[i].clone(),
                None => i.to_string(),
            };
            (path, manifest.labels[survey.codes[i] as usize].as_str())
        })
    });
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
                "dim": dim,
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

/// Runs of whole classes of class-grouped `codes`, each up to `most` rows (or one class,
/// where a class alone is larger).
fn class_runs(codes: &[u32], most: usize) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut end) = (0, 0);
    while end < codes.len() {
        let class_end = end + codes[end..].partition_point(|&c| c == codes[end]);
        if class_end - start > most && end > start {
            runs.push(start..end);
            start = end;
        }
        end = class_end;
    }
    if end > start {
        runs.push(start..end);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_blocks_are_runs_of_whole_classes() {
        let codes = [0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4];
        assert_eq!(class_runs(&codes, 4), vec![0..4, 4..6, 6..10, 10..11]);
        assert_eq!(class_runs(&codes, 2), vec![0..3, 3..4, 4..6, 6..10, 10..11]);
        assert_eq!(class_runs(&codes, usize::MAX), vec![0..11]);
        assert!(class_runs(&[], 3).is_empty());
    }
}
