//! The one place that defines distance, margin and the triplet kinds (README, "Definitions"). Mining,
//! export, checks and training all use these, so "margin 0.2" means one thing everywhere.

use serde::{Deserialize, Serialize};

pub const DEFAULT_MARGIN: f32 = 0.2;

/// Distance between L2-normalised embeddings. All three are monotone in the dot product, so
/// neighbour order is the same under each; the margin is not, so every output records which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// ‖a − b‖, in [0, 2].
    #[default]
    Euclidean,
    /// ‖a − b‖², in [0, 4].
    Sqeuclidean,
    /// 1 − cos(a, b), in [0, 2].
    Cosine,
}

impl Distance {
    /// The distance between two unit vectors whose dot product is `dot`.
    pub fn from_dot(self, dot: f32) -> f32 {
        let sq = (2.0 - 2.0 * dot).max(0.0);
        match self {
            Distance::Euclidean => sq.sqrt(),
            Distance::Sqeuclidean => sq,
            Distance::Cosine => (1.0 - dot).max(0.0),
        }
    }

    /// The dot product at which two unit vectors are `d` apart: the inverse of `from_dot`.
    pub fn to_dot(self, d: f32) -> f32 {
        match self {
            Distance::Euclidean => 1.0 - d * d / 2.0,
            Distance::Sqeuclidean => 1.0 - d / 2.0,
            Distance::Cosine => 1.0 - d,
        }
    }

    /// The largest distance two unit vectors can have (opposite directions).
    pub fn max(self) -> f32 {
        self.from_dot(-1.0)
    }

    /// The distance between two unit vectors.
    pub fn between(self, a: &[f32], b: &[f32]) -> f32 {
        self.from_dot(dot(a, b))
    }

    pub fn name(self) -> &'static str {
        match self {
            Distance::Euclidean => "euclidean",
            Distance::Sqeuclidean => "sqeuclidean",
            Distance::Cosine => "cosine",
        }
    }
}

/// An f32 as JSON with its shortest decimal form (0.2, not 0.20000000298023224).
pub fn json_f32(x: f32) -> serde_json::Value {
    x.to_string()
        .parse::<f64>()
        .map_or(serde_json::Value::Null, serde_json::Value::from)
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One mined triplet: indices into the mined points, with the distances that decided its
/// kind. Here (not in `mine`) so that the CSV schema and the pictures need no mining job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Triplet {
    pub anchor: usize,
    pub positive: usize,
    pub negative: usize,
    pub d_ap: f32,
    pub d_an: f32,
    pub kind: TripletKind,
}

/// Where a negative lies relative to an anchor–positive pair, by t = d(a,n) − d(a,p).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TripletKind {
    /// t ≤ 0: the negative is at least as close as the positive.
    Hard,
    /// 0 < t ≤ margin: farther than the positive, but inside the margin.
    Semihard,
    /// t > margin: already satisfied; zero loss.
    Easy,
}

impl TripletKind {
    pub const ALL: [TripletKind; 3] = [TripletKind::Hard, TripletKind::Semihard, TripletKind::Easy];

    pub fn classify(d_ap: f32, d_an: f32, margin: f32) -> TripletKind {
        let t = d_an - d_ap;
        if t <= 0.0 {
            TripletKind::Hard
        } else if t <= margin {
            TripletKind::Semihard
        } else {
            TripletKind::Easy
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TripletKind::Hard => "hard",
            TripletKind::Semihard => "semihard",
            TripletKind::Easy => "easy",
        }
    }
}

/// Triplet margin loss max(0, d_ap − d_an + m): non-zero exactly for hard and semi-hard.
pub fn triplet_loss(d_ap: f32, d_an: f32, margin: f32) -> f32 {
    (d_ap - d_an + margin).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_partition_t_at_zero_and_margin() {
        assert_eq!(TripletKind::classify(0.5, 0.5, 0.2), TripletKind::Hard);
        assert_eq!(TripletKind::classify(0.5, 0.6, 0.2), TripletKind::Semihard);
        assert_eq!(TripletKind::classify(0.5, 0.69, 0.2), TripletKind::Semihard);
        assert_eq!(TripletKind::classify(0.5, 0.71, 0.2), TripletKind::Easy);
    }

    #[test]
    fn loss_is_positive_exactly_for_hard_and_semihard() {
        for (ap, an) in [(0.5, 0.3), (0.5, 0.6), (0.5, 0.9), (1.0, 1.0)] {
            let kind = TripletKind::classify(ap, an, 0.2);
            assert_eq!(
                triplet_loss(ap, an, 0.2) > 0.0,
                kind != TripletKind::Easy,
                "{ap} {an}"
            );
        }
    }

    #[test]
    fn distances_agree_with_their_definitions() {
        let a = [1.0, 0.0];
        let b = [0.0, 1.0];
        assert!((Distance::Euclidean.between(&a, &b) - 2f32.sqrt()).abs() < 1e-6);
        assert!((Distance::Sqeuclidean.between(&a, &b) - 2.0).abs() < 1e-6);
        assert!((Distance::Cosine.between(&a, &b) - 1.0).abs() < 1e-6);
        assert_eq!(Distance::Euclidean.between(&a, &a), 0.0);
        for d in [Distance::Euclidean, Distance::Sqeuclidean, Distance::Cosine] {
            assert!((d.to_dot(d.from_dot(0.3)) - 0.3).abs() < 1e-6, "{d:?}");
        }
    }
}

/// What a numeric option may be: one definition of each rule, so the command line and the
/// Python API refuse the same values with the same words.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Allowed {
    /// finite and > 0
    Positive,
    /// finite and ≥ 0
    NonNegative,
    /// in [0, 1]
    Fraction,
    /// in [0, 1)
    FractionBelowOne,
}

impl Allowed {
    pub fn holds(self, v: f64) -> bool {
        v.is_finite()
            && match self {
                Allowed::Positive => v > 0.0,
                Allowed::NonNegative => v >= 0.0,
                Allowed::Fraction => (0.0..=1.0).contains(&v),
                Allowed::FractionBelowOne => (0.0..1.0).contains(&v),
            }
    }

    fn says(self) -> &'static str {
        match self {
            Allowed::Positive => "a finite number above 0",
            Allowed::NonNegative => "a finite number, 0 or more",
            Allowed::Fraction => "a number in [0, 1]",
            Allowed::FractionBelowOne => "a number in [0, 1)",
        }
    }
}

/// `Err` naming `option` and the rule when `value` breaks it.
pub fn check_number(option: &str, value: f64, allowed: Allowed) -> Result<(), String> {
    if allowed.holds(value) {
        Ok(())
    } else {
        Err(format!("{option} {value}: must be {}", allowed.says()))
    }
}
