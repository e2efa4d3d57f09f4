//! `--remine-every`, `--memory-warmup` and `--global-warmup`: a length of training in epochs
//! (fractions allowed) or in steps (`500steps`), and where it falls inside an epoch whose step
//! count is known. Everything is decided from positions (epoch, global step), never from float
//! equality, so that a resumed run refreshes where the uninterrupted one did.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How close an epoch-count position must be to a whole epoch to count as its start.
const AT_START: f64 = 1e-6;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Period {
    Epochs(f64),
    Steps(usize),
}

/// An epoch's place in the run: its number, its first global step and its step count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochSpan {
    pub epoch: usize,
    pub first_step: usize,
    pub steps: usize,
}

impl EpochSpan {
    /// An epoch about to be planned: its step count is not known yet.
    pub fn starting(epoch: usize, first_step: usize) -> Self {
        EpochSpan {
            epoch,
            first_step,
            steps: 0,
        }
    }
}

impl Period {
    pub const ZERO: Period = Period::Steps(0);

    pub fn is_zero(self) -> bool {
        match self {
            Period::Epochs(e) => e <= 0.0,
            Period::Steps(n) => n == 0,
        }
    }

    /// Whether an event repeating with this period falls at the very start of an epoch
    /// (known before the epoch's steps are).
    pub fn repeats_at_start(self, epoch: usize, first_step: usize) -> bool {
        match self {
            Period::Epochs(every) => {
                let j = (epoch as f64 / every).round();
                (j * every - epoch as f64).abs() < AT_START * (epoch as f64).max(1.0)
            }
            Period::Steps(n) => first_step.is_multiple_of(n.max(1)),
        }
    }

    /// Step offsets inside `span` at which an event repeating with this period falls, soonest
    /// first (0 when it falls at the start).
    pub fn repeats_in(self, span: EpochSpan) -> Vec<usize> {
        let mut offsets: Vec<usize> = match self {
            Period::Epochs(every) => {
                let every = every.max(1e-3);
                let epoch = span.epoch as f64;
                let mut j = (epoch / every - 1e-9).ceil().max(0.0);
                let mut out = Vec::new();
                loop {
                    let t = j * every - epoch;
                    if t >= 1.0 - AT_START {
                        break;
                    }
                    out.push(if t < AT_START {
                        0
                    } else {
                        ((t * span.steps as f64).round() as usize).max(1)
                    });
                    j += 1.0;
                }
                out
            }
            Period::Steps(n) => {
                let n = n.max(1);
                let first = span.first_step.div_ceil(n) * n;
                (first..span.first_step + span.steps)
                    .step_by(n)
                    .map(|s| s - span.first_step)
                    .collect()
            }
        };
        if self.repeats_at_start(span.epoch, span.first_step) && offsets.first() != Some(&0) {
            offsets.insert(0, 0);
        }
        offsets.retain(|&o| o < span.steps.max(1));
        offsets.dedup();
        offsets
    }

    /// Whether a run of this length (a warm-up) is over at step `offset` of `span`.
    pub fn over_at(self, span: EpochSpan, offset: usize) -> bool {
        match self {
            Period::Epochs(length) => {
                let at = span.epoch as f64 + offset as f64 / span.steps.max(1) as f64;
                at >= length - AT_START
            }
            Period::Steps(n) => span.first_step + offset >= n,
        }
    }

    /// Whether a warm-up of this length is over when epoch `epoch` starts at `first_step`.
    pub fn over_at_start(self, epoch: usize, first_step: usize) -> bool {
        self.over_at(EpochSpan::starting(epoch, first_step), 0)
    }

    /// Whether a warm-up of this length ends exactly where epoch `epoch` starts.
    pub fn ends_at_start(self, epoch: usize, first_step: usize) -> bool {
        match self {
            Period::Epochs(length) => {
                (length - epoch as f64).abs() < AT_START * (epoch as f64).max(1.0)
            }
            Period::Steps(n) => first_step == n,
        }
    }

    /// The step offset of `span` at which a warm-up of this length ends, when it ends there
    /// (after its first step: one over at the start ended earlier, or exactly then).
    pub fn ends_in(self, span: EpochSpan) -> Option<usize> {
        if self.over_at(span, 0) {
            return None;
        }
        (1..span.steps).find(|&o| self.over_at(span, o))
    }
}

impl FromStr for Period {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not a period: give epochs (2, 0.5) or steps (500steps)");
        if let Some(n) = s.strip_suffix("steps").or_else(|| s.strip_suffix("step")) {
            return n
                .trim()
                .parse::<usize>()
                .map(Period::Steps)
                .map_err(|_| bad());
        }
        let e: f64 = s.parse().map_err(|_| bad())?;
        if !(e.is_finite() && e >= 0.0) {
            return Err(bad());
        }
        Ok(Period::Epochs(e))
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Epochs(e) => write!(f, "{e}"),
            Period::Steps(n) => write!(f, "{n}steps"),
        }
    }
}

impl Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            // Epochs stay a number, as config.json files before steps were allowed have them.
            Period::Epochs(e) => s.serialize_f64(*e),
            Period::Steps(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(f64),
            Text(String),
        }
        match Written::deserialize(d)? {
            Written::Number(e) => Ok(Period::Epochs(e)),
            Written::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(epoch: usize, first_step: usize, steps: usize) -> EpochSpan {
        EpochSpan {
            epoch,
            first_step,
            steps,
        }
    }

    #[test]
    fn periods_parse_in_epochs_or_steps_and_round_trip_through_json() {
        assert_eq!("0.5".parse::<Period>(), Ok(Period::Epochs(0.5)));
        assert_eq!("250steps".parse::<Period>(), Ok(Period::Steps(250)));
        assert!("-1".parse::<Period>().is_err());
        assert!("tensteps".parse::<Period>().is_err());
        for p in [Period::Epochs(1.5), Period::Steps(40)] {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<Period>(&json).unwrap(), p);
        }
        // config.json written before steps were allowed holds plain numbers.
        assert_eq!(
            serde_json::from_str::<Period>("2").unwrap(),
            Period::Epochs(2.0)
        );
    }

    #[test]
    fn repeats_fall_at_epoch_fractions_or_step_multiples() {
        assert_eq!(Period::Epochs(1.0).repeats_in(span(0, 0, 10)), vec![0]);
        assert_eq!(Period::Epochs(0.5).repeats_in(span(3, 30, 10)), vec![0, 5]);
        assert_eq!(
            Period::Epochs(2.0).repeats_in(span(1, 10, 10)),
            Vec::<usize>::new()
        );
        assert_eq!(Period::Epochs(1.5).repeats_in(span(1, 10, 10)), vec![5]);
        // 0.1 × 30 is 3.0000000000000004: still the start of epoch 3.
        assert!(Period::Epochs(0.1).repeats_at_start(3, 0));
        assert_eq!(Period::Epochs(0.1).repeats_in(span(3, 0, 20))[0], 0);
        assert_eq!(Period::Steps(4).repeats_in(span(1, 10, 10)), vec![2, 6]);
        assert_eq!(Period::Steps(5).repeats_in(span(1, 10, 10)), vec![0, 5]);
    }

    #[test]
    fn a_warm_up_ends_once_at_its_step() {
        let w = Period::Steps(25);
        assert_eq!(w.ends_in(span(2, 20, 10)), Some(5));
        assert!(!w.over_at(span(2, 20, 10), 4) && w.over_at(span(2, 20, 10), 5));
        assert_eq!(w.ends_in(span(3, 30, 10)), None);
        assert!(w.over_at_start(3, 30));
        let e = Period::Epochs(1.5);
        assert_eq!(e.ends_in(span(1, 10, 10)), Some(5));
        assert!(!e.over_at_start(1, 10) && e.over_at_start(2, 20));
        assert!(Period::ZERO.over_at_start(0, 0));
        assert!(!e.ends_at_start(2, 20) && Period::Epochs(2.0).ends_at_start(2, 20));
        assert!(w.ends_at_start(3, 25) && !w.ends_at_start(3, 30));
    }
}
