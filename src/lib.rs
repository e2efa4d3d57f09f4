//! tripmine: global triplet mining, export and corpus checks for triplet-loss embedding models.
//!
//! This crate is the network part on libtorch (model, embed, train, and the full command
//! line); everything that needs no network is `tripmine_core`, re-exported here under the
//! same paths. The binaries (`main.rs`, `bin/tripmine-torch.rs`) are thin layers over both;
//! see ARCHITECTURE.md for the map.

pub mod cli;
pub mod embed;
pub mod model;
pub mod train;

pub use tripmine_core::{
    audit, batches, corpus, definitions, embeddings, eval, exit, knn, mine, npy, output, progress,
    report, rng, shards, store, triplets, view,
};
