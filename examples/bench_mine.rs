//! Benchmark of global mining (`make bench-mine`): synthetic clustered 128-d unit embeddings
//! with 1,000 classes; exact vs HNSW side by side: index build, mining time, triplets/s,
//! peak memory, and HNSW's recall of the exact backend's semi-hard negatives.
//!
//! The first row of each size is the bare GEMM: the same query × corpus tiles multiplied and
//! nothing else, the floor any exact search on this machine stands on.
//!
//! Usage: bench_mine [SIZES] [ANCHORS_PER_CLASS] [BACKENDS]
//! e.g. `bench_mine 10000,100000 all exact,hnsw`

use std::collections::HashSet;
use std::time::Instant;

use tripmine::knn::{ExactIndex, HnswIndex, HnswParams, NeighbourIndex, Points};
use tripmine::mine::{mine, MiningRules, Triplet};

#[path = "support/memory.rs"]
mod memory;
#[path = "support/synthetic.rs"]
mod synthetic;
use memory::{peak_mib, reset_peak};

const DIM: usize = 128;
const CLASSES: usize = 1000;

struct Row {
    backend: &'static str,
    build: f64,
    mining: f64,
    triplets: Vec<Triplet>,
    peak: f64,
}

fn run(backend: &'static str, points: Points, rules: &MiningRules) -> Row {
    reset_peak();
    let start = Instant::now();
    let (index, build): (Box<dyn NeighbourIndex>, f64) = match backend {
        "exact" => (
            Box::new(ExactIndex::new(points)),
            start.elapsed().as_secs_f64(),
        ),
        _ => {
            let index = HnswIndex::build(points, HnswParams::default());
            let t = index.build_seconds();
            (Box::new(index), t)
        }
    };
    let start = Instant::now();
    let (triplets, _) = mine(points, index.as_ref(), rules);
    Row {
        backend,
        build,
        mining: start.elapsed().as_secs_f64(),
        triplets,
        peak: peak_mib(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> = args
        .get(1)
        .map_or("10000,100000", String::as_str)
        .split(',')
        .map(|s| s.parse().expect("sizes are numbers"))
        .collect();
    let per_class = args.get(2).and_then(|a| a.parse().ok());
    let backends: Vec<String> = args
        .get(3)
        .map_or("exact,hnsw", String::as_str)
        .split(',')
        .map(str::to_string)
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    tch::set_num_threads(threads as i32);
    let rules = MiningRules {
        negatives_per_anchor: 5,
        anchors_per_class: per_class,
        ..MiningRules::default()
    };
    println!(
        "semi-hard mining, K = 5 negatives per anchor, hardest positive, {DIM}-d, {CLASSES} classes, {threads} threads, anchors per class: {}",
        per_class.map_or("all".to_string(), |n| n.to_string())
    );
    println!("| N | backend | index build s | mining s | triplets | triplets/s | peak RSS MiB | recall vs exact |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let (data, labels) = synthetic::clustered(n, CLASSES, DIM, 42);
        let points = Points {
            data: &data,
            dim: DIM,
            labels: &labels,
        };
        println!(
            "| {n} | bare GEMM | | {:.2} | | | | |",
            bare_gemm_seconds(&data, n)
        );
        let rows: Vec<Row> = backends
            .iter()
            .map(|b| run(if b == "exact" { "exact" } else { "hnsw" }, points, &rules))
            .collect();
        let exact = rows.iter().find(|r| r.backend == "exact");
        let truth: Option<HashSet<(usize, usize)>> =
            exact.map(|e| e.triplets.iter().map(|t| (t.anchor, t.negative)).collect());
        for r in &rows {
            let recall = match (&truth, r.backend) {
                (_, "exact") => "1 (reference)".to_string(),
                (Some(truth), _) => {
                    let found = r
                        .triplets
                        .iter()
                        .filter(|t| truth.contains(&(t.anchor, t.negative)))
                        .count();
                    format!("{:.4}", found as f64 / truth.len().max(1) as f64)
                }
                (None, _) => "-".to_string(),
            };
            println!(
                "| {n} | {} | {:.2} | {:.2} | {} | {:.0} | {:.0} | {recall} |",
                r.backend,
                r.build,
                r.mining,
                r.triplets.len(),
                r.triplets.len() as f64 / r.mining,
                r.peak
            );
        }
        if let (Some(exact), Some(hnsw)) = (exact, rows.iter().find(|r| r.backend == "hnsw")) {
            println!(
                "| {n} | ratio | | | | | | exact/HNSW total time {:.2}× |",
                (exact.build + exact.mining) / (hnsw.build + hnsw.mining)
            );
        }
    }
}

/// Seconds to multiply every point by the whole corpus in the exact backend's tiles (1,024
/// queries × 32,768 corpus rows), into one reused output.
fn bare_gemm_seconds(data: &[f32], n: usize) -> f64 {
    let all = tch::Tensor::from_slice(data).view([n as i64, DIM as i64]);
    let start = Instant::now();
    let mut tiles = std::collections::HashMap::new();
    tch::no_grad(|| {
        for q in (0..n).step_by(1024) {
            let rows = 1024.min(n - q) as i64;
            let queries = all.narrow(0, q as i64, rows);
            for c in (0..n).step_by(32768) {
                let len = 32768.min(n - c) as i64;
                let corpus = all.narrow(0, c as i64, len);
                let out = tiles.entry((rows, len)).or_insert_with(|| {
                    tch::Tensor::empty([rows, len], (tch::Kind::Float, tch::Device::Cpu))
                });
                let _ = queries.mm_out(out, &corpus.tr());
            }
        }
    });
    start.elapsed().as_secs_f64()
}
