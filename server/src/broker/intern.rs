//! [`Interner`]: reference-counted `u32` handles for values many jobs share (job names,
//! retry policies), so a job carries 4 bytes instead of a `String` or a 40-byte struct.
//!
//! Counted, so that a client naming every job differently (`email-1`, `email-2`, ...) does
//! not leak: a value is forgotten, and its slot reused, when its last job leaves the core.
//! Queue names are not interned here: the broker keeps its own name -> slot index and free
//! list for queues (see `mod.rs`).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug)]
pub(crate) struct Interner<T> {
    index: HashMap<T, u32>,
    /// The value and its count of holders; `None` for a free slot.
    slots: Vec<Option<(T, u32)>>,
    free: Vec<u32>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Interner { index: HashMap::new(), slots: Vec::new(), free: Vec::new() }
    }
}

impl<T: Hash + Eq + Clone> Interner<T> {
    /// The handle of `value`, taking one reference; `make` builds the owned value the first
    /// time it is seen.
    pub(crate) fn acquire<Q>(&mut self, value: &Q, make: impl FnOnce() -> T) -> u32
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(&handle) = self.index.get(value) {
            if let Some((_, refs)) = &mut self.slots[handle as usize] {
                *refs += 1;
            }
            return handle;
        }
        let owned = make();
        let handle = match self.free.pop() {
            Some(h) => {
                self.slots[h as usize] = Some((owned.clone(), 1));
                h
            }
            None => {
                // More than 4 billion distinct live values would need more memory than the
                // core is ever given; saturating keeps this total without a panic path.
                let h = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Some((owned.clone(), 1)));
                h
            }
        };
        self.index.insert(owned, handle);
        handle
    }

    /// Takes one more reference on a live handle (a holder that has no value to look up by).
    pub(crate) fn retain(&mut self, handle: u32) {
        if let Some(Some((_, refs))) = self.slots.get_mut(handle as usize) {
            *refs += 1;
        }
    }

    /// Drops one reference; the value is forgotten with its last one.
    pub(crate) fn release(&mut self, handle: u32) {
        let Some(slot) = self.slots.get_mut(handle as usize) else { return };
        let Some((_, refs)) = slot else { return };
        *refs -= 1;
        if *refs == 0 {
            if let Some((value, _)) = slot.take() {
                self.index.remove(&value);
            }
            self.free.push(handle);
        }
    }

    /// The value behind a live handle.
    pub(crate) fn get(&self, handle: u32) -> Option<&T> {
        self.slots.get(handle as usize)?.as_ref().map(|(v, _)| v)
    }

    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn counts_references_and_reuses_slots() {
        let mut names: Interner<Arc<str>> = Interner::default();
        let a = names.acquire("a", || Arc::from("a"));
        let b = names.acquire("b", || Arc::from("b"));
        assert_eq!(names.acquire("a", || Arc::from("a")), a);
        assert_ne!(a, b);
        names.release(a);
        assert_eq!(names.get(a).map(|s| &**s), Some("a"), "one holder left");
        names.release(a);
        assert_eq!(names.get(a), None);
        assert_eq!(names.live(), 1);
        let c = names.acquire("c", || Arc::from("c"));
        assert_eq!(c, a, "freed slot is reused");
        assert_eq!(names.get(c).map(|s| &**s), Some("c"));
        // Releasing unknown or already free handles is harmless.
        names.release(99);
        names.release(b);
        names.release(b);
        assert_eq!(names.live(), 1);
    }
}
