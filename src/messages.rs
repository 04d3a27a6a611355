//! Every publication of the gateway, built in one place: topic, envelope (docs/DESIGN.md
//! §5) and encoding — shadow replies, commands, alerts, notifications, system and batch
//! status. Plain data (serde only, no I/O): the shadow service, the alert task, the system
//! task and the uplink's command sink all build their messages here.
//!
//! Building a message counts nothing: a message may be built and then not published (a
//! batch whose store write fails is answered 500 instead). Each [`Outgoing`] says what it
//! adds to the counters ([`Count`]), and the broker link counts it when it publishes it.

use serde::Serialize;

use crate::alert_event::AlertEvent;
use crate::codec::{self, Encoding, Envelope, EnvelopeMetadata};
use crate::shadow::{Document, ErrorCode, Rejection};
use crate::topics::{Route, ShadowTopic, Topics};

/// The envelope type of a delta.
pub const DELTA: &str = "shadow.delta";

/// A message the gateway publishes on its broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// What publishing it adds to the gateway's counters.
    pub count: Count,
}

/// What a publication adds to the counters once it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Count {
    /// Nothing: the empty retained message that clears a delta, a message relayed from
    /// the upstream broker.
    Nothing,
    /// One message of this envelope type (a `shadow.delta` is also a delta published).
    Message(&'static str),
    /// The `shadow.document` of a shadow that changed: a message and an accepted shadow
    /// change, counted once the batch that changed it was stored and the reply published.
    ShadowUpdate,
    /// A `rejected` reply: a message, and a rejection kept among the recent ones.
    Rejection {
        device_id: String,
        code: u16,
        message: String,
    },
}

impl Count {
    /// A delta published to a device.
    pub fn is_delta(&self) -> bool {
        *self == Count::Message(DELTA)
    }
}

/// What the device receives on `commands/request`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandRequest {
    pub command_id: String,
    pub name: String,
    pub args: serde_json::Value,
}

/// The fleet summary on `devices/batch/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchStatus {
    /// Devices with a shadow here.
    pub devices: usize,
    pub online: usize,
    pub offline: usize,
    /// Devices whose desired state differs from what they reported.
    pub pending_deltas: usize,
    pub open_alerts: usize,
}

/// The document payload: the shadow plus the requester's token, as AWS clients expect.
#[derive(Serialize)]
struct DocumentPayload<'a> {
    #[serde(flatten)]
    document: &'a Document,
    #[serde(rename = "clientToken", skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

#[derive(Serialize)]
struct RejectedPayload<'a> {
    code: u16,
    message: &'a str,
    #[serde(rename = "clientToken", skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

#[derive(Serialize)]
struct DeletedPayload {
    deleted: bool,
    version: u64,
}

/// Formats the gateway's replies: topic, envelope and encoding.
#[derive(Clone)]
pub struct Replies {
    topics: Topics,
    gateway_id: String,
}

impl Replies {
    pub fn new(topics: Topics, gateway_id: &str) -> Self {
        Self {
            topics,
            gateway_id: gateway_id.to_string(),
        }
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The 500 reply to a request whose write could not be made durable.
    pub fn internal_error(&self, request_topic: &str) -> Option<Outgoing> {
        let Ok(Route::Shadow { device_id, .. }) = self.topics.parse(request_topic) else {
            return None;
        };
        let rejection = Rejection {
            code: ErrorCode::Internal,
            message: "the gateway could not store the request; retry".into(),
        };
        Some(self.rejected(device_id, Encoding::Json, None, &rejection))
    }

    pub fn rejected(
        &self,
        device_id: &str,
        encoding: Encoding,
        token: Option<&str>,
        rejection: &Rejection,
    ) -> Outgoing {
        let payload = RejectedPayload {
            code: rejection.code.as_u16(),
            message: &rejection.message,
            client_token: token,
        };
        let mut message = self.publication(
            device_id,
            ShadowTopic::Rejected,
            encoding,
            token,
            &payload,
            false,
        );
        message.count = Count::Rejection {
            device_id: device_id.to_string(),
            code: rejection.code.as_u16(),
            message: rejection.message.clone(),
        };
        message
    }

    /// A command for a device, enveloped, in the device's encoding.
    pub fn command_request(
        &self,
        device_id: &str,
        encoding: Encoding,
        request: &CommandRequest,
    ) -> Outgoing {
        let topic = self.topics.command_request(device_id);
        self.envelope(topic, encoding, None, "command.request", request, false)
    }

    /// The answer to a delete, on the document topic.
    pub fn deleted(
        &self,
        device_id: &str,
        encoding: Encoding,
        token: Option<&str>,
        version: u64,
    ) -> Outgoing {
        let payload = DeletedPayload {
            deleted: true,
            version,
        };
        self.document_publication(device_id, encoding, token, &payload)
    }

    /// The whole document, the reply to every accepted request.
    pub fn document(
        &self,
        device_id: &str,
        encoding: Encoding,
        token: Option<&str>,
        document: &Document,
    ) -> Outgoing {
        let payload = DocumentPayload {
            document,
            client_token: token,
        };
        self.document_publication(device_id, encoding, token, &payload)
    }

    /// On `shadow/document`, not retained.
    pub fn document_publication<P: Serialize>(
        &self,
        device_id: &str,
        encoding: Encoding,
        token: Option<&str>,
        payload: &P,
    ) -> Outgoing {
        self.publication(
            device_id,
            ShadowTopic::Document,
            encoding,
            token,
            payload,
            false,
        )
    }

    /// The retained `ROOT/system/status` message.
    /// An alert fired or cleared: on `devices/batch/alerts` and `system/alerts`.
    pub fn alert(&self, event: &AlertEvent) -> [Outgoing; 2] {
        let token = Some(event.alert_id.as_str());
        [self.topics.batch("alerts"), self.topics.system("alerts")]
            .map(|topic| self.envelope(topic, Encoding::Json, token, "alert", event, false))
    }

    /// An alert of a device the user owns, on `users/{userId}/notifications`.
    pub fn notification(&self, user_id: &str, event: &AlertEvent) -> Outgoing {
        let topic = self.topics.user(user_id, "notifications");
        let token = Some(event.alert_id.as_str());
        self.envelope(topic, Encoding::Json, token, "notification", event, false)
    }

    pub fn system_status<P: Serialize>(&self, status: &P) -> Outgoing {
        let topic = self.topics.system("status");
        self.envelope(topic, Encoding::Json, None, "system.status", status, true)
    }

    /// The periodic `ROOT/system/metrics` message (not retained: a stale figure misleads).
    /// The fleet summary, retained on `devices/batch/status`.
    pub fn batch_status(&self, status: &BatchStatus) -> Outgoing {
        let topic = self.topics.batch("status");
        self.envelope(topic, Encoding::Json, None, "batch.status", status, true)
    }

    pub fn system_metrics<P: Serialize>(&self, metrics: &P) -> Outgoing {
        let topic = self.topics.system("metrics");
        self.envelope(
            topic,
            Encoding::Json,
            None,
            "system.metrics",
            metrics,
            false,
        )
    }

    pub fn clear_delta(&self, device_id: &str) -> Outgoing {
        Outgoing {
            topic: self.topics.shadow(device_id, ShadowTopic::Delta),
            payload: Vec::new(),
            retain: true,
            count: Count::Nothing,
        }
    }

    pub fn publication<P: Serialize>(
        &self,
        device_id: &str,
        kind: ShadowTopic,
        encoding: Encoding,
        token: Option<&str>,
        payload: &P,
        retain: bool,
    ) -> Outgoing {
        let topic = self.topics.shadow(device_id, kind);
        let message_type = match kind {
            ShadowTopic::Delta => DELTA,
            ShadowTopic::Rejected => "shadow.rejected",
            _ => "shadow.document",
        };
        self.envelope(topic, encoding, token, message_type, payload, retain)
    }

    fn envelope<P: Serialize>(
        &self,
        topic: String,
        encoding: Encoding,
        token: Option<&str>,
        message_type: &'static str,
        payload: &P,
        retain: bool,
    ) -> Outgoing {
        let envelope = Envelope {
            metadata: EnvelopeMetadata {
                message_id: uuid::Uuid::now_v7().to_string(),
                timestamp: codec::rfc3339_now(),
                topic: &topic,
                source: &self.gateway_id,
                correlation_id: token,
                message_type,
                version: "1.0",
            },
            payload,
        };
        Outgoing {
            payload: codec::encode(encoding, &envelope),
            topic,
            retain,
            count: Count::Message(message_type),
        }
    }
}
