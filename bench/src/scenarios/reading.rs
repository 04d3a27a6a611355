//! The telemetry reading fan-in publishers send: valid gateway telemetry (DESIGN.md §10,
//! `{"value": …}` plus fields the gateway ignores), padded to the payload size, with a
//! fixed-width stamp first so the subscriber reads it without parsing JSON:
//!
//! `{"bench":"<send ns, 20 digits>-<publisher, 10>-<sequence, 10>","seq":<sequence, 10>,"value":21.5,"unit":"C","pad":"xx…"}`
//!
//! `seq` is the sequence number again as a JSON number (right-aligned in spaces, which
//! JSON allows before a value): the gateway stores it with the reading, so the readings
//! that reach MongoDB can be checked exactly once per (device, seq).

const PREFIX: &[u8] = br#"{"bench":""#;
const TS: std::ops::Range<usize> = 10..30;
const PUBLISHER: std::ops::Range<usize> = 31..41;
const SEQ: std::ops::Range<usize> = 42..52;
const SEQ_FIELD: &[u8] = br#"","seq":"#;
const SEQ_NUMBER: std::ops::Range<usize> = 60..70;
const MIDDLE: &[u8] = br#","value":21.5,"unit":"C","pad":""#;
const SUFFIX: &[u8] = br#""}"#;

/// The smallest reading: the stamp, the value and an empty pad.
pub const MIN_BYTES: usize = SEQ_NUMBER.end + MIDDLE.len() + SUFFIX.len();

/// What a reading says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// `stats::now_ns()` when it was sent.
    pub sent_ns: u64,
    pub publisher: u32,
    pub seq: u32,
}

/// A reading of `size` bytes (at least [`MIN_BYTES`]) with a zero stamp.
pub fn template(size: usize) -> Vec<u8> {
    let size = size.max(MIN_BYTES);
    let mut reading = Vec::with_capacity(size);
    reading.extend_from_slice(PREFIX);
    reading.resize(SEQ.end, b'0');
    reading[TS.end] = b'-';
    reading[PUBLISHER.end] = b'-';
    reading.extend_from_slice(SEQ_FIELD);
    reading.resize(SEQ_NUMBER.end, b' ');
    reading.extend_from_slice(MIDDLE);
    reading.resize(size - SUFFIX.len(), b'x');
    reading.extend_from_slice(SUFFIX);
    reading
}

fn put_digits(field: &mut [u8], mut n: u64) {
    for digit in field.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

fn digits(field: &[u8]) -> Option<u64> {
    field.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

/// Writes the send time into a reading made by [`template`].
pub fn set_sent(reading: &mut [u8], sent_ns: u64) {
    put_digits(&mut reading[TS], sent_ns);
}

/// Writes the publisher and sequence number into a reading made by [`template`].
pub fn set_origin(reading: &mut [u8], publisher: u32, seq: u32) {
    put_digits(&mut reading[PUBLISHER], u64::from(publisher));
    put_digits(&mut reading[SEQ], u64::from(seq));
    let number = seq.to_string();
    let field = &mut reading[SEQ_NUMBER];
    let (spaces, digits) = field.split_at_mut(field.len() - number.len());
    spaces.fill(b' ');
    digits.copy_from_slice(number.as_bytes());
}

/// The stamp of a received payload; `None` if it is not one of ours.
pub fn stamp(payload: &[u8]) -> Option<Stamp> {
    if !payload.starts_with(PREFIX) || payload.len() < MIN_BYTES {
        return None;
    }
    Some(Stamp {
        sent_ns: digits(&payload[TS])?,
        publisher: u32::try_from(digits(&payload[PUBLISHER])?).ok()?,
        seq: u32::try_from(digits(&payload[SEQ])?).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_reading_is_json_telemetry_of_the_right_size() {
        let mut reading = template(256);
        set_sent(&mut reading, 123_456_789_012);
        set_origin(&mut reading, 42, 7);
        assert_eq!(reading.len(), 256);
        let json: serde_json::Value = serde_json::from_slice(&reading).expect("valid JSON");
        assert_eq!(json["value"], 21.5);
        assert_eq!(json["seq"], 7);
        assert_eq!(
            stamp(&reading),
            Some(Stamp {
                sent_ns: 123_456_789_012,
                publisher: 42,
                seq: 7
            })
        );
        assert_eq!(template(1).len(), MIN_BYTES);
        assert_eq!(SEQ_NUMBER.start, SEQ.end + SEQ_FIELD.len());
        assert_eq!(
            template(104).len(),
            104,
            "fanin --payload accepts 104 bytes"
        );
    }

    #[test]
    fn foreign_payloads_have_no_stamp() {
        assert_eq!(stamp(b"21.5"), None);
        let mut reading = template(100);
        reading[12] = b'z';
        assert_eq!(stamp(&reading), None);
    }
}
