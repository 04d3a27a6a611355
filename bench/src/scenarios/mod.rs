//! The scenarios, one per file, and what they share: the run context, device ids and
//! topics, reading a delta's setpoint, and closing connections cleanly.

pub mod fanin;
pub mod idle;
pub mod reading;
pub mod roundtrip;
pub mod storm;

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::mqtt::{ConnectOptions, Connection, Incoming};
use crate::report::Errors;
use crate::stats::now_ns;

/// How long a closing client waits for the broker to close after DISCONNECT.
pub const CLOSE_DRAIN: Duration = Duration::from_secs(5);

/// What every scenario gets from the command line.
pub struct Ctx {
    pub connect: ConnectOptions,
    pub root: String,
    /// Prefix of every client and device id of this run.
    pub prefix: String,
    /// The hard deadline of the run.
    pub deadline: Instant,
    pub connect_concurrency: usize,
    pub pid: Option<u32>,
}

impl Ctx {
    pub fn device_id(&self, kind: &str, i: usize) -> String {
        format!("{}{kind}{i}", self.prefix)
    }

    /// `ROOT/devices/ID/shadow/KIND`.
    pub fn shadow_topic(&self, device_id: &str, kind: &str) -> String {
        format!("{}/devices/{device_id}/shadow/{kind}", self.root)
    }

    pub fn past_deadline(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// The desired request every scenario sends: one setpoint.
pub fn desired_payload(target_temp: u32) -> Vec<u8> {
    format!(r#"{{"state":{{"targetTemp":{target_temp}}}}}"#).into_bytes()
}

#[derive(Deserialize)]
struct Envelope {
    payload: DeltaPayload,
}

#[derive(Deserialize)]
struct DeltaPayload {
    state: DeltaState,
}

#[derive(Deserialize)]
struct DeltaState {
    #[serde(rename = "targetTemp")]
    target_temp: Option<f64>,
}

/// The `targetTemp` of a delta publication (the gateway's JSON envelope); `None` for an
/// empty payload ("nothing pending") or anything else.
pub fn delta_target_temp(payload: &[u8]) -> Option<f64> {
    serde_json::from_slice::<Envelope>(payload)
        .ok()?
        .payload
        .state
        .target_temp
}

/// A delta publication as a device received it.
#[derive(Debug, Clone, Copy)]
pub struct DeltaSeen {
    pub device: usize,
    /// The setpoint in it; `None` for an empty ("nothing pending") or foreign payload.
    pub target_temp: Option<f64>,
    pub at_ns: u64,
}

/// A device's life after it subscribed to its delta: acknowledge and report every delta
/// until `stop`, then DISCONNECT and drain.
pub async fn listen_deltas(
    device: usize,
    mut conn: Connection,
    seen: mpsc::UnboundedSender<DeltaSeen>,
    mut stop: watch::Receiver<bool>,
) -> Errors {
    let mut errors = Errors::default();
    loop {
        let packet = tokio::select! {
            packet = conn.read() => packet,
            _ = stop.changed() => break,
        };
        match packet {
            Ok(Some(Incoming::Publish(p))) => {
                let at_ns = now_ns();
                if p.qos > 0 {
                    conn.queue_puback(p.pkid);
                    if let Err(e) = conn.flush().await {
                        errors.push(format!("device {device}: puback: {e}"));
                        return errors;
                    }
                }
                let target_temp = delta_target_temp(&p.payload);
                // The receiver lives until every device stopped.
                let _ = seen.send(DeltaSeen {
                    device,
                    target_temp,
                    at_ns,
                });
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                errors.push(format!("device {device}: the broker closed the connection"));
                return errors;
            }
            Err(e) => {
                errors.push(format!("device {device}: {e:#}"));
                return errors;
            }
        }
    }
    if let Err(e) = conn.close(CLOSE_DRAIN).await {
        errors.push(format!("device {device}: close: {e:#}"));
    }
    errors
}

/// Closes connections (DISCONNECT, then read until the broker closes), all at once.
pub async fn close_all(conns: Vec<Connection>) -> Errors {
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        tasks.spawn(conn.close(CLOSE_DRAIN));
    }
    let mut errors = Errors::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => errors.push(format!("close: {e:#}")),
            Err(e) => errors.push(format!("close task: {e}")),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_setpoint_of_a_gateway_delta() {
        let delta = br#"{"metadata":{"messageId":"x","topic":"t","messageType":"shadow.delta"},
            "payload":{"state":{"targetTemp":60},"metadata":{"targetTemp":{"timestamp":1}},"version":2}}"#;
        assert_eq!(delta_target_temp(delta), Some(60.0));
        assert_eq!(delta_target_temp(b""), None);
        assert_eq!(delta_target_temp(b"{\"payload\":{\"state\":{}}}"), None);
        assert_eq!(
            desired_payload(42),
            br#"{"state":{"targetTemp":42}}"#.to_vec()
        );
    }
}
