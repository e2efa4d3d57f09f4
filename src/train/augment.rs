//! Image augmentation on preprocessed batches: random resized crop and horizontal flip.

use tch::Tensor;

use crate::rng::Rng;

/// Each image: a crop covering 60–100% of its area (aspect 3:4 to 4:3), resized back, and a
/// horizontal flip with probability ½.
pub fn augment(batch: &Tensor, rng: &mut Rng) -> Tensor {
    let size = batch.size();
    let (h, w) = (size[2], size[3]);
    let images: Vec<Tensor> = (0..size[0])
        .map(|i| {
            let img = batch.get(i).unsqueeze(0);
            let area = 0.6 + 0.4 * rng.next_f64();
            let aspect = (0.75f64.ln() + (4.0f64 / 3.0 / 0.75).ln() * rng.next_f64()).exp();
            let ch = ((area / aspect).sqrt() * h as f64)
                .round()
                .clamp(2.0, h as f64) as i64;
            let cw = ((area * aspect).sqrt() * w as f64)
                .round()
                .clamp(2.0, w as f64) as i64;
            let top = rng.below((h - ch + 1) as usize) as i64;
            let left = rng.below((w - cw + 1) as usize) as i64;
            let crop = img
                .narrow(2, top, ch)
                .narrow(3, left, cw)
                .upsample_bilinear2d([h, w], false, None, None);
            if rng.next_f64() < 0.5 {
                crop.flip([3])
            } else {
                crop
            }
        })
        .collect();
    Tensor::cat(&images, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_shape_and_is_seeded() {
        let x = Tensor::rand([3, 3, 16, 16], (tch::Kind::Float, tch::Device::Cpu));
        let a = augment(&x, &mut Rng::new(1));
        assert_eq!(a.size(), x.size());
        assert!(a.equal(&augment(&x, &mut Rng::new(1))));
    }
}
