//! The bare product that bounds exact search: `make bench-gemm` (also run by `make
//! bench-mine`). Times the N×N×D score tiles of exact search (queries · corpusᵀ, N = 100,000,
//! D = 128 by default) with nothing done to the scores, through each pure-Rust GEMM crate
//! (faer, which tripmine uses; gemm; matrixmultiply), each single-threaded per tile and run
//! on every worker as the search runs it, and through libtorch's `mm` (MKL) on its own
//! threads; prints seconds and GFLOP/s per kernel.
//!
//! Usage: cargo run --release --example bench_gemm -- [N] [D]

use std::time::Instant;

use rayon::prelude::*;
use tripmine::knn::{dot_tile, Kernel, CORPUS_BLOCK, QUERY_BLOCK};

type TileKernel = fn(&[f32], &[f32], usize, &mut [f32]);

/// `out = queries · corpusᵀ` (row-major) through the `gemm` crate.
fn gemm_tile(queries: &[f32], corpus: &[f32], dim: usize, out: &mut [f32]) {
    let (m, n) = (queries.len() / dim, corpus.len() / dim);
    assert!(dim > 0 && out.len() == m * n, "a tile of {m} × {n}");
    // SAFETY: the strides describe the three row-major buffers exactly (m×dim, n×dim, m×n).
    unsafe {
        gemm::gemm(
            m,
            n,
            dim,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            queries.as_ptr(),
            1,
            dim as isize,
            corpus.as_ptr(),
            dim as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The same through `matrixmultiply`.
fn matrixmultiply_tile(queries: &[f32], corpus: &[f32], dim: usize, out: &mut [f32]) {
    let (m, n) = (queries.len() / dim, corpus.len() / dim);
    assert!(dim > 0 && out.len() == m * n, "a tile of {m} × {n}");
    // SAFETY: as above.
    unsafe {
        matrixmultiply::sgemm(
            m,
            dim,
            n,
            1.0,
            queries.as_ptr(),
            dim as isize,
            1,
            corpus.as_ptr(),
            1,
            dim as isize,
            0.0,
            out.as_mut_ptr(),
            n as isize,
            1,
        )
    }
}

fn time_tiles(data: &[f32], dim: usize, blocks: (usize, usize), kernel: TileKernel) -> f64 {
    let (query_block, corpus_block) = blocks;
    let start = Instant::now();
    let checksum: f64 = data
        .par_chunks(query_block * dim)
        .map(|queries| {
            let mut tile = Vec::new();
            let mut sum = 0.0f64;
            for corpus in data.chunks(corpus_block * dim) {
                tile.resize(queries.len() / dim * (corpus.len() / dim), 0.0);
                kernel(queries, corpus, dim, &mut tile);
                sum += tile[0] as f64;
            }
            sum
        })
        .sum();
    std::hint::black_box(checksum);
    start.elapsed().as_secs_f64()
}

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
    println!("bare product {n}×{n}×{dim} ({flops:.2e} flop), {threads} threads\n");
    println!("| kernel | tiles | seconds | GFLOP/s |\n|---|---|---|---|");
    let search = (QUERY_BLOCK, CORPUS_BLOCK);
    let kernels: [(String, TileKernel, (usize, usize)); 4] = [
        (Kernel::current().name(), dot_tile, search),
        (Kernel::current().name(), dot_tile, (256, 1024)),
        ("gemm 0.19".into(), gemm_tile, search),
        ("matrixmultiply 0.3".into(), matrixmultiply_tile, search),
    ];
    for (name, kernel, blocks) in kernels {
        let s = time_tiles(&data, dim, blocks, kernel);
        println!(
            "| {name} | {} × {} | {s:.2} | {:.0} |",
            blocks.0,
            blocks.1,
            flops / s / 1e9
        );
    }

    tch::set_num_threads(threads as i32);
    let x = tch::Tensor::from_slice(&data).view([n as i64, dim as i64]);
    let start = Instant::now();
    let mut sum = 0.0;
    for q in (0..n).step_by(QUERY_BLOCK) {
        let queries = x.narrow(0, q as i64, QUERY_BLOCK.min(n - q) as i64);
        for c in (0..n).step_by(CORPUS_BLOCK) {
            let corpus = x.narrow(0, c as i64, CORPUS_BLOCK.min(n - c) as i64);
            sum += queries.mm(&corpus.tr()).double_value(&[0, 0]);
        }
    }
    std::hint::black_box(sum);
    let s = start.elapsed().as_secs_f64();
    println!(
        "| libtorch mm (MKL, its own threads) | {QUERY_BLOCK} × {CORPUS_BLOCK} | {s:.2} | {:.0} |",
        flops / s / 1e9
    );
}
