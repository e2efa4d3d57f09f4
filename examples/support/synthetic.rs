//! Synthetic clustered embeddings for the benchmarks: `n` unit vectors in `dim` dimensions,
//! sample i in class i mod `classes`, each a Gaussian class centre plus noise of 0.9 per
//! dimension, normalised.

use tripmine::rng::Rng;

pub fn clustered(n: usize, classes: usize, dim: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let centres: Vec<Vec<f32>> = (0..classes)
        .map(|_| (0..dim).map(|_| rng.normal() as f32).collect())
        .collect();
    let mut data = Vec::with_capacity(n * dim);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        let v: Vec<f32> = centres[c]
            .iter()
            .map(|x| x + 0.9 * rng.normal() as f32)
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        data.extend(v.iter().map(|x| x / norm));
        labels.push(c as u32);
    }
    (data, labels)
}
