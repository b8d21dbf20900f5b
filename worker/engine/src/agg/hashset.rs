//! [`HashSet64`]: the exact set of 64-bit value hashes behind `countDistinct`, open addressing
//! indexed by the hashes themselves; its contents (not its layout) are all that results and
//! checkpoints see.

/// A set of 64-bit hashes: open addressing with linear probing, indexed by the hashes
/// themselves (they are uniformly distributed already), at most 3/4 full. `0` marks an empty
/// slot; the hash `0` itself is kept in a flag.
#[derive(Clone, Default)]
pub(super) struct HashSet64 {
    /// A power of two slots, or none.
    slots: Vec<u64>,
    len: usize,
    zero: bool,
}

impl HashSet64 {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let zero = self.zero.then_some(0);
        zero.into_iter()
            .chain(self.slots.iter().copied().filter(|h| *h != 0))
    }

    /// Where `h` (nonzero) is, or the empty slot where it would go; `None` without slots.
    #[inline]
    fn probe(&self, h: u64) -> Option<usize> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut i = h as usize & mask;
        // At most 3/4 full, so there is always an empty slot and this ends.
        loop {
            match self.slots.get(i) {
                Some(&x) if x != h && x != 0 => i = (i + 1) & mask,
                _ => return Some(i),
            }
        }
    }

    pub(super) fn contains(&self, h: u64) -> bool {
        if h == 0 {
            return self.zero;
        }
        self.probe(h)
            .and_then(|i| self.slots.get(i))
            .is_some_and(|x| *x == h)
    }

    /// Adds `h`; `true` if it was not there.
    #[inline]
    pub(super) fn insert(&mut self, h: u64) -> bool {
        if h == 0 {
            let new = !self.zero;
            self.zero = true;
            self.len += usize::from(new);
            return new;
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow(self.len + 1);
        }
        let Some(slot) = self.probe(h).and_then(|i| self.slots.get_mut(i)) else {
            return false;
        };
        if *slot == h {
            return false;
        }
        *slot = h;
        self.len += 1;
        true
    }

    /// Makes room for `n` more hashes, at most half full: bulk inserts (merges) are then cheap
    /// because most land in an empty slot at once.
    pub(super) fn reserve(&mut self, n: usize) {
        if (self.len + n) * 2 > self.slots.len() {
            self.grow((self.len + n) * 3 / 2);
        }
    }

    /// Rebuilds with room for `len` hashes.
    fn grow(&mut self, len: usize) {
        let size = (len * 4).div_ceil(3).next_power_of_two().max(8);
        let old = std::mem::replace(&mut self.slots, vec![0; size]);
        for h in old.into_iter().filter(|h| *h != 0) {
            if let Some(slot) = self.probe(h).and_then(|i| self.slots.get_mut(i)) {
                *slot = h;
            }
        }
    }

    /// Removes every hash, keeping the slots.
    pub(super) fn clear(&mut self) {
        if self.len > 0 {
            self.slots.fill(0);
        }
        self.len = 0;
        self.zero = false;
    }
}
