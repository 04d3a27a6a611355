//! Regression for a rumqttd race (patched in vendor/rumqttd, see PATCHES.md): a retained
//! message published between a client's SUBSCRIBE and the router's first read for it was
//! delivered twice, once from the retained store and once from the log. The shadow
//! service publishes deltas retained, so a heater subscribing while its delta changed
//! (e.g. right after a failover) got the same delta twice.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Client, Gateway};
use rumqttc::QoS;

const SUBSCRIBERS: usize = 100;
/// How long each subscriber listens; the publisher goes on meanwhile.
const LISTEN: Duration = Duration::from_millis(40);

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_gets_each_retained_publication_once() {
    let gateway = Gateway::start();
    let topic = "site/retained-race";
    let publisher = Client::connect(gateway.port, "retained-publisher").await;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let publishing = tokio::spawn(async move {
        // Bounded: stops when told, or after 200,000 publications.
        for n in 0..200_000_u32 {
            if *stopped.borrow_and_update() {
                break;
            }
            publisher
                .client
                .publish(topic, QoS::AtLeastOnce, true, n.to_string())
                .await
                .expect("publish");
            if n % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        publisher
    });
    let mut duplicated = Vec::new();
    let mut received = 0;
    for i in 0..SUBSCRIBERS {
        let mut subscriber = Client::connect(gateway.port, &format!("retained-sub-{i}")).await;
        subscriber.subscribe(topic).await;
        let mut seen = HashSet::new();
        let until = tokio::time::Instant::now() + LISTEN;
        while let Some(message) = subscriber
            .next_within(until.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            received += 1;
            if !seen.insert(message.payload.clone()) {
                duplicated.push((i, String::from_utf8_lossy(&message.payload).into_owned()));
            }
        }
        subscriber.disconnect().await;
    }
    let _ = stop.send(true);
    let publisher = publishing.await.expect("publisher");
    publisher.disconnect().await;
    assert!(received > SUBSCRIBERS, "the publisher was not publishing");
    assert!(duplicated.is_empty(), "delivered twice: {duplicated:?}");
}

/// rumqttd sent a new subscription at most its inflight window of retained messages and
/// dropped the rest: a dashboard following every heater's delta saw only some of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_wildcard_subscriber_gets_every_retained_message() {
    const TOPICS: usize = 500;
    let gateway = Gateway::start();
    let publisher = Client::connect(gateway.port, "retained-many").await;
    for n in 0..TOPICS {
        publisher
            .client
            .publish(
                format!("site/many/{n}"),
                QoS::AtLeastOnce,
                true,
                n.to_string(),
            )
            .await
            .expect("publish");
    }
    // The last one is in once a subscriber to it alone gets it.
    let mut probe = Client::connect(gateway.port, "retained-probe").await;
    probe.subscribe(&format!("site/many/{}", TOPICS - 1)).await;
    probe.expect(&format!("/{}", TOPICS - 1)).await;

    let mut dashboard = Client::connect(gateway.port, "retained-dashboard").await;
    dashboard.subscribe("site/many/+").await;
    let mut topics = HashSet::new();
    while let Some(message) = dashboard.next_within(Duration::from_secs(2)).await {
        assert!(message.retain, "{}", message.topic);
        assert!(
            topics.insert(message.topic.clone()),
            "twice: {}",
            message.topic
        );
        if topics.len() == TOPICS {
            break;
        }
    }
    assert_eq!(topics.len(), TOPICS);
}
