//! Echoes of our own messages. A topic that matches both `forward` and `subscribe` is
//! published upstream by the bridge and, since MQTT 3.1.1 has no "no local" option, the
//! upstream broker sends it straight back. Each forwarded message on such a topic is
//! remembered (a fingerprint, for a while) and its one echo is dropped instead of being
//! applied locally a second time.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// Echoes remembered at most (older ones are forgotten first).
const MAX_EXPECTED: usize = 10_000;
/// An echo that has not come back by then is not waited for any longer.
const ECHO_WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Echoes {
    expected: VecDeque<(u64, Instant)>,
}

impl Echoes {
    /// We published this upstream on a topic we also subscribe to.
    pub fn expect(&mut self, topic: &str, payload: &[u8]) {
        let now = Instant::now();
        self.forget_old(now);
        if self.expected.len() == MAX_EXPECTED {
            self.expected.pop_front();
        }
        self.expected.push_back((fingerprint(topic, payload), now));
    }

    /// Whether an upstream message is the echo of one we sent (it is then forgotten).
    pub fn is_echo(&mut self, topic: &str, payload: &[u8]) -> bool {
        self.forget_old(Instant::now());
        let print = fingerprint(topic, payload);
        match self.expected.iter().position(|(p, _)| *p == print) {
            Some(index) => {
                self.expected.remove(index);
                true
            }
            None => false,
        }
    }

    fn forget_old(&mut self, now: Instant) {
        while self
            .expected
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) > ECHO_WINDOW)
        {
            self.expected.pop_front();
        }
    }
}

fn fingerprint(topic: &str, payload: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    topic.hash(&mut hasher);
    payload.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_forwarded_message_cancels_one_echo() {
        let mut echoes = Echoes::default();
        echoes.expect("a/desired", b"{\"x\":1}");
        echoes.expect("a/desired", b"{\"x\":1}");
        assert!(
            !echoes.is_echo("a/desired", b"{\"x\":2}"),
            "another payload"
        );
        assert!(!echoes.is_echo("b/desired", b"{\"x\":1}"), "another topic");
        assert!(echoes.is_echo("a/desired", b"{\"x\":1}"));
        assert!(echoes.is_echo("a/desired", b"{\"x\":1}"));
        assert!(
            !echoes.is_echo("a/desired", b"{\"x\":1}"),
            "a third copy is the cloud's own"
        );
    }
}
