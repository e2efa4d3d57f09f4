//! Triplet loss on a batch of embeddings, then the reducer (mean over active triplets), then
//! the statistics the trainer logs — three separate steps, as in pytorch-metric-learning.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::definitions::Distance;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    pub margin: f32,
    pub distance: Distance,
    /// softplus(d_ap − d_an) instead of the hinge (Hermans et al. 2017).
    pub soft_margin: bool,
    /// Use min(d(a,n), d(p,n)) as the negative distance (distance swap).
    pub swap: bool,
}

/// Row-wise distances between unit vectors: the tensor form of [`Distance::from_dot`].
pub fn distance(x: &Tensor, y: &Tensor, d: Distance) -> Tensor {
    let dot = (x * y).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let sq = (&dot * -2.0 + 2.0).clamp_min(0.0);
    match d {
        // The floor keeps the gradient of sqrt finite for identical vectors.
        Distance::Euclidean => sq.clamp_min(1e-12).sqrt(),
        Distance::Sqeuclidean => sq,
        Distance::Cosine => (dot * -1.0 + 1.0).clamp_min(0.0),
    }
}

/// One loss per triplet; `a`, `p`, `n` index rows of `emb`.
pub fn per_triplet(emb: &Tensor, a: &Tensor, p: &Tensor, n: &Tensor, cfg: &LossConfig) -> Tensor {
    losses_of(
        &emb.index_select(0, a),
        &emb.index_select(0, p),
        &emb.index_select(0, n),
        cfg,
    )
}

/// One loss per row of anchor, positive and negative embeddings.
pub fn losses_of(ea: &Tensor, ep: &Tensor, en: &Tensor, cfg: &LossConfig) -> Tensor {
    let d_ap = distance(ea, ep, cfg.distance);
    let mut d_an = distance(ea, en, cfg.distance);
    if cfg.swap {
        d_an = d_an.minimum(&distance(ep, en, cfg.distance));
    }
    let diff = d_ap - d_an;
    if cfg.soft_margin {
        diff.softplus()
    } else {
        (diff + cfg.margin as f64).relu()
    }
}

pub struct Reduced {
    pub loss: Tensor,
    /// Triplets with a non-zero loss.
    pub active: usize,
    pub total: usize,
}

/// Mean over active (non-zero) triplets, so easy triplets do not dilute the gradient.
pub fn reduce(losses: &Tensor) -> Reduced {
    let total = losses.size()[0] as usize;
    let mask = losses.gt(0.0);
    let active = i64::try_from(mask.sum(Kind::Int64)).unwrap_or(0) as usize;
    let loss = if active == 0 {
        losses.sum(Kind::Float) * 0.0
    } else {
        losses.masked_select(&mask).mean(Kind::Float)
    };
    Reduced {
        loss,
        active,
        total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::{triplet_loss, TripletKind};

    #[test]
    fn tensor_loss_agrees_with_the_definition_and_reduces_over_active() {
        let emb = Tensor::from_slice(&[1.0f32, 0.0, 0.8, 0.6, 0.0, 1.0, 0.6, 0.8]).view([4, 2]);
        let idx = |v: &[i64]| Tensor::from_slice(v);
        let cfg = LossConfig {
            margin: 0.3,
            distance: Distance::Euclidean,
            soft_margin: false,
            swap: false,
        };
        let losses = per_triplet(&emb, &idx(&[0, 0]), &idx(&[1, 1]), &idx(&[2, 3]), &cfg);
        let got = Vec::<f32>::try_from(&losses).unwrap();
        let rows: Vec<[f32; 2]> = vec![[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]];
        for (i, n) in [2usize, 3].iter().enumerate() {
            let d_ap = Distance::Euclidean.between(&rows[0], &rows[1]);
            let d_an = Distance::Euclidean.between(&rows[0], &rows[*n]);
            assert!((got[i] - triplet_loss(d_ap, d_an, 0.3)).abs() < 1e-5);
            assert_eq!(
                got[i] > 0.0,
                TripletKind::classify(d_ap, d_an, 0.3) != TripletKind::Easy
            );
        }
        let r = reduce(&losses);
        assert_eq!((r.active, r.total), (1, 2));
        assert!((f32::try_from(&r.loss).unwrap() - got.iter().sum::<f32>()).abs() < 1e-6);
    }
}
