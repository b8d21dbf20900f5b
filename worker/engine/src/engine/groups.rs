//! [`Groups`]: group keys interned once, with a count of the pieces of state that hold each; a
//! key is freed with the last of them, so memory follows the open windows, not the history.

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// Interned group keys with a count of the state entries holding each, so a group's key is
/// stored once however many windows it has open, and freed with its last window.
///
/// Keys live back to back in one arena (no allocation per group); the table holds only ids. The
/// arena is compacted when more than half of it belongs to freed groups.
pub(super) struct Groups {
    table: HashTable<u32>,
    spans: Vec<(u32, u32)>,
    refs: Vec<u32>,
    arena: Vec<u8>,
    free: Vec<u32>,
    garbage: usize,
    hasher: foldhash::fast::RandomState,
}

impl Groups {
    pub(super) fn new() -> Groups {
        Groups {
            table: HashTable::new(),
            spans: Vec::new(),
            refs: Vec::new(),
            arena: Vec::new(),
            free: Vec::new(),
            garbage: 0,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn span_of<'a>(spans: &[(u32, u32)], arena: &'a [u8], id: u32) -> &'a [u8] {
        let (at, len) = spans[id as usize];
        &arena[at as usize..(at + len) as usize]
    }

    pub(super) fn key(&self, id: u32) -> &[u8] {
        Self::span_of(&self.spans, &self.arena, id)
    }

    /// The id of `key` if it is interned.
    pub(super) fn find(&self, key: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        self.table
            .find(hash, |id| {
                Self::span_of(&self.spans, &self.arena, *id) == key
            })
            .copied()
    }

    #[inline]
    pub(super) fn intern(&mut self, key: &[u8]) -> u32 {
        let hash = self.hasher.hash_one(key);
        let Groups {
            table,
            spans,
            refs,
            arena,
            free,
            hasher,
            ..
        } = self;
        if let Some(id) = table.find(hash, |id| Self::span_of(spans, arena, *id) == key) {
            return *id;
        }
        let span = (arena.len() as u32, key.len() as u32);
        arena.extend_from_slice(key);
        let id = match free.pop() {
            Some(id) => {
                spans[id as usize] = span;
                refs[id as usize] = 0;
                id
            }
            None => {
                spans.push(span);
                refs.push(0);
                (spans.len() - 1) as u32
            }
        };
        table.insert_unique(hash, id, |id| {
            hasher.hash_one(Self::span_of(spans, arena, *id))
        });
        id
    }

    #[inline]
    pub(super) fn retain(&mut self, id: u32) {
        self.refs[id as usize] += 1;
    }

    pub(super) fn release(&mut self, id: u32) {
        let r = &mut self.refs[id as usize];
        *r = r.saturating_sub(1);
        if *r > 0 {
            return;
        }
        let hash = self.hasher.hash_one(self.key(id));
        if let Ok(entry) = self.table.find_entry(hash, |x| *x == id) {
            entry.remove();
        }
        self.garbage += self.spans[id as usize].1 as usize;
        self.spans[id as usize] = (0, 0);
        self.free.push(id);
        if self.garbage > 4096 && self.garbage * 2 > self.arena.len() {
            self.compact();
        }
    }

    /// Rewrite the arena with live keys only.
    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for (span, refs) in self.spans.iter_mut().zip(&self.refs) {
            if *refs > 0 {
                let (at, len) = *span;
                *span = (arena.len() as u32, len);
                arena.extend_from_slice(&self.arena[at as usize..(at + len) as usize]);
            }
        }
        self.arena = arena;
        self.garbage = 0;
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// Drop `id` if nothing holds it (it was interned only to be looked at).
    pub(super) fn forget_if_unused(&mut self, id: u32) {
        if self.refs[id as usize] == 0 {
            self.release(id);
        }
    }
}
