//! MQTT 3.1.1 framing for the few packets a load generator needs.
//!
//! Encoders append to a write buffer, so many packets can go out in one `write` (publishers
//! batch at high rates). The decoder takes what the broker sends a client — CONNACK,
//! PUBLISH, PUBACK, SUBACK, PINGRESP — and never panics on malformed input: every length is
//! checked, and a bad packet is an error for that connection only.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest packet accepted from a broker; a bigger one means a broken peer.
pub const MAX_INCOMING_PACKET: usize = 1 << 20;

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;

/// A PUBLISH as received; topic and payload share the read buffer's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: u8,
    pub pkid: u16,
    pub retain: bool,
}

/// A packet from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    ConnAck {
        code: u8,
    },
    Publish(Publish),
    PubAck(u16),
    /// `granted` is the first return code: the granted QoS, or 0x80 for a refusal.
    SubAck {
        pkid: u16,
        granted: u8,
    },
    PingResp,
    /// Any other packet type (counted, otherwise ignored).
    Other(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The remaining-length field is longer than 4 bytes.
    BadLength,
    TooLarge(usize),
    /// A packet shorter than its own fields say.
    Truncated(u8),
    BadQos(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::BadLength => write!(f, "malformed remaining length"),
            DecodeError::TooLarge(n) => {
                write!(f, "packet of {n} bytes, above {MAX_INCOMING_PACKET}")
            }
            DecodeError::Truncated(t) => write!(f, "truncated packet of type {t}"),
            DecodeError::BadQos(q) => write!(f, "publish with QoS {q}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Takes one whole packet off the front of `buf`; `Ok(None)` when more bytes are needed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Incoming>, DecodeError> {
    let Some((header_len, body_len)) = frame_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < header_len + body_len {
        buf.reserve(header_len + body_len - buf.len());
        return Ok(None);
    }
    let first = buf[0];
    buf.advance(header_len);
    let body = buf.split_to(body_len).freeze();
    parse(first, body).map(Some)
}

/// The fixed header's length and the body length, once the header is complete.
fn frame_len(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut len = 0usize;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if len > MAX_INCOMING_PACKET {
                return Err(DecodeError::TooLarge(len));
            }
            return Ok(Some((i + 2, len)));
        }
    }
    if buf.len() >= 5 {
        return Err(DecodeError::BadLength);
    }
    Ok(None)
}

fn parse(first: u8, mut body: Bytes) -> Result<Incoming, DecodeError> {
    let kind = first >> 4;
    let truncated = DecodeError::Truncated(kind);
    match kind {
        CONNACK => {
            if body.len() < 2 {
                return Err(truncated);
            }
            Ok(Incoming::ConnAck { code: body[1] })
        }
        PUBLISH => {
            let qos = (first >> 1) & 0b11;
            if qos > 2 {
                return Err(DecodeError::BadQos(qos));
            }
            if body.len() < 2 {
                return Err(truncated);
            }
            let topic_len = usize::from(body.get_u16());
            let pkid_len = if qos > 0 { 2 } else { 0 };
            if body.len() < topic_len + pkid_len {
                return Err(truncated);
            }
            let topic = body.split_to(topic_len);
            let pkid = if qos > 0 { body.get_u16() } else { 0 };
            Ok(Incoming::Publish(Publish {
                topic,
                payload: body,
                qos,
                pkid,
                retain: first & 1 == 1,
            }))
        }
        PUBACK => {
            if body.len() < 2 {
                return Err(truncated);
            }
            Ok(Incoming::PubAck(body.get_u16()))
        }
        SUBACK => {
            if body.len() < 3 {
                return Err(truncated);
            }
            let pkid = body.get_u16();
            Ok(Incoming::SubAck {
                pkid,
                granted: body[0],
            })
        }
        PINGRESP => Ok(Incoming::PingResp),
        other => Ok(Incoming::Other(other)),
    }
}

fn put_remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    // Topics and client ids are ours and short; MQTT caps strings at 65,535 bytes.
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    buf.put_u16(len);
    buf.put_slice(&s[..usize::from(len)]);
}

/// CONNECT, MQTT 3.1.1, no will, no credentials.
pub fn connect(buf: &mut BytesMut, client_id: &str, keep_alive: u16, clean_session: bool) {
    buf.put_u8(CONNECT << 4);
    put_remaining_length(buf, 10 + 2 + client_id.len());
    put_str(buf, b"MQTT");
    buf.put_u8(4);
    buf.put_u8(if clean_session { 0b10 } else { 0 });
    buf.put_u16(keep_alive);
    put_str(buf, client_id.as_bytes());
}

/// PUBLISH; `pkid` is ignored for QoS 0.
pub fn publish(buf: &mut BytesMut, topic: &str, payload: &[u8], qos: u8, pkid: u16, retain: bool) {
    let pkid_len = if qos > 0 { 2 } else { 0 };
    buf.put_u8(PUBLISH << 4 | (qos & 0b11) << 1 | u8::from(retain));
    put_remaining_length(buf, 2 + topic.len() + pkid_len + payload.len());
    put_str(buf, topic.as_bytes());
    if qos > 0 {
        buf.put_u16(pkid);
    }
    buf.put_slice(payload);
}

pub fn puback(buf: &mut BytesMut, pkid: u16) {
    buf.put_u8(PUBACK << 4);
    buf.put_u8(2);
    buf.put_u16(pkid);
}

/// SUBSCRIBE to one filter.
pub fn subscribe(buf: &mut BytesMut, pkid: u16, filter: &str, qos: u8) {
    buf.put_u8(SUBSCRIBE << 4 | 0b0010);
    put_remaining_length(buf, 2 + 2 + filter.len() + 1);
    buf.put_u16(pkid);
    put_str(buf, filter.as_bytes());
    buf.put_u8(qos);
}

pub fn disconnect(buf: &mut BytesMut) {
    buf.put_u8(DISCONNECT << 4);
    buf.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_at_each_qos() {
        for qos in [0, 1] {
            let mut buf = BytesMut::new();
            let payload = vec![7u8; 300];
            publish(&mut buf, "a/b", &payload, qos, 42, true);
            let Some(Incoming::Publish(p)) = decode(&mut buf).expect("valid") else {
                panic!("not a publish");
            };
            assert_eq!(&p.topic[..], b"a/b");
            assert_eq!(p.payload.len(), 300);
            assert_eq!(p.qos, qos);
            assert_eq!(p.pkid, if qos > 0 { 42 } else { 0 });
            assert!(p.retain);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn waits_for_the_whole_packet() {
        let mut whole = BytesMut::new();
        publish(&mut whole, "t", &[1; 200], 0, 0, false);
        let mut partial = BytesMut::from(&whole[..whole.len() - 1]);
        assert_eq!(decode(&mut partial), Ok(None));
        partial.extend_from_slice(&whole[whole.len() - 1..]);
        assert!(matches!(
            decode(&mut partial),
            Ok(Some(Incoming::Publish(_)))
        ));
    }

    #[test]
    fn acks_decode() {
        let mut buf =
            BytesMut::from(&[0x20, 2, 0, 0, 0x40, 2, 1, 2, 0x90, 3, 0, 9, 1, 0xd0, 0][..]);
        assert_eq!(decode(&mut buf), Ok(Some(Incoming::ConnAck { code: 0 })));
        assert_eq!(decode(&mut buf), Ok(Some(Incoming::PubAck(258))));
        assert_eq!(
            decode(&mut buf),
            Ok(Some(Incoming::SubAck {
                pkid: 9,
                granted: 1
            }))
        );
        assert_eq!(decode(&mut buf), Ok(Some(Incoming::PingResp)));
        assert_eq!(decode(&mut buf), Ok(None));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let cases: [&[u8]; 4] = [
            &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            &[0x30, 0xff, 0xff, 0xff, 0x7f],
            &[0x30, 1, 0],
            &[0x36, 2, 0, 0],
        ];
        for case in cases {
            assert!(decode(&mut BytesMut::from(case)).is_err(), "{case:?}");
        }
        assert_eq!(
            decode(&mut BytesMut::from(&[0x40, 1, 0][..])),
            Err(DecodeError::Truncated(PUBACK))
        );
    }
}
