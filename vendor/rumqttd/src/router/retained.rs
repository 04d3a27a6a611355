// iotsphere patch: the retained store keeps who set each message, so that one identity
// cannot make the router hold more than `ClientLimits` allows (upstream kept any number
// of retained messages of any size from anyone). See PATCHES.md.
use std::collections::HashMap;
use std::time::Instant;

use super::logs::PublishData;
use crate::protocol::{matches, Publish, PublishProperties};
use crate::{ClientLimits, Limit, Topic};

/// Retained messages by topic, each with the identity that set it (`None`: one of the
/// embedding application's own links, which no limit applies to).
#[derive(Default)]
pub struct Retained {
    messages: HashMap<Topic, (PublishData, Option<String>)>,
    /// Per identity: its retained messages and their bytes.
    usage: HashMap<String, (usize, usize)>,
    /// Bytes of every message with an owner.
    owned_bytes: usize,
}

fn size(data: &PublishData) -> usize {
    data.publish.topic.len() + data.publish.payload.len()
}

impl Retained {
    /// Keeps `publish` as the retained message of `topic`, replacing the one before, unless
    /// `owner` would then hold more than `limits` allow.
    pub fn insert(
        &mut self,
        topic: Topic,
        data: PublishData,
        owner: Option<&str>,
        limits: &ClientLimits,
    ) -> Result<(), Limit> {
        let new_size = size(&data);
        if let Some(owner) = owner {
            let replaced = self
                .messages
                .get(&topic)
                .and_then(|(old, old_owner)| old_owner.as_ref().map(|o| (o, size(old))));
            let (mut count, mut bytes) = self.usage.get(owner).copied().unwrap_or_default();
            let mut total = self.owned_bytes;
            if let Some((old_owner, old_size)) = replaced {
                total -= old_size;
                if old_owner == owner {
                    count -= 1;
                    bytes -= old_size;
                }
            }
            if count + 1 > limits.max_retained {
                return Err(Limit::RetainedCount);
            }
            if bytes + new_size > limits.max_retained_bytes {
                return Err(Limit::RetainedBytes);
            }
            if total + new_size > limits.max_retained_total_bytes {
                return Err(Limit::RetainedTotal);
            }
        }
        self.remove(&topic);
        if let Some(owner) = owner {
            let usage = self.usage.entry(owner.to_string()).or_default();
            usage.0 += 1;
            usage.1 += new_size;
            self.owned_bytes += new_size;
        }
        self.messages
            .insert(topic, (data, owner.map(str::to_string)));
        Ok(())
    }

    pub fn remove(&mut self, topic: &str) {
        let Some((old, Some(owner))) = self.messages.remove(topic) else {
            return;
        };
        let old_size = size(&old);
        self.owned_bytes -= old_size;
        if let Some(usage) = self.usage.get_mut(&owner) {
            usage.0 -= 1;
            usage.1 -= old_size;
            if usage.0 == 0 {
                self.usage.remove(&owner);
            }
        }
    }

    /// The retained messages matching `filter`, after dropping expired ones (MQTT 5
    /// message expiry; what is left has its remaining time).
    pub fn matching(&mut self, filter: &str) -> Vec<(Publish, Option<PublishProperties>)> {
        let now = Instant::now();
        let mut expired = Vec::new();
        for (topic, (data, _)) in self.messages.iter_mut() {
            let Some(interval) = data
                .properties
                .as_mut()
                .and_then(|p| p.message_expiry_interval.as_mut())
            else {
                continue;
            };
            let spent = (now - data.timestamp).as_secs() as u32;
            if spent < *interval {
                // ref: https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112
                *interval -= spent;
                data.timestamp = now;
            } else {
                expired.push(topic.clone());
            }
        }
        for topic in expired {
            self.remove(&topic);
        }
        self.messages
            .iter()
            .filter(|(topic, _)| matches(topic, filter))
            .map(|(_, (data, _))| (data.publish.clone(), data.properties.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;

    fn message(topic: &str, bytes: usize) -> PublishData {
        let publish = Publish::new(topic.to_string(), QoS::AtMostOnce, vec![0u8; bytes]);
        (publish, None).into()
    }

    #[test]
    fn an_identity_holds_at_most_its_share() {
        let limits = ClientLimits {
            max_retained: 2,
            max_retained_bytes: 1000,
            max_retained_total_bytes: 1500,
            ..ClientLimits::default()
        };
        let mut store = Retained::default();
        let insert = |store: &mut Retained, topic: &str, bytes, owner| {
            store.insert(topic.into(), message(topic, bytes), owner, &limits)
        };
        assert_eq!(insert(&mut store, "a/1", 100, Some("alice")), Ok(()));
        assert_eq!(insert(&mut store, "a/2", 100, Some("alice")), Ok(()));
        assert_eq!(
            insert(&mut store, "a/3", 100, Some("alice")),
            Err(Limit::RetainedCount)
        );
        // Replacing one of its own is no new message.
        assert_eq!(insert(&mut store, "a/2", 500, Some("alice")), Ok(()));
        assert_eq!(
            insert(&mut store, "a/1", 600, Some("alice")),
            Err(Limit::RetainedBytes)
        );
        assert_eq!(insert(&mut store, "b/1", 800, Some("bob")), Ok(()));
        assert_eq!(
            insert(&mut store, "b/2", 300, Some("bob")),
            Err(Limit::RetainedTotal)
        );
        // The application's own links are not counted.
        assert_eq!(insert(&mut store, "gw/1", 10_000, None), Ok(()));
        // Taking over bob's topic frees bob's share.
        assert_eq!(insert(&mut store, "b/1", 10, Some("alice")), Err(Limit::RetainedCount));
        store.remove("a/1");
        assert_eq!(insert(&mut store, "b/1", 10, Some("alice")), Ok(()));
        assert!(!store.usage.contains_key("bob"));
        assert_eq!(store.matching("a/#").len(), 1);
        assert_eq!(store.matching("#").len(), 3);
    }
}
