//! Embedding throughput (`make bench-embed`): the fixture corpus through the built-in network
//! at its native 32×32 and upscaled to 224×224, decode included.

use std::time::Instant;

use tripmine::corpus::{self, Preprocess};
use tripmine::embed::embed_samples;
use tripmine::model::{Embedder, ModelSpec};

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2);
    tch::set_num_threads(threads as i32);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("first pool");
    let corpus = corpus::open(std::path::Path::new("fixtures/corpus"))
        .expect("run from the repository root");
    println!(
        "built-in ResNet (widths 32-64-128-256), 128-d, CPU, {threads} threads, {} images",
        corpus.samples.len()
    );
    println!("| input | batch | images/s |");
    println!("|---|---|---|");
    for (size, batch) in [(32, 64), (224, 32)] {
        let model = Embedder::init(
            ModelSpec::resnet(Preprocess::standard(size, 3), 128, 0),
            tch::Device::Cpu,
        )
        .unwrap();
        let _ = embed_samples(&corpus.samples[..batch], &model, batch).unwrap();
        let start = Instant::now();
        let done = embed_samples(&corpus.samples, &model, batch).unwrap();
        let rate = done.samples.len() as f64 / start.elapsed().as_secs_f64();
        println!("| {size}×{size} | {batch} | {rate:.0} |");
    }
}
