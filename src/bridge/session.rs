//! The connection to the upstream broker: forwards the bridge's outbox in order and
//! applies what arrives, reconnecting with backoff.
//!
//! Exactly once, as far as QoS 1 allows: each connection gets a fresh rumqttc client and
//! event loop. rumqttc would otherwise retransmit its in-memory inflight publishes after a
//! reconnect while the outbox replays the same messages — duplicates. Here the outbox is
//! the only copy: a message leaves it on the upstream PUBACK, and a new connection resends
//! from the oldest message still in it, one in-order stream, at most [`WINDOW`] awaiting
//! their PUBACK. Only a message whose PUBACK was lost with the connection is sent twice
//! (QoS 1's at-least-once; the upstream subscriber sees the same payload again), and so is
//! one acknowledged just before a crash whose removal had not reached the disk yet
//! (removals are flushed when the stream catches up, or with the next flush of the store).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::mpsc;

use super::echo::Echoes;
use crate::auth::filter_matches;
use crate::backoff::Backoff;
use crate::broker::GatewayLink;
use crate::config::BridgeSection;
use crate::messages::{Count, Outgoing as LocalMessage};
use crate::outbox::{Outbox, Pending, ToBridge};
use crate::status::BridgeStatus;

/// Publishes awaiting their PUBACK at most.
const WINDOW: usize = 64;
/// rumqttc's packet ids run 1..=inflight; above `WINDOW`, so an id is free when reused.
const MAX_INFLIGHT: u16 = 100;
/// Requests (publishes, subscribes, acks) queued towards rumqttc's event loop.
const REQUEST_CAPACITY: usize = 256;
/// Events buffered from the event loop's task.
const EVENT_CAPACITY: usize = 256;
/// How often the outbox is looked at without being woken (expiry, missed wakeups).
const IDLE_CHECK: Duration = Duration::from_secs(1);

pub struct Session {
    options: MqttOptions,
    prefix: String,
    forward: Vec<String>,
    subscribe: Vec<String>,
    outbox: Outbox<ToBridge>,
    link: GatewayLink,
    status: BridgeStatus,
    echoes: Echoes,
    backoff: Backoff,
    /// The upstream broker acknowledged our subscriptions once in this process: afterwards
    /// they are renewed only when it lost our session (resubscribing would make it resend
    /// every retained message).
    subscribed: bool,
}

/// The messages of the current connection that were handed to rumqttc.
#[derive(Default)]
struct Inflight {
    /// Handed over, packet id not known yet (rumqttc reports ids in request order).
    unsent: VecDeque<Pending<ToBridge>>,
    sent: HashMap<u16, Pending<ToBridge>>,
    /// The newest message handed over: the next ones come after it.
    last_key: Option<sled::IVec>,
}

impl Inflight {
    fn len(&self) -> usize {
        self.unsent.len() + self.sent.len()
    }
}

impl Session {
    pub fn new(
        options: MqttOptions,
        config: &BridgeSection,
        outbox: Outbox<ToBridge>,
        link: GatewayLink,
        status: BridgeStatus,
    ) -> Self {
        Self {
            options,
            prefix: config.prefix.clone(),
            forward: config.forward.clone(),
            subscribe: config.subscribe.clone(),
            outbox,
            link,
            status,
            echoes: Echoes::default(),
            backoff: Backoff::new(
                Duration::from_millis(config.reconnect_min_ms),
                Duration::from_millis(config.reconnect_max_ms),
            ),
            subscribed: false,
        }
    }

    /// Runs for the life of the process.
    pub async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let reason = self.connection().await;
            if self.status.set_connected(false) {
                failures = 0;
            }
            failures += 1;
            let delay = self.backoff.next_delay();
            let retry_in_ms = delay.as_millis();
            if failures == 1 {
                tracing::warn!(error = %reason, retry_in_ms, "upstream broker unreachable; forwarded messages wait in the bridge's outbox");
            } else {
                tracing::debug!(error = %reason, retry_in_ms, "upstream broker still unreachable");
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection, until it fails; returns why.
    async fn connection(&mut self) -> String {
        let mut options = self.options.clone();
        options.set_inflight(MAX_INFLIGHT);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let (events_tx, mut events) = mpsc::channel(EVENT_CAPACITY);
        let poller = tokio::spawn(poll_events(eventloop, events_tx));
        let reason = self.serve(&client, &mut events).await;
        poller.abort();
        reason
    }

    async fn serve(
        &mut self,
        client: &AsyncClient,
        events: &mut mpsc::Receiver<Result<Event, ConnectionError>>,
    ) -> String {
        let mut inflight = Inflight::default();
        let mut connected = false;
        loop {
            if connected {
                if let Err(e) = self.fill_window(client, &mut inflight) {
                    return e;
                }
            }
            let window_open = connected && inflight.len() < WINDOW;
            tokio::select! {
                event = events.recv() => match event {
                    Some(Ok(event)) => {
                        if let Event::Incoming(Packet::ConnAck(ack)) = &event {
                            connected = true;
                            if let Err(e) = self.on_connected(client, ack.session_present) {
                                return e;
                            }
                        }
                        self.on_event(client, event, &mut inflight).await;
                    }
                    Some(Err(e)) => return e.to_string(),
                    None => return "the MQTT event loop ended".into(),
                },
                () = self.outbox.wait(IDLE_CHECK), if window_open => {}
            }
        }
    }

    fn on_connected(&mut self, client: &AsyncClient, session_present: bool) -> Result<(), String> {
        self.status.set_connected(true);
        self.backoff.reset();
        tracing::info!(
            session_present,
            queued = self.outbox.stats().items,
            "connected to the upstream broker"
        );
        if self.subscribed && session_present {
            return Ok(());
        }
        if self.subscribe.is_empty() {
            self.subscribed = true;
            return Ok(());
        }
        let filters = self
            .subscribe
            .iter()
            .map(|filter| SubscribeFilter::new(self.upstream_topic(filter), QoS::AtLeastOnce));
        client
            .try_subscribe_many(filters)
            .map_err(|e| e.to_string())
    }

    /// The SUBACK of our subscriptions (one SUBSCRIBE with every filter).
    fn on_suback(&mut self, codes: &[SubscribeReasonCode]) {
        self.subscribed = true;
        for (filter, code) in self.subscribe.iter().zip(codes) {
            if *code == SubscribeReasonCode::Failure {
                tracing::error!(
                    filter = %self.upstream_topic(filter),
                    "the upstream broker refused the subscription; nothing arrives from it"
                );
            }
        }
    }

    fn upstream_topic(&self, local: &str) -> String {
        format!("{}/{local}", self.prefix)
    }

    async fn on_event(&mut self, client: &AsyncClient, event: Event, inflight: &mut Inflight) {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(pending) = inflight.unsent.pop_front() {
                    inflight.sent.insert(pkid, pending);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                let Some(pending) = inflight.sent.remove(&ack.pkid) else {
                    return;
                };
                if let Err(e) = self.outbox.remove_item(&pending) {
                    tracing::error!(error = %e, "could not remove a forwarded message from the bridge's outbox");
                }
                self.status.forwarded();
                if inflight.len() == 0 {
                    // Caught up: make the removals durable, so a restart does not resend.
                    if let Err(e) = self.outbox.flush_removals().await {
                        tracing::warn!(error = %e, "could not flush the bridge's outbox");
                    }
                }
            }
            Event::Incoming(Packet::Publish(publish)) => self.on_upstream(client, &publish),
            Event::Incoming(Packet::SubAck(ack)) => self.on_suback(&ack.return_codes),
            _ => {}
        }
    }

    /// Hands the next messages of the outbox to rumqttc, up to the window.
    fn fill_window(&mut self, client: &AsyncClient, inflight: &mut Inflight) -> Result<(), String> {
        let room = WINDOW.saturating_sub(inflight.len());
        let next = self
            .outbox
            .next_items_after(inflight.last_key.as_deref(), room)
            .map_err(|e| format!("the bridge's outbox: {e}"))?;
        for pending in next {
            inflight.last_key = Some(pending.key.clone());
            let ToBridge::Forward(message) = &pending.entry.write;
            client
                .try_publish(
                    self.upstream_topic(&message.topic),
                    QoS::AtLeastOnce,
                    false,
                    message.payload.clone(),
                )
                .map_err(|e| e.to_string())?;
            if self
                .subscribe
                .iter()
                .any(|f| filter_matches(f, &message.topic))
            {
                self.echoes.expect(&message.topic, &message.payload);
            }
            inflight.unsent.push_back(pending);
        }
        Ok(())
    }

    /// Applies an upstream message, then acknowledges it upstream.
    fn on_upstream(&mut self, client: &AsyncClient, publish: &rumqttc::Publish) {
        if !self.apply_upstream(&publish.topic, &publish.payload) {
            return;
        }
        if let Err(e) = client.try_ack(publish) {
            tracing::warn!(error = %e, "could not acknowledge an upstream message");
        }
    }

    /// Publishes an upstream message locally; false when it must not be acknowledged yet
    /// (the local broker is gone: the upstream broker will send it again).
    fn apply_upstream(&mut self, topic: &str, payload: &[u8]) -> bool {
        let local = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|local| self.subscribe.iter().any(|f| filter_matches(f, local)));
        let Some(local) = local else {
            tracing::warn!(
                topic,
                "ignored an upstream message outside the bridge's subscriptions"
            );
            return true;
        };
        if self.forward.iter().any(|f| filter_matches(f, local))
            && self.echoes.is_echo(local, payload)
        {
            tracing::debug!(topic, "dropped the echo of a forwarded message");
            return true;
        }
        let message = LocalMessage {
            topic: local.to_string(),
            payload: payload.to_vec(),
            retain: false,
            count: Count::Nothing,
        };
        match self.link.publish_all([message]) {
            Ok(()) => {
                self.status.received();
                true
            }
            Err(e) => {
                tracing::error!(topic, error = %e, "could not publish an upstream message locally");
                false
            }
        }
    }
}

/// Drives rumqttc's event loop on its own task (its `poll` is not cancel-safe in a
/// `select!`); ends after the first error.
async fn poll_events(
    mut eventloop: EventLoop,
    events: mpsc::Sender<Result<Event, ConnectionError>>,
) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if events.send(event).await.is_err() || failed {
            return;
        }
    }
}
