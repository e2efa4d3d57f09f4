//! tripmine: global triplet mining, export and corpus checks for triplet-loss embedding models.
//!
//! The binary (`main.rs`) is a thin layer over these modules; see ARCHITECTURE.md for the map.

pub mod audit;
pub mod cli;
pub mod corpus;
pub mod definitions;
pub mod embed;
pub mod eval;
pub mod exit;
pub mod knn;
pub mod mine;
pub mod model;
pub mod npy;
pub mod output;
pub mod progress;
pub mod report;
pub mod rng;
pub mod store;
pub mod train;
pub mod triplets;
pub mod view;
