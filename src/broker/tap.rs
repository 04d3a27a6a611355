//! What wants to see the publishes of the broker: the ingest of readings, the bridge's
//! capture of `forward` topics, the alert feed. The hook (`broker::hook`) parses each
//! PUBLISH once and hands the parsed form ([`Seen`]) to every [`Tap`], in the router,
//! before the message is routed or acknowledged.
//!
//! Durability: a tap that stores something a device expects to be on disk once it gets
//! its PUBACK says so; the hook then flushes the gateway's sled database once per router
//! iteration, before the acknowledgements go out — one fsync however many taps wrote.

use bytes::Bytes;

use crate::topics::Route;

/// A PUBLISH (or a will that fired) past the ACL, parsed once.
pub struct Seen<'a> {
    pub client_id: &'a str,
    /// Published by one of the gateway's own links (`iotsphere:` client ids).
    pub internal: bool,
    pub topic: &'a str,
    /// The topic in the gateway's hierarchy; `None` for any other topic.
    pub route: Option<Route<'a>>,
    pub payload: &'a Bytes,
    pub qos: u8,
}

/// Sees what the broker accepts.
pub trait Tap: Send + Sync {
    /// A publication the broker accepted. True when the tap wrote to the gateway's sled
    /// database something that must be on disk before the router acknowledges it.
    fn on_publish(&self, seen: &Seen<'_>) -> bool;

    /// A device connected (`true`) or disconnected; the hook decides who is a device.
    fn on_connection(&self, _device_id: &str, _connected: bool) {}

    /// Once per router iteration, after the hook's flush, before acknowledgements go out.
    fn before_acks(&self) {}
}
