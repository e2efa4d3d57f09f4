//! Benchmark of the audit's computation (`make bench-audit`): 100k synthetic clustered 128-d
//! embeddings with planted duplicates and relabelled samples; the k-NN graph (k = 10) with the
//! exact and the HNSW backend side by side, then the signals built on it (duplicate groups,
//! mislabel posterior, outliers: `audit::findings::compute` without the pixel view). Pixel hashing and file I/O, which scale linearly, are left out.
//!
//! Usage: bench_audit [N]

use std::time::Instant;

use tripmine::audit::findings::{self, AuditInput};
use tripmine::audit::Thresholds;
use tripmine::knn::{ExactIndex, HnswIndex, HnswParams, NeighbourIndex, Points, Restriction};

#[path = "support/memory.rs"]
mod memory;
#[path = "support/synthetic.rs"]
mod synthetic;
use memory::{peak_mib, reset_peak};

const DIM: usize = 128;
const CLASSES: usize = 1000;
const PLANTED: usize = 500;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    tch::set_num_threads(2);
    let (mut data, mut labels) = synthetic::clustered(n, CLASSES, DIM, 7);
    // Planted: the last PLANTED rows become copies of earlier rows, label included
    // (duplicates); every 199th sample gets the next class's label (mislabels; 199 is prime to
    // the class count, so they are spread over the classes).
    for p in 0..PLANTED {
        let (src, dst) = ((p * 97) % (n - PLANTED), n - 1 - p);
        let row: Vec<f32> = data[src * DIM..(src + 1) * DIM].to_vec();
        data[dst * DIM..(dst + 1) * DIM].copy_from_slice(&row);
        labels[dst] = labels[src];
    }
    let mislabelled: Vec<usize> = (0..n - PLANTED).step_by(199).collect();
    for &i in &mislabelled {
        labels[i] = (labels[i] + 1) % CLASSES as u32;
    }
    let points = Points {
        data: &data,
        dim: DIM,
        labels: &labels,
    };
    let hashes: Vec<Option<String>> = vec![None; n];
    let queries: Vec<usize> = (0..n).collect();
    println!("audit signals on {n} synthetic 128-d embeddings, {CLASSES} classes, {PLANTED} planted duplicates, {} relabelled, 2 threads", mislabelled.len());
    println!("| backend | index build s | k-NN graph s | signals s | total s | peak RSS MiB | duplicates found | mislabels flagged (recall) | outliers |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for backend in ["exact", "hnsw"] {
        reset_peak();
        let start = Instant::now();
        let (graph, build) = if backend == "exact" {
            let index = ExactIndex::new(points);
            let build = start.elapsed().as_secs_f64();
            (index.search(&queries, 10, Restriction::Any), build)
        } else {
            let index = HnswIndex::build(points, HnswParams::default());
            let build = start.elapsed().as_secs_f64();
            (index.search(&queries, 10, Restriction::Any), build)
        };
        let graph_s = start.elapsed().as_secs_f64() - build;
        let signals_start = Instant::now();
        let splits = vec![""; n];
        let thresholds = Thresholds::default();
        let findings = findings::compute(&AuditInput {
            points,
            splits: &splits,
            graph: &graph,
            hashes: &hashes,
            pixel_graph: None,
            thresholds: &thresholds,
        });
        let groups: Vec<Vec<usize>> = findings
            .duplicates
            .iter()
            .map(|g| g.members.iter().map(|&(i, _)| i).collect())
            .collect();
        let flagged: std::collections::HashSet<usize> =
            findings.label_issues.iter().map(|f| f.index).collect();
        let outliers = findings.outliers.len();
        let signals_s = signals_start.elapsed().as_secs_f64();
        let planted_found = (0..PLANTED)
            .filter(|p| {
                groups
                    .iter()
                    .any(|g| g.contains(&((p * 97) % (n - PLANTED))) && g.contains(&(n - 1 - p)))
            })
            .count();
        let recall = mislabelled.iter().filter(|i| flagged.contains(i)).count() as f64
            / mislabelled.len() as f64;
        println!(
            "| {backend} | {build:.2} | {graph_s:.2} | {signals_s:.2} | {:.2} | {:.0} | {planted_found}/{PLANTED} | {} ({recall:.3}) | {outliers} |",
            build + graph_s + signals_s,
            peak_mib(),
            flagged.len()
        );
    }
}
