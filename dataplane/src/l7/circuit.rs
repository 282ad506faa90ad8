//! Circuit breaking per service: caps on requests waiting for their answer
//! and on upstream HTTP connections. A request beyond either is answered 503
//! at once with response flag UO (Envoy's upstream overflow), instead of
//! queueing behind a service that is not keeping up.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct Circuit {
    pending: AtomicUsize,
    connections: AtomicUsize,
}

/// A slot held until dropped.
pub struct Slot(Arc<Circuit>, bool);

impl Drop for Slot {
    fn drop(&mut self) {
        let n = if self.1 { &self.0.pending } else { &self.0.connections };
        n.fetch_sub(1, Ordering::SeqCst);
    }
}

fn take(n: &AtomicUsize, max: usize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| (v < max).then_some(v + 1)).is_ok()
}

impl Circuit {
    /// A request's slot, unless `max` are pending already.
    pub fn request(self: &Arc<Self>, max: usize) -> Option<Slot> {
        take(&self.pending, max).then(|| Slot(self.clone(), true))
    }

    /// An upstream connection's slot, unless `max` are open already.
    pub fn connection(self: &Arc<Self>, max: usize) -> Option<Slot> {
        take(&self.connections, max).then(|| Slot(self.clone(), false))
    }

    #[cfg(test)]
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_given_back() {
        let c = Arc::new(Circuit::default());
        let a = c.request(2).unwrap();
        let _b = c.request(2).unwrap();
        assert!(c.request(2).is_none(), "a third pending request overflows");
        drop(a);
        assert!(c.request(2).is_some());
        let conn = c.connection(1).unwrap();
        assert!(c.connection(1).is_none());
        assert_eq!(c.connections(), 1);
        drop(conn);
        assert_eq!(c.connections(), 0);
    }
}
