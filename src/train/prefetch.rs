//! Batch inputs built on a worker thread while the current step trains: the samples' stored
//! inputs gathered and, when asked, augmented (`inputs::Inputs::batch`).

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::Scope;

use tch::Tensor;

use super::TrainingSet;
use crate::rng::Rng;

/// One batch in flight: requested as soon as the source has drawn it, taken by the step that
/// trains on it.
pub(super) struct Prefetch {
    requests: SyncSender<(Vec<usize>, Option<Rng>)>,
    ready: Receiver<Tensor>,
}

impl Prefetch {
    /// A worker in `scope` that builds inputs from `images` until this handle is dropped.
    pub(super) fn spawn<'scope, 'env>(
        scope: &'scope Scope<'scope, 'env>,
        images: &'env TrainingSet,
    ) -> Self {
        let (requests, inbox) = mpsc::sync_channel::<(Vec<usize>, Option<Rng>)>(1);
        let (built, ready) = mpsc::sync_channel(1);
        scope.spawn(move || {
            for (indices, rng) in inbox {
                let input = images.inputs.batch(&indices, rng);
                if built.send(input).is_err() {
                    return;
                }
            }
        });
        Prefetch { requests, ready }
    }

    /// Starts building the input of the images at `indices`, augmented with `augment` when
    /// given. At most one request may be outstanding.
    pub(super) fn request(&self, indices: &[usize], augment: Option<Rng>) {
        self.requests
            .send((indices.to_vec(), augment))
            .expect("the prefetch worker lives as long as its handle");
    }

    /// The input of the oldest request, waiting for it if need be.
    pub(super) fn take(&self) -> Tensor {
        self.ready
            .recv()
            .expect("the prefetch worker answers every request")
    }
}
