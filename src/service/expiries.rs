//! One timer for the whole gateway: when the next desired leaf of any shadow expires.
//!
//! A min-heap of `(epoch seconds, device id)`, one live entry per device: the earliest
//! expiry of its shadow when it was last stored. Entries go stale when a device's next
//! expiry moves (its leaf was rewritten, refused or the device deleted): they are
//! skipped when popped, or wake the service for a device with nothing due, which costs
//! one store read. Memory is bounded by the devices with a pending expiry plus the
//! stale entries, each of which falls due at the latest when its time comes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

#[derive(Debug, Default)]
pub struct Expiries {
    heap: BinaryHeap<Reverse<(u64, String)>>,
    /// The live entry of each device.
    scheduled: HashMap<String, u64>,
}

impl Expiries {
    /// Records a device's next expiry after its shadow was stored (`None`: nothing
    /// expires). Only an earlier time needs a new entry: a later one is found when the
    /// earlier entry falls due and the device is rescheduled.
    pub fn schedule(&mut self, device_id: &str, at: Option<u64>) {
        let Some(at) = at else {
            return;
        };
        if self
            .scheduled
            .get(device_id)
            .is_some_and(|&live| live <= at)
        {
            return;
        }
        self.scheduled.insert(device_id.to_owned(), at);
        self.heap.push(Reverse((at, device_id.to_owned())));
    }

    /// The earliest scheduled expiry.
    pub fn next(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the devices due at `now`; the caller expires their leaves and
    /// schedules each again with its shadow's next expiry.
    pub fn take_due(&mut self, now: u64) -> Vec<String> {
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, device_id))) = self.heap.pop() else {
                break;
            };
            if self.scheduled.get(&device_id) == Some(&at) {
                self.scheduled.remove(&device_id);
                due.push(device_id);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fall_due_in_time_order_once_each() {
        let mut expiries = Expiries::default();
        expiries.schedule("b", Some(20));
        expiries.schedule("a", Some(10));
        expiries.schedule("a", Some(30));
        expiries.schedule("c", None);
        assert_eq!(expiries.next(), Some(10));
        assert_eq!(expiries.take_due(9), Vec::<String>::new());
        assert_eq!(expiries.take_due(20), vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(expiries.next(), None);
    }

    #[test]
    fn an_earlier_expiry_replaces_the_live_entry_and_the_old_one_is_skipped() {
        let mut expiries = Expiries::default();
        expiries.schedule("a", Some(30));
        expiries.schedule("a", Some(10));
        assert_eq!(expiries.take_due(10), vec!["a".to_owned()]);
        assert_eq!(expiries.take_due(30), Vec::<String>::new());
        expiries.schedule("a", Some(40));
        assert_eq!(expiries.take_due(40), vec!["a".to_owned()]);
    }
}
