//! The bare product that bounds exact search: `make bench-gemm` (examples/bench_gemm.rs).
//! Times N×N×D score tiles (queries · corpusᵀ, N = 100,000, D = 128 by default) through
//! tripmine's tile kernel (faer; `TRIPMINE_GEMM=portable` for plain loops) and through
//! libtorch's matrix multiply (MKL), in the same blocks and on the same threads, with nothing
//! done to the scores, and prints GFLOP/s per kernel.
//!
//! Usage: cargo run --release --example bench_gemm -- [N] [D]

use std::time::Instant;

use rayon::prelude::*;
use tripmine::knn::{dot_tile, Kernel, CORPUS_BLOCK, QUERY_BLOCK};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("N and D are numbers"))
        .collect();
    let n = args.first().copied().unwrap_or(100_000);
    let dim = args.get(1).copied().unwrap_or(128);
    let threads = rayon::current_num_threads();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<f32> = (0..n * dim)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let flops = 2.0 * (n as f64) * (n as f64) * dim as f64;
    println!(
        "bare product {n}×{n}×{dim} ({:.2e} flop), {threads} threads, blocks {}×{}\n",
        flops, QUERY_BLOCK, CORPUS_BLOCK
    );
    println!("| kernel | seconds | GFLOP/s |\n|---|---|---|");

    // The search's tiles, and the shape the bare product alone runs fastest at here.
    for (query_block, corpus_block) in [(QUERY_BLOCK, CORPUS_BLOCK), (256, 1024)] {
        let start = Instant::now();
        let checksum: f64 = data
            .par_chunks(query_block * dim)
            .map(|queries| {
                let mut tile = Vec::new();
                let mut sum = 0.0f64;
                for corpus in data.chunks(corpus_block * dim) {
                    tile.resize(queries.len() / dim * (corpus.len() / dim), 0.0);
                    dot_tile(queries, corpus, dim, &mut tile);
                    sum += tile[0] as f64;
                }
                sum
            })
            .sum();
        let s = start.elapsed().as_secs_f64();
        println!(
            "| {} {query_block}×{corpus_block} | {s:.2} | {:.0} |",
            Kernel::current().name(),
            flops / s / 1e9
        );
        let _ = checksum;
    }

    tch::set_num_threads(threads as i32);
    let x = tch::Tensor::from_slice(&data).view([n as i64, dim as i64]);
    let mut tile = tch::Tensor::empty(
        [QUERY_BLOCK as i64, CORPUS_BLOCK as i64],
        (tch::Kind::Float, tch::Device::Cpu),
    );
    let start = Instant::now();
    let mut sum = 0.0;
    for q in (0..n).step_by(QUERY_BLOCK) {
        let queries = x.narrow(0, q as i64, QUERY_BLOCK.min(n - q) as i64);
        for c in (0..n).step_by(CORPUS_BLOCK) {
            let corpus = x.narrow(0, c as i64, CORPUS_BLOCK.min(n - c) as i64);
            if queries.size()[0] != tile.size()[0] || corpus.size()[0] != tile.size()[1] {
                tile = tch::Tensor::empty(
                    [queries.size()[0], corpus.size()[0]],
                    (tch::Kind::Float, tch::Device::Cpu),
                );
            }
            let _ = queries.mm_out(&tile, &corpus.tr());
            sum += tile.double_value(&[0, 0]);
        }
    }
    let s = start.elapsed().as_secs_f64();
    println!(
        "| libtorch mm (MKL) {QUERY_BLOCK}×{CORPUS_BLOCK} | {s:.2} | {:.0} |",
        flops / s / 1e9
    );
    let _ = sum;
}
