//! tripmine's core, without libtorch: the embeddings store, the neighbour layer, the miner,
//! retrieval metrics, the audit, triplet files, atomic output and pictures, and the
//! subcommands that need no network (`mine`, `eval`, `audit`, `view`). The `tripmine` crate
//! adds the network (model, embed, train) on libtorch; see ARCHITECTURE.md for the map.

pub mod audit;
pub mod batches;
pub mod cli;
pub mod corpus;
pub mod definitions;
pub mod embeddings;
pub mod eval;
pub mod exit;
pub mod knn;
pub mod mine;
pub mod npy;
pub mod output;
pub mod progress;
pub mod report;
pub mod rng;
pub mod shards;
pub mod store;
pub mod triplets;
pub mod view;
