//! Replay marks: per input partition, the smallest offset held in a piece of state and the
//! partition's largest event time before it, which is where a replay must start to rebuild it.

/// Where a replay must start to rebuild a piece of state: per input partition, the smallest
/// offset of a record in it, and the partition's largest event time before that record.
///
/// Offsets of one partition arrive in increasing order, so the first record of a partition in a
/// pane or session is normally its smallest; the minimum is kept anyway.
#[derive(Debug, Default, Clone)]
pub(super) struct Marks {
    /// The first partition's mark, inline: with one engine per partition (the runtime) there is
    /// no other, and a session then costs no allocation for its marks.
    first: Option<Mark>,
    more: Vec<Mark>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) max_before: i64,
}

impl Marks {
    pub(super) fn one(m: Mark) -> Marks {
        Marks {
            first: Some(m),
            more: Vec::new(),
        }
    }

    #[inline]
    pub(super) fn note(&mut self, m: Mark) {
        let keep_lowest = |x: &mut Mark| {
            if m.offset < x.offset {
                *x = m;
            }
        };
        match &mut self.first {
            None => self.first = Some(m),
            Some(x) if x.partition == m.partition => keep_lowest(x),
            Some(_) => match self.more.iter_mut().find(|x| x.partition == m.partition) {
                Some(x) => keep_lowest(x),
                None => self.more.push(m),
            },
        }
    }

    pub(super) fn merge(&mut self, other: &Marks) {
        for m in other.first.iter().chain(&other.more) {
            self.note(*m);
        }
    }

    pub(super) fn get(&self, partition: i32) -> Option<Mark> {
        self.first
            .iter()
            .chain(&self.more)
            .find(|m| m.partition == partition)
            .copied()
    }
}
