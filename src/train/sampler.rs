//! The P×K class-balanced sampler: P classes × K samples per batch, every sample (of classes
//! with at least two) visited once per epoch.

use std::collections::BTreeMap;

use crate::rng::Rng;

/// Batches of sample indices for one epoch, drawn from `seed` and the epoch number only.
pub fn pk_batches(labels: &[u32], p: usize, k: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut rng = Rng::for_item(seed ^ 0x5A4D_1E55, epoch as u64);
    let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by_class.entry(l).or_default().push(i);
    }
    // Chunks of K from each class; a class with a single sample can form no positive pair.
    let mut chunks: Vec<(u32, Vec<usize>)> = Vec::new();
    for (label, mut members) in by_class.into_iter().filter(|(_, m)| m.len() >= 2) {
        rng.shuffle(&mut members);
        let mut parts: Vec<Vec<usize>> = members.chunks(k.max(2)).map(<[usize]>::to_vec).collect();
        // A lone leftover sample joins the previous chunk so that it has a positive.
        if parts.len() > 1 && parts.last().is_some_and(|c| c.len() == 1) {
            let last = parts.pop().expect("checked");
            parts.last_mut().expect("checked").extend(last);
        }
        chunks.extend(parts.into_iter().map(|c| (label, c)));
    }
    rng.shuffle(&mut chunks);
    // With fewer classes than P, a batch holds every class.
    let classes: std::collections::BTreeSet<u32> = chunks.iter().map(|(l, _)| *l).collect();
    let p = p.min(classes.len()).max(1);
    let mut batches = Vec::new();
    let mut current: Vec<(u32, Vec<usize>)> = Vec::new();
    let mut waiting: Vec<(u32, Vec<usize>)> = Vec::new();
    for chunk in chunks {
        if current.iter().any(|(l, _)| *l == chunk.0) {
            waiting.push(chunk);
        } else {
            current.push(chunk);
        }
        if current.len() == p {
            batches.push(current.drain(..).flat_map(|(_, c)| c).collect());
            // Deferred chunks go first into the next batch.
            let deferred = std::mem::take(&mut waiting);
            for c in deferred {
                if current.iter().any(|(l, _)| *l == c.0) {
                    waiting.push(c);
                } else {
                    current.push(c);
                }
            }
        }
    }
    current.extend(waiting);
    if !current.is_empty() {
        batches.push(current.into_iter().flat_map(|(_, c)| c).collect());
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_once_and_p_classes_of_k() {
        let labels: Vec<u32> = (0..203).map(|i| (i % 10) as u32).collect();
        let batches = pk_batches(&labels, 4, 5, 1, 0);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..203).collect::<Vec<_>>());
        let full = &batches[0];
        let classes: std::collections::BTreeSet<u32> = full.iter().map(|&i| labels[i]).collect();
        assert_eq!((full.len(), classes.len()), (20, 4));
        assert_ne!(
            pk_batches(&labels, 4, 5, 1, 0),
            pk_batches(&labels, 4, 5, 1, 1)
        );
    }
}
