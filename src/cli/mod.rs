//! Command-line definitions (clap). Each subcommand's arguments turn into the library's
//! validated config here; nothing below `cli` sees a clap type.

mod audit;
mod embed;
mod eval;
mod mine;
mod train;
mod view;

use clap::{Args, Parser, Subcommand};

pub use audit::AuditArgs;
pub use embed::EmbedArgs;
pub use eval::EvalArgs;
pub use mine::MineArgs;
pub use train::TrainArgs;
pub use view::ViewArgs;

#[derive(Debug, Parser)]
#[command(
    name = "tripmine",
    version,
    about = "Global triplet mining, export and corpus checks for triplet-loss embedding models"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Embed an image corpus with a CNN and write embeddings.npy + samples.csv
    Embed(EmbedArgs),
    /// Mine hard / semi-hard / easy triplets over the whole corpus and export them as CSV
    Mine(MineArgs),
    /// Train the embedding network with triplet loss (global re-mining or in-batch miners)
    Train(TrainArgs),
    /// Retrieval metrics of a checkpoint on a corpus: P@1, R-Precision, MAP@R, Recall@K
    Eval(EvalArgs),
    /// Audit a corpus: duplicates, label conflicts, likely mislabels, outliers, split leakage
    Audit(AuditArgs),
    /// Contact sheets of a triplet CSV: PNG pages and an index.html to page through them
    View(ViewArgs),
}

/// Options every libtorch-using subcommand shares.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// auto (GPU when libtorch sees one), cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Threads for libtorch and for decoding (default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed for every random choice (initialisation, sampling)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl RuntimeArgs {
    /// Applies the thread count and resolves the device.
    pub fn apply(&self) -> Result<tch::Device, UsageError> {
        let threads = worker_threads(self.threads)?;
        tch::set_num_threads(threads as i32);
        crate::model::parse_device(&self.device).map_err(UsageError)
    }
}

/// Sizes the thread pool for decoding and rendering (default: all cores); returns the count.
pub fn worker_threads(threads: Option<usize>) -> Result<usize, UsageError> {
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        return Err(UsageError("--threads must be at least 1".into()));
    }
    // Only the first call configures the global pool; later calls in one process are no-ops.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    Ok(threads)
}

/// A combination of options that cannot work; exits with status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

#[cfg(test)]
mod tests {
    #[test]
    fn argument_definitions_are_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
