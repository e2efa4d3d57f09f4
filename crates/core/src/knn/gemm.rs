//! Dot-product tiles (`queries · corpusᵀ`) on a pure-Rust GEMM. faer chooses its kernel when
//! the program runs (AVX-512, AVX2+FMA or portable code), so one build serves every x86-64
//! CPU. MKL, inside libtorch, takes its AVX2 path on AMD processors; faer uses AVX-512 where
//! the CPU has it (about 2× MKL's sgemm on an AVX-512 EPYC) and is level with MKL, gemm and
//! matrixmultiply on AVX2 alone (`make bench-gemm`, README "Global mining").
//!
//! `TRIPMINE_GEMM=portable` replaces faer by plain loops compiled for the build's baseline
//! (SSE2): slower, but the way to see what another CPU's rounding does to a result.

use std::sync::OnceLock;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

/// Which kernel multiplies score tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// faer, with the widest instruction set the CPU has.
    Faer,
    /// Plain loops at the build's baseline instruction set.
    Portable,
}

impl Kernel {
    /// The kernel of this process: `TRIPMINE_GEMM=portable` or faer.
    pub fn current() -> Kernel {
        static KERNEL: OnceLock<Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| match std::env::var("TRIPMINE_GEMM").as_deref() {
            Ok("portable") => Kernel::Portable,
            _ => Kernel::Faer,
        })
    }

    /// What the mining sidecar and `describe` record.
    pub fn name(self) -> String {
        match self {
            Kernel::Faer => format!("faer ({})", instruction_set()),
            Kernel::Portable => "portable loops (TRIPMINE_GEMM=portable)".to_string(),
        }
    }
}

/// The widest x86 vector extension this CPU offers to faer.
fn instruction_set() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return "avx2";
        }
    }
    "baseline"
}

/// `out[i·n + j] = queries[i] · corpus[j]` for `m = queries.len() / dim` query rows and
/// `n = corpus.len() / dim` corpus rows, all row-major. Runs on the calling thread: callers
/// parallelise over tiles, so that each tile is scanned while it is still in cache.
pub fn dot_tile(queries: &[f32], corpus: &[f32], dim: usize, out: &mut [f32]) {
    if dim == 0 {
        out.fill(0.0);
        return;
    }
    let (m, n) = (queries.len() / dim, corpus.len() / dim);
    assert_eq!(out.len(), m * n, "score tile of {m} × {n}");
    if m == 0 || n == 0 {
        return;
    }
    match Kernel::current() {
        Kernel::Faer => {
            let lhs = MatRef::from_row_major_slice(queries, m, dim);
            let rhs = MatRef::from_row_major_slice(corpus, n, dim).transpose();
            let dst = MatMut::from_row_major_slice_mut(out, m, n);
            matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, Par::Seq);
        }
        Kernel::Portable => {
            for (row, q) in out.chunks_exact_mut(n).zip(queries.chunks_exact(dim)) {
                for (score, c) in row.iter_mut().zip(corpus.chunks_exact(dim)) {
                    *score = q.iter().zip(c).map(|(x, y)| x * y).sum();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_equals_float64_dot_products() {
        let dim = 37;
        let value = |i: usize| ((i * 7919 % 1009) as f32 / 1009.0) - 0.5;
        let queries: Vec<f32> = (0..13 * dim).map(value).collect();
        let corpus: Vec<f32> = (0..29 * dim).map(|i| value(i + 5)).collect();
        let mut out = vec![f32::NAN; 13 * 29];
        dot_tile(&queries, &corpus, dim, &mut out);
        for (i, q) in queries.chunks(dim).enumerate() {
            for (j, c) in corpus.chunks(dim).enumerate() {
                let want: f64 = q.iter().zip(c).map(|(&x, &y)| x as f64 * y as f64).sum();
                assert!((out[i * 29 + j] as f64 - want).abs() < 1e-5, "({i}, {j})");
            }
        }
    }
}
