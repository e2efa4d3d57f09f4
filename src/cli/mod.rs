//! The full command line: `embed` and `train` (this crate's, on libtorch) beside the
//! network-free subcommands of `tripmine_core::cli`, whose definitions and shared options
//! are re-exported here.

mod embed;
pub mod reference;
mod train;

use clap::{Parser, Subcommand};

pub use embed::EmbedArgs;
pub use train::TrainArgs;
pub use tripmine_core::cli::*;

/// Every subcommand, as the libtorch build (`tripmine-torch`) reads it.
#[derive(Debug, Parser)]
#[command(
    name = "tripmine",
    version,
    about = "Global triplet mining, export and corpus checks for triplet-loss embedding models"
)]
pub struct FullCli {
    #[command(subcommand)]
    pub command: FullCommand,
}

#[derive(Debug, Subcommand)]
pub enum FullCommand {
    /// Embed an image corpus with a CNN and write embeddings.npy + samples.csv
    Embed(EmbedArgs),
    /// Train the embedding network with triplet loss (global re-mining or in-batch miners)
    Train(Box<TrainArgs>),
    #[command(flatten)]
    Tool(Tool),
}

/// Applies the thread count to the worker pool and to libtorch, and resolves `--device`.
pub fn torch_runtime(runtime: &RuntimeArgs) -> Result<tch::Device, UsageError> {
    let threads = runtime.apply()?;
    tch::set_num_threads(threads as i32);
    crate::model::parse_device(&runtime.device).map_err(UsageError)
}

#[cfg(test)]
mod tests {
    #[test]
    fn argument_definitions_are_consistent() {
        use clap::CommandFactory;
        super::FullCli::command().debug_assert();
    }
}
