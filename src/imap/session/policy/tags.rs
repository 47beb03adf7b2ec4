//! The tags of the client's commands in flight: a few slots searched in order, and a hash map
//! only for a client that pipelines many.
//!
//! Most sessions have one command in flight at a time; hashing its tag with SipHash on the way
//! out and twice on the way back was ~560 instructions of a NOOP's ~15,000 (issue 19). The
//! slots keep their tag buffers when freed, so a command's tag is no allocation either. Beyond
//! [`SLOTS`] tags the rest go to a `HashMap` with its random keys, so that a client pipelining
//! thousands of commands costs no quadratic search (and chosen tags cannot make it one).

use std::collections::HashMap;

/// Tags kept in slots before the map takes the rest.
const SLOTS: usize = 8;

/// A map from tag to `V`.
#[derive(Debug)]
pub(super) struct Tags<V> {
    /// `slots[..used]` are in flight; those after keep their buffers for the next tags.
    slots: Vec<(Vec<u8>, V)>,
    used: usize,
    more: HashMap<Vec<u8>, V>,
}

impl<V> Default for Tags<V> {
    fn default() -> Self {
        Tags { slots: Vec::new(), used: 0, more: HashMap::new() }
    }
}

impl<V: Default> Tags<V> {
    pub fn is_empty(&self) -> bool {
        self.used == 0 && self.more.is_empty()
    }

    pub fn len(&self) -> usize {
        self.used + self.more.len()
    }

    fn slot(&self, tag: &[u8]) -> Option<usize> {
        self.slots[..self.used].iter().position(|(t, _)| t == tag)
    }

    pub fn contains_key(&self, tag: &[u8]) -> bool {
        self.slot(tag).is_some() || (!self.more.is_empty() && self.more.contains_key(tag))
    }

    pub fn get_mut(&mut self, tag: &[u8]) -> Option<&mut V> {
        match self.slot(tag) {
            Some(i) => Some(&mut self.slots[i].1),
            None if self.more.is_empty() => None,
            None => self.more.get_mut(tag),
        }
    }

    /// The value for `tag`, a default one added if it has none.
    pub fn entry(&mut self, tag: &[u8]) -> &mut V {
        if let Some(i) = self.slot(tag) {
            return &mut self.slots[i].1;
        }
        if self.used < SLOTS && (self.more.is_empty() || !self.more.contains_key(tag)) {
            let i = self.used;
            if i == self.slots.len() {
                // One slot more at a time: most sessions never have a second command in flight.
                self.slots.reserve_exact(1);
                self.slots.push((tag.to_vec(), V::default()));
            } else {
                let (t, v) = &mut self.slots[i];
                t.clear();
                t.extend_from_slice(tag);
                *v = V::default();
            }
            self.used += 1;
            return &mut self.slots[i].1;
        }
        self.more.entry(tag.to_vec()).or_default()
    }

    pub fn remove(&mut self, tag: &[u8]) {
        match self.slot(tag) {
            Some(i) => {
                self.used -= 1;
                self.slots.swap(i, self.used);
            }
            None => drop(self.more.remove(tag)),
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.slots[..self.used].iter().map(|(_, v)| v).chain(self.more.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_tags_in_slots_many_in_the_map() {
        let mut tags: Tags<u32> = Tags::default();
        assert!(tags.is_empty());
        for i in 0..20u32 {
            *tags.entry(format!("t{i}").as_bytes()) += i + 1;
        }
        assert_eq!(tags.len(), 20);
        assert_eq!(tags.more.len(), 20 - SLOTS);
        *tags.entry(b"t3") += 100;
        *tags.entry(b"t15") += 100;
        assert_eq!(tags.get_mut(b"t3"), Some(&mut 104));
        assert_eq!(tags.get_mut(b"t15"), Some(&mut 116));
        assert!(tags.contains_key(b"t19") && !tags.contains_key(b"t20"));
        tags.remove(b"t0");
        tags.remove(b"t19");
        assert!(!tags.contains_key(b"t0") && !tags.contains_key(b"t19"));
        assert_eq!(tags.len(), 18);
        assert_eq!(tags.values().count(), 18);
        // A freed slot is used again, its buffer kept.
        *tags.entry(b"new") += 1;
        assert_eq!(tags.used, SLOTS);
        for i in 1..19u32 {
            tags.remove(format!("t{i}").as_bytes());
        }
        tags.remove(b"new");
        assert!(tags.is_empty());
        assert_eq!(tags.slots.len(), SLOTS, "buffers kept for the next tags");
        assert_eq!(tags.get_mut(b"t1"), None);
    }
}
