//! What to mine: positives rule, negative kinds (a weighted mix), order, counts and margin.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::definitions::{Distance, TripletKind};

/// Which same-label samples serve as positives of an anchor (chosen exactly in its class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PositiveRule {
    /// the farthest same-label sample
    Hardest,
    /// the nearest same-label sample
    Easiest,
    Random,
    /// every same-label sample (K negatives for each pair)
    All,
}

/// Within a kind, which negatives are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NegativeOrder {
    Nearest,
    Random,
}

/// One negative kind of the strategy; `All` (`violating`) is every margin-violating negative
/// (t ≤ m), `Any` every negative whatever its kind (what a soft margin trains on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    Kind(TripletKind),
    All,
    Any,
}

impl Selection {
    pub fn accepts(self, kind: TripletKind) -> bool {
        match self {
            Selection::Kind(k) => k == kind,
            Selection::All => kind != TripletKind::Easy,
            Selection::Any => true,
        }
    }

    /// The range of d(a,n) this selection covers for a pair at distance `d_ap`, near edge first.
    pub fn distance_range(self, d_ap: f32, margin: f32) -> (f32, f32) {
        match self {
            Selection::Kind(TripletKind::Hard) => (0.0, d_ap),
            Selection::Kind(TripletKind::Semihard) => (d_ap, d_ap + margin),
            Selection::Kind(TripletKind::Easy) => (d_ap + margin, f32::INFINITY),
            Selection::All => (0.0, d_ap + margin),
            Selection::Any => (0.0, f32::INFINITY),
        }
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selection::Kind(k) => f.write_str(k.name()),
            Selection::All => f.write_str("violating"),
            Selection::Any => f.write_str("any"),
        }
    }
}

/// `--strategy`: one selection, or a weighted mix such as `semihard=0.7,hard=0.3`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Strategy {
    pub parts: Vec<(Selection, f64)>,
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = Vec::new();
        for item in s.split(',').map(str::trim) {
            let (name, weight) = match item.split_once('=') {
                Some((n, w)) => (
                    n.trim(),
                    w.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("bad weight in {item:?}"))?,
                ),
                None => (item, 1.0),
            };
            let sel = match name {
                "hard" => Selection::Kind(TripletKind::Hard),
                "semihard" | "semi-hard" => Selection::Kind(TripletKind::Semihard),
                "easy" => Selection::Kind(TripletKind::Easy),
                "violating" => Selection::All,
                "any" => Selection::Any,
                // `violating`'s first name here and pml's name for the same rule; refused so that
                // nobody reads it as every triplet (`any`), with the pml meaning in the message.
                "all" => {
                    return Err(
                        "`all` is not a tripmine kind: pytorch-metric-learning's TripletMarginMiner(type_of_triplets=\"all\") keeps every triplet with d(a,n) - d(a,p) <= margin, which tripmine calls violating (hard or semihard); any is every negative".into(),
                    )
                }
                other => {
                    return Err(format!(
                        "unknown kind {other:?}; expected hard, semihard, easy, violating (hard or semihard) or any (every negative)"
                    ))
                }
            };
            if !(weight.is_finite() && weight > 0.0) {
                return Err(format!("weight of {name} must be positive"));
            }
            if parts.iter().any(|(p, _)| *p == sel) {
                return Err(format!("{name} is named twice"));
            }
            parts.push((sel, weight));
        }
        let total: f64 = parts.iter().map(|(_, w)| w).sum();
        Ok(Strategy {
            parts: parts.into_iter().map(|(s, w)| (s, w / total)).collect(),
        })
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.parts.iter().map(|(s, w)| format!("{s}={w}")).collect();
        f.write_str(&items.join(","))
    }
}

/// Every rule of one mining run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MiningRules {
    pub margin: f32,
    pub distance: Distance,
    pub strategy: Strategy,
    pub positives: PositiveRule,
    /// Per anchor and positive, split among the strategy's kinds by weight; at least the
    /// corpus size means every negative of every requested kind.
    pub negatives_per_anchor: usize,
    pub negative_order: NegativeOrder,
    pub anchors_per_class: Option<usize>,
    pub seed: u64,
    /// Other-label neighbours fetched first; widened ×4 while an anchor lacks negatives.
    pub start_depth: usize,
    /// The widening stops here; anchors still short are recorded with the reason.
    pub max_depth: usize,
    /// The false-negative guard: an anchor's this many nearest other-label samples are never
    /// its negatives (they are often duplicates or mislabels).
    pub skip_nearest: usize,
    /// The other guard (NV-Retriever's): no negative closer than this share of d(a,p); 0 is off.
    pub negative_floor: f32,
}

impl MiningRules {
    /// The nearest d(a,n) a negative of a pair at `d_ap` may have under the guard.
    pub fn floor(&self, d_ap: f32) -> f32 {
        self.negative_floor * d_ap
    }
}

impl Default for MiningRules {
    fn default() -> Self {
        MiningRules {
            margin: crate::definitions::DEFAULT_MARGIN,
            distance: Distance::Euclidean,
            strategy: "semihard".parse().expect("valid"),
            positives: PositiveRule::Hardest,
            negatives_per_anchor: 1,
            negative_order: NegativeOrder::Nearest,
            anchors_per_class: None,
            seed: 0,
            start_depth: 64,
            max_depth: 4096,
            skip_nearest: 0,
            negative_floor: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_mix_is_normalised_and_validated() {
        let s: Strategy = "semihard=7, hard=3".parse().unwrap();
        assert_eq!(
            s.parts,
            [
                (Selection::Kind(TripletKind::Semihard), 0.7),
                (Selection::Kind(TripletKind::Hard), 0.3)
            ]
        );
        assert!("medium".parse::<Strategy>().is_err());
        assert!("hard=0".parse::<Strategy>().is_err());
        assert!("hard,hard".parse::<Strategy>().is_err());
        let e = "all".parse::<Strategy>().unwrap_err();
        assert!(
            e.contains("violating") && e.contains("d(a,n) - d(a,p) <= margin"),
            "{e}"
        );
    }
}
