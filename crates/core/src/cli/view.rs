//! `tripmine view`.

use std::path::PathBuf;

use clap::Args;

use super::UsageError;
use crate::view::{SortOrder, ViewConfig};

#[derive(Debug, Clone, Args)]
#[command(
    allow_negative_numbers = true,
    after_help = "Examples:\n  tripmine view triplets.csv --corpus photos/ --out sheets/ && xdg-open sheets/index.html\n  tripmine view run/rounds/003/triplets.csv --corpus list.csv --out r3/ --sort random --limit 100"
)]
pub struct ViewArgs {
    /// Triplet CSV with the tripmine header (from `tripmine mine` or a training round)
    pub triplets: PathBuf,
    /// ImageFolder root or CSV manifest the CSV's paths come from
    #[arg(long)]
    pub corpus: PathBuf,
    /// Output directory: index.html, page-NNN.png and page-NNN.html
    #[arg(long)]
    pub out: PathBuf,
    /// Triplets per page
    #[arg(long, default_value_t = 25)]
    pub per_page: usize,
    #[arg(long, value_enum, default_value_t = SortOrder::Hardest)]
    pub sort: SortOrder,
    /// Show only the first N triplets after sorting
    #[arg(long)]
    pub limit: Option<usize>,
    /// Thumbnail edge in pixels
    #[arg(long, default_value_t = 96)]
    pub thumb_size: u32,
    /// Margin shown with each row (default: the CSV's .json sidecar, else 0.2)
    #[arg(long)]
    pub margin: Option<f32>,
    /// Seed of --sort random
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads for decoding and drawing (default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ViewArgs {
    pub fn to_config(&self) -> Result<ViewConfig, UsageError> {
        if self.per_page == 0 {
            return Err(UsageError("--per-page must be at least 1".into()));
        }
        if !(16..=512).contains(&self.thumb_size) {
            return Err(UsageError("--thumb-size must be between 16 and 512".into()));
        }
        super::worker_threads(self.threads)?;
        Ok(ViewConfig {
            triplets: self.triplets.clone(),
            corpus: self.corpus.clone(),
            out: self.out.clone(),
            per_page: self.per_page,
            sort: self.sort,
            limit: self.limit,
            thumb: self.thumb_size,
            seed: self.seed,
            margin: self.margin,
        })
    }
}
