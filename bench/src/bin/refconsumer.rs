//! `refconsumer`: the reference the gateway's end-to-end ingest is measured against — what
//! a user would build instead of the gateway: a stock broker (mosquitto) plus a small
//! consumer that subscribes to every device's telemetry with rumqttc and writes the
//! readings to MongoDB with the official driver, in `insertMany` batches.
//!
//! It stores the fields the gateway stores (`deviceId`, `kind`, `value`, `seq`, `unit`,
//! `ts`), so `loadgen fanin --mongo` checks its readings exactly like the gateway's. It
//! runs until the broker closes, SIGINT/SIGTERM, or `--deadline` seconds, then writes what
//! it holds and prints one JSON line of counters on stdout.
//!
//! Deliberately plain, as a user's first version would be: QoS 1 with rumqttc's automatic
//! PUBACKs (so a reading is acknowledged before it is in MongoDB: the reference gets the
//! benefit of the doubt on durability), one batch in flight at a time.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::ClientOptions;
use mongodb::Collection;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(about = "mosquitto + this consumer: the reference for the gateway's ingest")]
struct Args {
    /// The broker (loopback only).
    #[arg(long)]
    broker: std::net::SocketAddr,
    /// MongoDB URI.
    #[arg(long)]
    mongo: String,
    #[arg(long, default_value = "iotsphere")]
    database: String,
    /// Topic root: subscribes to `ROOT/devices/+/telemetry/#`.
    #[arg(long, default_value = "iotsphere")]
    root: String,
    /// Most readings per `insertMany`.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// A partial batch is written after this many milliseconds.
    #[arg(long, default_value_t = 20)]
    flush_ms: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 300)]
    deadline: u64,
}

/// Readings buffered between the MQTT loop and the writer; the MQTT loop waits beyond it.
const QUEUE: usize = 10_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.broker.ip().is_loopback(),
        "--broker must be a loopback address"
    );
    let options = ClientOptions::parse(&args.mongo)
        .await
        .with_context(|| format!("--mongo {}", args.mongo))?;
    let telemetry = mongodb::Client::with_options(options)?
        .database(&args.database)
        .collection::<Document>("telemetry");

    let mut mqtt = MqttOptions::new(
        format!("refconsumer-{}", std::process::id()),
        args.broker.ip().to_string(),
        args.broker.port(),
    );
    mqtt.set_keep_alive(Duration::from_secs(30));
    mqtt.set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut eventloop) = AsyncClient::new(mqtt, 100);
    client
        .subscribe(
            format!("{}/devices/+/telemetry/#", args.root),
            QoS::AtLeastOnce,
        )
        .await?;

    let (tx, rx) = mpsc::channel(QUEUE);
    let writer = tokio::spawn(write_batches(
        telemetry,
        rx,
        args.batch.max(1),
        Duration::from_millis(args.flush_ms),
    ));
    let deadline = tokio::time::sleep(Duration::from_secs(args.deadline));
    tokio::pin!(deadline);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (mut received, mut unreadable) = (0u64, 0u64);
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = &mut deadline => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                match reading(&args.root, &publish.topic, &publish.payload) {
                    Some(document) => {
                        received += 1;
                        if tx.send(document).await.is_err() {
                            break;
                        }
                    }
                    None => unreadable += 1,
                }
            }
            // run.sh starts the publishers once this is on stderr.
            Ok(Event::Incoming(Packet::SubAck(_))) => eprintln!("refconsumer: subscribed"),
            Ok(_) => {}
            Err(e) => {
                eprintln!("refconsumer: MQTT: {e}");
                break;
            }
        }
    }
    drop(tx);
    let (stored, batches, failed) = writer.await?;
    println!(
        "{}",
        serde_json::json!({
            "received": received,
            "unreadable": unreadable,
            "stored": stored,
            "batches": batches,
            "failed_batches": failed,
        })
    );
    Ok(())
}

/// The document a reading becomes, or `None` if the topic or the payload is not a reading.
fn reading(root: &str, topic: &str, payload: &[u8]) -> Option<Document> {
    let rest = topic.strip_prefix(root)?.strip_prefix("/devices/")?;
    let (device_id, kind) = rest.split_once("/telemetry/")?;
    let json: Value = serde_json::from_slice(payload).ok()?;
    let value = mongodb::bson::to_bson(json.get("value")?).ok()?;
    let mut document = doc! {
        "deviceId": device_id,
        "kind": kind,
        "value": value,
        "ts": DateTime::now(),
    };
    if let Some(seq) = json.get("seq").and_then(Value::as_i64) {
        document.insert("seq", seq);
    }
    if let Some(unit) = json.get("unit").and_then(Value::as_str) {
        document.insert("unit", unit);
    }
    Some(document)
}

/// Writes what arrives in batches of at most `batch`, a partial one after `flush`; returns
/// (readings stored, batches written, batches that failed) once the channel closed.
async fn write_batches(
    telemetry: Collection<Document>,
    mut rx: mpsc::Receiver<Document>,
    batch: usize,
    flush: Duration,
) -> (u64, u64, u64) {
    let (mut stored, mut batches, mut failed) = (0u64, 0u64, 0u64);
    let mut pending = Vec::with_capacity(batch);
    let mut open = true;
    while open {
        match rx.recv().await {
            Some(document) => pending.push(document),
            None => open = false,
        }
        let until = Instant::now() + flush;
        while open && pending.len() < batch {
            match tokio::time::timeout_at(until.into(), rx.recv()).await {
                Ok(Some(document)) => pending.push(document),
                Ok(None) => open = false,
                Err(_) => break,
            }
        }
        if pending.is_empty() {
            continue;
        }
        let n = pending.len() as u64;
        match telemetry
            .insert_many(pending.drain(..))
            .ordered(false)
            .await
        {
            Ok(_) => stored += n,
            Err(e) => {
                eprintln!("refconsumer: insertMany of {n}: {e}");
                failed += 1;
            }
        }
        batches += 1;
    }
    (stored, batches, failed)
}
