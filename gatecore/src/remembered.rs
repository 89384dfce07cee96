//! Credentials verified lately, so a client's repeated requests skip the signature check:
//! the exact token → what it verified to. Bounded by starting over when full (an attacker
//! spraying tokens only empties it; what a hit is still checked for is the caller's).

use std::collections::HashMap;

pub struct Remembered<V> {
    entries: HashMap<Box<str>, V>,
    max: usize,
}

impl<V> Remembered<V> {
    /// At most `max` entries.
    pub fn new(max: usize) -> Remembered<V> {
        Remembered {
            entries: HashMap::new(),
            max,
        }
    }

    pub fn get(&self, token: &str) -> Option<&V> {
        self.entries.get(token)
    }

    pub fn put(&mut self, token: &str, value: V) {
        if self.entries.len() >= self.max {
            self.entries.clear();
        }
        self.entries.insert(token.into(), value);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn it_starts_over_when_full() {
        let mut r = super::Remembered::new(2);
        r.put("a", 1);
        r.put("b", 2);
        assert_eq!((r.get("a"), r.get("b")), (Some(&1), Some(&2)));
        r.put("c", 3);
        assert_eq!((r.get("a"), r.get("c")), (None, Some(&3)));
    }
}
