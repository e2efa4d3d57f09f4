//! Command-line definitions (clap) of the subcommands that need no network, the options all
//! subcommands share, and the libtorch-free front end ([`dispatch`]). Each subcommand's
//! arguments turn into the library's validated config here; nothing below `cli` sees a clap
//! type. The `tripmine` crate adds `embed` and `train` (and `--model`) on libtorch.

mod audit;
mod eval;
mod mine;
mod summary;
mod view;

use std::ffi::OsString;

use clap::{Args, Parser, Subcommand};

pub use audit::AuditArgs;
pub use eval::EvalArgs;
pub use mine::MineArgs;
pub use summary::run_tool;
pub use view::ViewArgs;

use crate::embeddings::{EmbeddingsFrom, ModelRun};
use crate::exit::Failure;

/// The command line as the libtorch-free front end reads it: `embed` and `train` are only
/// named here (their arguments go to the network part unread).
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
    #[command(disable_help_flag = true)]
    Embed(PassThrough),
    /// Train the embedding network with triplet loss (global re-mining or in-batch miners)
    #[command(disable_help_flag = true)]
    Train(PassThrough),
    #[command(flatten)]
    Tool(Box<Tool>),
}

/// The arguments of a subcommand that the network part reads.
#[derive(Debug, Clone, Args)]
pub struct PassThrough {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<OsString>,
}

/// The subcommands that need no network when given embeddings.
#[derive(Debug, Subcommand)]
pub enum Tool {
    /// Mine hard / semi-hard / easy triplets over the whole corpus and export them as CSV
    Mine(MineArgs),
    /// Retrieval metrics of embeddings (or a checkpoint on a corpus): P@1, R-Precision, MAP@R, Recall@K
    Eval(EvalArgs),
    /// Audit a corpus: duplicates, label conflicts, likely mislabels, outliers, split leakage
    Audit(AuditArgs),
    /// Contact sheets of a triplet CSV: PNG pages and an index.html to page through them
    View(ViewArgs),
}

impl Tool {
    /// Whether the command embeds a corpus with a checkpoint (`--model`).
    pub fn needs_network(&self) -> bool {
        match self {
            Tool::Mine(a) => a.model.is_some(),
            Tool::Eval(a) => a.model.is_some(),
            Tool::Audit(a) => a.model.is_some(),
            Tool::View(_) => false,
        }
    }
}

/// What the libtorch-free front end did with a command line.
pub enum Dispatch {
    /// Ran (or printed help or a usage error): the exit status.
    Ran(u8),
    /// `embed`, `train` or `--model`: the network part must run it.
    NeedsNetwork,
}

/// Parses `argv` (program name first) and runs what needs no network.
pub fn dispatch(argv: impl IntoIterator<Item = OsString>) -> Dispatch {
    let argv: Vec<OsString> = argv.into_iter().collect();
    // `help embed` and `help train` are answered by the part that knows their options.
    if argv.get(1).is_some_and(|a| a == "help")
        && argv.get(2).is_some_and(|a| a == "embed" || a == "train")
    {
        return Dispatch::NeedsNetwork;
    }
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return Dispatch::Ran(e.exit_code().clamp(0, 255) as u8);
        }
    };
    match cli.command {
        Command::Embed(_) | Command::Train(_) => Dispatch::NeedsNetwork,
        Command::Tool(tool) if tool.needs_network() => Dispatch::NeedsNetwork,
        Command::Tool(tool) => Dispatch::Ran(exit_status(run_tool(*tool, None))),
    }
}

/// Prints a failure (the whole chain, each cause once) and gives the exit status.
pub fn exit_status(result: Result<(), Failure>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(failure) => {
            eprintln!("error: {}", error_message(&failure.error));
            failure.exit_code()
        }
    }
}

/// Embeddings from files: tripmine's directory, another tool's, or an `.npy` with its labels.
#[derive(Debug, Clone, Args)]
pub struct EmbeddingsArgs {
    /// Embeddings: a directory with embeddings.npy + samples.csv (from `tripmine embed` or
    /// your own code), a shard directory (manifest.json, from tripmine.write_shards; `mine`
    /// streams it shard by shard), or an .npy file (N×D float16/32/64) with --labels
    #[arg(long)]
    pub embeddings: Option<std::path::PathBuf>,
    /// CSV naming the rows of --embeddings in order: path,label[,split] (or just label)
    #[arg(long, requires = "embeddings")]
    pub labels: Option<std::path::PathBuf>,
    /// L2-normalise rows that are not unit length (without it they are refused); distances
    /// then compare directions only. Recorded in every output.
    #[arg(long, requires = "embeddings")]
    pub normalise: bool,
}

impl EmbeddingsArgs {
    /// `None` when --embeddings was not given.
    pub fn input(&self) -> Result<Option<crate::store::EmbeddingsInput>, UsageError> {
        self.embeddings
            .as_deref()
            .map(|e| crate::store::EmbeddingsInput::from_args(e, self.labels.as_deref()))
            .transpose()
            .map_err(UsageError)
    }
}

/// The one place a subcommand's embeddings options become an [`EmbeddingsFrom`]: files when
/// `--embeddings` is given, else `corpus` embedded with `model`.
pub fn embeddings_from(
    embeddings: &EmbeddingsArgs,
    corpus: Option<&std::path::Path>,
    model: Option<&std::path::Path>,
    batch_size: usize,
    runtime: &RuntimeArgs,
) -> Result<EmbeddingsFrom, UsageError> {
    let batch_size = images_per_pass(batch_size)?;
    match (embeddings.input()?, corpus, model) {
        (Some(input), _, _) => Ok(EmbeddingsFrom::Files {
            input,
            normalise: embeddings.normalise,
        }),
        (None, Some(corpus), Some(model)) => Ok(EmbeddingsFrom::Model(ModelRun {
            corpus: corpus.to_path_buf(),
            model: model.to_path_buf(),
            batch_size,
            device: runtime.device.clone(),
        })),
        _ => Err(UsageError(
            "give --embeddings DIR (or FILE.npy with --labels CSV), or --corpus PATH with --model DIR"
                .into(),
        )),
    }
}

/// The neighbour layer's options, the same in every subcommand that searches neighbours.
#[derive(Debug, Clone, Args)]
pub struct KnnArgs {
    /// Neighbour backend. auto: exact below 20,000 samples; from there the classes path when
    /// --candidate-classes is under 20% of the classes, else HNSW from 300,000 samples
    #[arg(long, value_enum, default_value_t = crate::knn::KnnChoice::Auto)]
    pub knn: crate::knn::KnnChoice,
    /// Classes whose members each anchor's bands search on the classes path (nearest
    /// centroids first; classes the triangle inequality rules out are never searched)
    #[arg(long, default_value_t = crate::knn::KnnConfig::default().candidate_classes)]
    pub candidate_classes: usize,
    /// HNSW links per node
    #[arg(long, default_value_t = crate::knn::HnswParams::default().m)]
    pub hnsw_m: usize,
    #[arg(long, default_value_t = crate::knn::HnswParams::default().ef_construction)]
    pub ef_construction: usize,
    #[arg(long, default_value_t = crate::knn::HnswParams::default().ef_search)]
    pub ef_search: usize,
}

impl KnnArgs {
    /// The options as a config; values that cannot work are refused.
    pub fn config(&self) -> Result<crate::knn::KnnConfig, UsageError> {
        if self.candidate_classes == 0 {
            return Err(UsageError("--candidate-classes must be at least 1".into()));
        }
        if !(1..=256).contains(&self.hnsw_m) || self.ef_construction == 0 || self.ef_search == 0 {
            return Err(UsageError(
                "--hnsw-m must be in 1..=256 and the ef values positive".into(),
            ));
        }
        Ok(crate::knn::KnnConfig {
            choice: self.knn,
            hnsw: crate::knn::HnswParams {
                m: self.hnsw_m,
                ef_construction: self.ef_construction,
                ef_search: self.ef_search,
            },
            candidate_classes: self.candidate_classes,
        })
    }
}

/// Images per forward pass (`--batch-size` wherever a network embeds images), refused at 0.
pub fn images_per_pass(batch_size: usize) -> Result<usize, UsageError> {
    if batch_size == 0 {
        return Err(UsageError(
            "--batch-size (images per forward pass) must be at least 1".into(),
        ));
    }
    Ok(batch_size)
}

/// The false-negative guard of every negative taken from the neighbour index: `mine`'s, and
/// `train`'s global rounds, memory negatives and neighbour-batch seeds.
#[derive(Debug, Clone, Args)]
pub struct GuardArgs {
    /// Never take an anchor's R nearest other-label samples as its negatives (they are often
    /// duplicates or mislabels)
    #[arg(long, default_value_t = 0)]
    pub skip_nearest: usize,
    /// Drop negatives closer to the anchor than F·d(a,p), which are likely false negatives
    /// (0: off; NV-Retriever keeps those beyond 0.95 of the positive's similarity)
    #[arg(long, default_value_t = 0.0)]
    pub negative_floor: f32,
}

impl GuardArgs {
    pub fn validate(&self) -> Result<(), UsageError> {
        crate::definitions::check_number(
            "--negative-floor",
            f64::from(self.negative_floor),
            crate::definitions::Allowed::NonNegative,
        )
        .map_err(UsageError)
    }
}

/// Options every subcommand shares (`--device` matters where a network runs).
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
    /// Checks `--device` and sizes the worker pool (the network part also sizes libtorch's);
    /// returns the thread count.
    pub fn apply(&self) -> Result<usize, UsageError> {
        let device = self.device.as_str();
        let cuda_index = device
            .strip_prefix("cuda:")
            .is_some_and(|i| i.parse::<usize>().is_ok());
        if !matches!(device, "auto" | "cpu" | "cuda") && !cuda_index {
            return Err(UsageError(format!(
                "--device {device:?}: expected auto, cpu, cuda or cuda:N"
            )));
        }
        worker_threads(self.threads)
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

/// The error and its causes on one line, each cause once: a cause whose text is already part
/// of the message is dropped, and one that extends the previous part replaces it.
pub fn error_message(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || parts.iter().any(|p| p.contains(&text)) {
            continue;
        }
        match parts.last_mut() {
            Some(last) if text.contains(last.as_str()) => *last = text,
            _ => parts.push(text),
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("writing {path}")]
    struct Wrapped {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn each_cause_appears_once() {
        let io = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "writing no/such/t.csv: No such file or directory (os error 2)",
        );
        let err = anyhow::Error::new(Wrapped {
            path: "no/such/t.csv".into(),
            source: io,
        });
        assert_eq!(
            super::error_message(&err),
            "writing no/such/t.csv: No such file or directory (os error 2)"
        );
        let err = anyhow::anyhow!("disk full")
            .context("writing a.csv")
            .context("mine");
        assert_eq!(super::error_message(&err), "mine: writing a.csv: disk full");
    }

    #[test]
    fn argument_definitions_are_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
