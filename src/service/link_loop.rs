//! The link loop: drains the gateway's internal link (device requests) and the uplink's
//! cloud changes (desired changes, claimed and released devices) into the shadow service,
//! in batches.
//!
//! One batch = every request the router has handed over so far plus every cloud change
//! waiting (up to [`MAX_BATCH`] requests). The service handles each, the batch is committed
//! with one fsync, and only then are the replies published and the writes handed to the
//! uplink — group commit, so a slow SD card costs one flush per batch, not one per request.
//!
//! The loop also wakes when the service's next desired expiry falls due; every batch
//! first expires what is due (`ShadowService::expire_due`), then serves its requests.
//!
//! The router stops feeding a link whose buffer is full and says so with
//! `Notification::Unschedule`; the loop must then `wake()` it or it would stall (and the
//! broker's commit log would eventually overwrite what the gateway never read).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rumqttd::local::LinkError;
use rumqttd::Notification;
use tokio::sync::watch;

use super::ShadowService;
use crate::broker::{BrokerError, GatewayLink};
use crate::cloud::FromCloud;
use crate::messages::{Outgoing, Replies};

/// Requests handled per commit at most; bounds reply latency under load.
const MAX_BATCH: usize = 512;

/// What one batch holds.
#[derive(Default)]
struct Batch {
    requests: Vec<(String, Bytes)>,
    cloud_changes: Vec<FromCloud>,
    unscheduled: bool,
}

impl Batch {
    fn add(&mut self, notification: Notification) {
        match notification {
            Notification::Forward(forward) => match std::str::from_utf8(&forward.publish.topic) {
                Ok(topic) => self
                    .requests
                    .push((topic.to_string(), forward.publish.payload)),
                Err(_) => tracing::warn!("dropped a publish with a non-UTF-8 topic"),
            },
            Notification::Unschedule => self.unscheduled = true,
            _ => {}
        }
    }
}

/// Serves requests until `stop` turns true; returns after the last batch was committed and
/// answered. The caller has subscribed the link to the service's request filters.
pub async fn run(
    mut link: GatewayLink,
    mut service: ShadowService,
    replies: Replies,
    mut stop: watch::Receiver<bool>,
    from_cloud: Option<flume::Receiver<FromCloud>>,
) -> Result<(), BrokerError> {
    let mut out: Vec<Outgoing> = Vec::new();
    loop {
        let mut batch = Batch::default();
        let expiry = until(service.next_expiry());
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
            () = expiry => {}
            notification = link.rx.next() => {
                if let Some(notification) = notification? {
                    batch.add(notification);
                }
            }
            change = next_cloud_change(from_cloud.as_ref()) => batch.cloud_changes.push(change),
        }
        // Deltas are timed from here: the first request or cloud change of the batch.
        let picked_up = Instant::now();
        // Then take only what is already there.
        while batch.requests.len() < MAX_BATCH {
            match link.rx.recv_deadline(Instant::now()) {
                Ok(Some(notification)) => batch.add(notification),
                Ok(None) => {}
                Err(LinkError::RecvTimeout(_)) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(from_cloud) = &from_cloud {
            batch
                .cloud_changes
                .extend(from_cloud.try_iter().take(MAX_BATCH));
        }
        serve_batch(&mut service, &replies, &batch, &mut out);
        // Timed before they are handed over, like the counters: a device may have its
        // delta (and read `/metrics`) before `publish_all` returns.
        let deltas = out
            .iter()
            .filter(|message| message.count.is_delta())
            .count();
        service.metrics.deltas_after(deltas, picked_up.elapsed());
        link.publish_all(out.drain(..))?;
        service.wake_uplink();
        if batch.unscheduled {
            link.rx.wake().await?;
        }
    }
}

/// Sleeps until `at` (epoch seconds); for ever without one.
async fn until(at: Option<u64>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(at).saturating_sub(now)).await;
}

async fn next_cloud_change(from_cloud: Option<&flume::Receiver<FromCloud>>) -> FromCloud {
    match from_cloud {
        Some(from_cloud) => match from_cloud.recv_async().await {
            Ok(change) => change,
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Handles a batch and commits it; on a store failure every request of the batch is
/// answered 500 instead (the device retries; shadow updates are idempotent merges) and the
/// batch's cloud changes are logged as not applied.
fn serve_batch(
    service: &mut ShadowService,
    replies: &Replies,
    batch: &Batch,
    out: &mut Vec<Outgoing>,
) {
    // Expiries first: a `get` in this batch must not show a value already due.
    let handled = service
        .expire_due(out)
        .and_then(|()| {
            batch
                .requests
                .iter()
                .try_for_each(|(topic, payload)| service.handle(topic, payload, out))
        })
        .and_then(|()| {
            batch
                .cloud_changes
                .iter()
                .try_for_each(|change| service.apply_from_cloud(change.clone(), out))
        })
        .and_then(|()| service.commit());
    if let Err(e) = handled {
        tracing::error!(
            error = %e,
            requests = batch.requests.len(),
            cloud_changes = batch.cloud_changes.len(),
            "could not store a batch; requests answered 500, cloud changes not applied"
        );
        // Their claims' answers were not applied: the parked requests go unanswered too
        // (the devices retry, and are claimed again).
        for change in &batch.cloud_changes {
            if let FromCloud::Claimed { device_id, .. } = change {
                service.drop_parked(device_id);
            }
        }
        out.clear();
        out.extend(
            batch
                .requests
                .iter()
                .filter_map(|(topic, _)| replies.internal_error(topic)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewayConfig;
    use crate::metrics::Metrics;
    use crate::service::ServiceSettings;
    use crate::store::ShadowStore;
    use crate::topics::{ShadowTopic, Topics};

    /// A batch whose store write fails is answered 500 request by request, and only those
    /// answers are counted: the replies built before the failure were never published.
    #[test]
    fn a_failed_batch_counts_only_its_error_replies() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ShadowStore::open(dir.path(), 1 << 20).expect("store");
        // An unreadable record makes the batch's second request fail in the store.
        store
            .db()
            .open_tree("shadows")
            .and_then(|tree| tree.insert("broken", &b"\xff not CBOR"[..]))
            .expect("corrupt record");
        let topics = Topics::new("iotsphere").expect("topics");
        let metrics = Metrics::default();
        let replies = Replies::new(topics.clone(), "gw-test");
        let settings = ServiceSettings::from_config(&GatewayConfig::default());
        let mut service =
            ShadowService::new(replies.clone(), metrics.clone(), store, settings, None);
        let batch = Batch {
            requests: vec![
                (
                    topics.shadow("h1", ShadowTopic::Reported),
                    Bytes::from_static(br#"{"state":{"temp":41}}"#),
                ),
                (
                    topics.shadow("broken", ShadowTopic::Get),
                    Bytes::from_static(b"{}"),
                ),
            ],
            ..Batch::default()
        };
        let mut out = Vec::new();
        serve_batch(&mut service, &replies, &batch, &mut out);
        // What the link does with each message it publishes.
        for message in &out {
            metrics.published(&message.count);
        }

        let rejected = [
            topics.shadow("h1", ShadowTopic::Rejected),
            topics.shadow("broken", ShadowTopic::Rejected),
        ];
        assert_eq!(
            out.iter().map(|m| &m.topic).collect::<Vec<_>>(),
            rejected.iter().collect::<Vec<_>>()
        );
        assert_eq!(metrics.message_totals().1, 2, "messages out");
        let codes: Vec<_> = metrics.recent_rejections().iter().map(|r| r.code).collect();
        assert_eq!(codes, [500, 500]);
        assert!(
            metrics
                .render(None, None, None)
                .contains("\niotsphere_shadow_updates_total 0\n"),
            "the report that was not stored is no shadow update"
        );
    }
}
