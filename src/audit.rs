//! What the `audit` log target writes, kept small whatever a client sends: long fields
//! (client id, username, topic — up to 64 KiB each from an unauthenticated CONNECT) are cut
//! to their first [`FIELD_CHARS`] characters with their length kept, and a condition that
//! repeats (a client over a limit, a flood) is logged once per episode, not once per event.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Characters of a field written as they are.
pub const FIELD_CHARS: usize = 64;

/// A field as the audit log shows it: `heater-1`, or `aaaa…(30000 bytes)`.
#[derive(Clone, Copy)]
pub struct Cut<'a>(pub &'a str);

impl fmt::Display for Cut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(FIELD_CHARS) {
            None => f.write_str(self.0),
            Some((end, _)) => write!(f, "{}…({} bytes)", &self.0[..end], self.0.len()),
        }
    }
}

impl fmt::Debug for Cut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Episodes of a repeating condition, per key: [`Episodes::starts`] says whether an
/// occurrence opens a new episode (nothing seen for the key within the quiet time).
/// Bounded: past `capacity` keys, those whose episode ended are forgotten, then all.
pub struct Episodes<K> {
    quiet: Duration,
    capacity: usize,
    last_seen: Mutex<HashMap<K, (Instant, u64)>>,
}

impl<K: Eq + Hash> Episodes<K> {
    pub fn new(quiet: Duration, capacity: usize) -> Self {
        Self {
            quiet,
            capacity,
            last_seen: Mutex::default(),
        }
    }

    /// Records an occurrence; `Some(n)` when it opens an episode, `n` being how many
    /// occurrences the key's previous episode had after its first (0 for a new key).
    pub fn starts(&self, key: K) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= self.capacity && !seen.contains_key(&key) {
            seen.retain(|_, (at, _)| now.duration_since(*at) < self.quiet);
            if seen.len() >= self.capacity {
                seen.clear();
            }
        }
        match seen.get_mut(&key) {
            Some((at, repeats)) if now.duration_since(*at) < self.quiet => {
                *at = now;
                *repeats += 1;
                None
            }
            Some((at, repeats)) => {
                let previous = *repeats;
                *at = now;
                *repeats = 0;
                Some(previous)
            }
            None => {
                seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_cut_with_their_length() {
        assert_eq!(Cut("heater-1").to_string(), "heater-1");
        let long = "x".repeat(30_000);
        assert_eq!(
            Cut(&long).to_string(),
            format!("{}…(30000 bytes)", "x".repeat(FIELD_CHARS))
        );
        // Cut on a character boundary.
        let wide = "é".repeat(100);
        assert_eq!(
            Cut(&wide).to_string(),
            format!("{}…(200 bytes)", "é".repeat(FIELD_CHARS))
        );
    }

    #[test]
    fn one_line_per_episode() {
        let episodes = Episodes::new(Duration::from_millis(50), 2);
        assert_eq!(episodes.starts("a"), Some(0));
        assert_eq!(episodes.starts("a"), None);
        assert_eq!(episodes.starts("a"), None);
        assert_eq!(episodes.starts("b"), Some(0));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            episodes.starts("a"),
            Some(2),
            "the last episode repeated twice"
        );
        // Full: keys whose episode ended make room.
        assert_eq!(episodes.starts("c"), Some(0));
    }
}
