//! Wire-protocol framing: message header, OP_MSG, legacy OP_QUERY / OP_REPLY.
//!
//! Anything malformed is reported as a [`WireError`]; the connection handler then closes
//! that one connection.

use bson::{Bson, Document};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const OP_REPLY: i32 = 1;
pub const OP_QUERY: i32 = 2004;
pub const OP_COMPRESSED: i32 = 2012;
pub const OP_MSG: i32 = 2013;

/// `maxMessageSizeBytes` advertised in `hello`.
pub const MAX_MESSAGE_SIZE: usize = 48_000_000;
/// `maxBsonObjectSize` advertised in `hello`.
pub const MAX_BSON_OBJECT_SIZE: usize = 16 * 1024 * 1024;
/// `maxWriteBatchSize` advertised in `hello`.
pub const MAX_WRITE_BATCH_SIZE: usize = 100_000;

const HEADER_LEN: usize = 16;
/// Command documents may exceed `maxBsonObjectSize` by this much (server's "internal" slack).
const COMMAND_SLACK: usize = 16 * 1024;

pub const FLAG_CHECKSUM_PRESENT: u32 = 1;
pub const FLAG_MORE_TO_COME: u32 = 1 << 1;
/// Bits 0-15 are "required": a receiver must reject unknown ones (bit 16, exhaustAllowed,
/// is optional and ignored: replies never stream).
const REQUIRED_MASK: u32 = 0xFFFF;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message length {0} is outside the accepted range")]
    BadLength(i64),
    #[error("unsupported opcode {0}")]
    UnsupportedOpcode(i32),
    #[error("OP_MSG checksum mismatch")]
    Checksum,
}

fn malformed(msg: impl Into<String>) -> WireError {
    WireError::Malformed(msg.into())
}

/// A decoded client request.
#[derive(Debug)]
pub enum Request {
    /// OP_MSG: the body with document sequences merged in as arrays.
    Msg {
        request_id: i32,
        more_to_come: bool,
        body: Document,
    },
    /// Legacy OP_QUERY (only accepted for the handshake on `<db>.$cmd`).
    Query {
        request_id: i32,
        collection: String,
        query: Document,
    },
}

/// Reads one message. `Ok(None)` means the peer closed the connection cleanly between messages.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Request>, WireError> {
    let mut header = [0u8; HEADER_LEN];
    match r.read_exact(&mut header[..4]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    r.read_exact(&mut header[4..]).await?;
    let length = le_i32(&header[0..4]);
    let request_id = le_i32(&header[4..8]);
    let op_code = le_i32(&header[12..16]);
    if length < HEADER_LEN as i32 || length as usize > MAX_MESSAGE_SIZE {
        return Err(WireError::BadLength(length.into()));
    }
    let mut body = vec![0u8; length as usize - HEADER_LEN];
    r.read_exact(&mut body).await?;
    match op_code {
        OP_MSG => parse_op_msg(request_id, &header, &body),
        OP_QUERY => parse_op_query(request_id, &body),
        OP_COMPRESSED => Err(malformed(
            "OP_COMPRESSED received, but no compressor was negotiated",
        )),
        other => Err(WireError::UnsupportedOpcode(other)),
    }
}

fn le_i32(b: &[u8]) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    i32::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Reads one BSON document at the start of `buf`, returning it and its length.
fn read_document(buf: &[u8]) -> Result<(Document, usize), WireError> {
    if buf.len() < 5 {
        return Err(malformed("truncated BSON document"));
    }
    let len = le_i32(buf);
    if len < 5 || len as usize > buf.len() {
        return Err(malformed("BSON document length out of bounds"));
    }
    let len = len as usize;
    if len > MAX_BSON_OBJECT_SIZE + COMMAND_SLACK {
        return Err(malformed("BSON document larger than maxBsonObjectSize"));
    }
    let doc = Document::from_reader(&buf[..len]).map_err(|e| malformed(e.to_string()))?;
    Ok((doc, len))
}

fn read_cstring(buf: &[u8]) -> Result<(String, usize), WireError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| malformed("unterminated cstring"))?;
    let s = std::str::from_utf8(&buf[..end]).map_err(|_| malformed("cstring is not UTF-8"))?;
    Ok((s.to_string(), end + 1))
}

fn parse_op_msg(request_id: i32, header: &[u8], body: &[u8]) -> Result<Option<Request>, WireError> {
    if body.len() < 4 {
        return Err(malformed("OP_MSG without flag bits"));
    }
    let flags = le_u32(body);
    let known = FLAG_CHECKSUM_PRESENT | FLAG_MORE_TO_COME;
    if flags & REQUIRED_MASK & !known != 0 {
        return Err(malformed(format!(
            "unknown required OP_MSG flag bits {flags:#x}"
        )));
    }
    let mut end = body.len();
    if flags & FLAG_CHECKSUM_PRESENT != 0 {
        if body.len() < 8 {
            return Err(malformed("OP_MSG too short for its checksum"));
        }
        end -= 4;
        let expected = le_u32(&body[end..]);
        let mut crc = Crc32c::new();
        crc.update(header);
        crc.update(&body[..end]);
        if crc.finish() != expected {
            return Err(WireError::Checksum);
        }
    }
    let mut pos = 4;
    let mut main: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<Bson>)> = Vec::new();
    while pos < end {
        let kind = body[pos];
        pos += 1;
        match kind {
            0 => {
                if main.is_some() {
                    return Err(malformed("OP_MSG with more than one body section"));
                }
                let (doc, len) = read_document(&body[pos..end])?;
                pos += len;
                main = Some(doc);
            }
            1 => {
                if end - pos < 4 {
                    return Err(malformed("truncated document sequence"));
                }
                let size = le_i32(&body[pos..]);
                if size < 4 || size as usize > end - pos {
                    return Err(malformed("document sequence size out of bounds"));
                }
                let section = &body[pos + 4..pos + size as usize];
                pos += size as usize;
                let (ident, ident_len) = read_cstring(section)?;
                let mut docs = Vec::new();
                let mut p = ident_len;
                while p < section.len() {
                    let (doc, len) = read_document(&section[p..])?;
                    p += len;
                    docs.push(Bson::Document(doc));
                }
                sequences.push((ident, docs));
            }
            other => return Err(malformed(format!("unknown OP_MSG section kind {other}"))),
        }
    }
    let mut main = main.ok_or_else(|| malformed("OP_MSG without a body section"))?;
    for (ident, docs) in sequences {
        if main.contains_key(&ident) {
            return Err(malformed(format!("duplicate field '{ident}' in OP_MSG")));
        }
        main.insert(ident, docs);
    }
    Ok(Some(Request::Msg {
        request_id,
        more_to_come: flags & FLAG_MORE_TO_COME != 0,
        body: main,
    }))
}

fn parse_op_query(request_id: i32, body: &[u8]) -> Result<Option<Request>, WireError> {
    if body.len() < 4 {
        return Err(malformed("truncated OP_QUERY"));
    }
    let (collection, n) = read_cstring(&body[4..])?;
    let pos = 4 + n + 8; // numberToSkip, numberToReturn
    if pos > body.len() {
        return Err(malformed("truncated OP_QUERY"));
    }
    let (query, _) = read_document(&body[pos..])?;
    Ok(Some(Request::Query {
        request_id,
        collection,
        query,
    }))
}

/// A fresh `requestID` for a reply.
pub fn next_request_id() -> i32 {
    static NEXT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn header(
    len: usize,
    request_id: i32,
    response_to: i32,
    op_code: i32,
) -> Result<Vec<u8>, WireError> {
    let total = i32::try_from(len + HEADER_LEN).map_err(|_| WireError::BadLength(len as i64))?;
    let mut out = Vec::with_capacity(len + HEADER_LEN);
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
    Ok(out)
}

fn doc_bytes(doc: &Document) -> Result<Vec<u8>, WireError> {
    bson::to_vec(doc).map_err(|e| malformed(format!("cannot encode reply: {e}")))
}

/// Encodes an OP_MSG reply with a single body section and no flags.
pub fn encode_op_msg(
    request_id: i32,
    response_to: i32,
    doc: &Document,
) -> Result<Vec<u8>, WireError> {
    let payload = doc_bytes(doc)?;
    let mut out = header(4 + 1 + payload.len(), request_id, response_to, OP_MSG)?;
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Encodes an OP_REPLY carrying one document (the answer to an OP_QUERY command).
pub fn encode_op_reply(
    request_id: i32,
    response_to: i32,
    doc: &Document,
) -> Result<Vec<u8>, WireError> {
    let payload = doc_bytes(doc)?;
    let mut out = header(20 + payload.len(), request_id, response_to, OP_REPLY)?;
    out.extend_from_slice(&0i32.to_le_bytes()); // responseFlags
    out.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    out.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    out.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    out.extend_from_slice(&payload);
    Ok(out)
}

/// CRC-32C (Castagnoli), as used by the OP_MSG checksum.
pub struct Crc32c(u32);

impl Crc32c {
    const POLY: u32 = 0x82F6_3B78;

    pub fn new() -> Self {
        Crc32c(!0)
    }

    pub fn update(&mut self, data: &[u8]) {
        let mut crc = self.0;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                let mask = (crc & 1).wrapping_neg();
                crc = (crc >> 1) ^ (Self::POLY & mask);
            }
        }
        self.0 = crc;
    }

    pub fn finish(&self) -> u32 {
        !self.0
    }
}

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn crc32c_check_value() {
        let mut c = Crc32c::new();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xE306_9283);
    }

    fn op_msg_bytes(flags: u32, sections: &[u8], checksum: bool) -> Vec<u8> {
        let extra = if checksum { 4 } else { 0 };
        let mut out = header(4 + sections.len() + extra, 7, 0, OP_MSG).expect("header");
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(sections);
        if checksum {
            let mut c = Crc32c::new();
            c.update(&out);
            out.extend_from_slice(&c.finish().to_le_bytes());
        }
        out
    }

    #[tokio::test]
    async fn parses_body_and_sequence_with_checksum() {
        let body = bson::to_vec(&doc! {"insert": "c", "$db": "d"}).expect("encode");
        let d1 = bson::to_vec(&doc! {"_id": 1}).expect("encode");
        let mut sections = vec![0u8];
        sections.extend_from_slice(&body);
        sections.push(1);
        let size = 4 + "documents".len() + 1 + d1.len();
        sections.extend_from_slice(&(size as i32).to_le_bytes());
        sections.extend_from_slice(b"documents\0");
        sections.extend_from_slice(&d1);
        let msg = op_msg_bytes(FLAG_CHECKSUM_PRESENT, &sections, true);
        let req = read_request(&mut &msg[..])
            .await
            .expect("parse")
            .expect("some");
        match req {
            Request::Msg {
                body, request_id, ..
            } => {
                assert_eq!(request_id, 7);
                assert_eq!(body.get_array("documents").expect("docs").len(), 1);
            }
            Request::Query { .. } => panic!("expected OP_MSG"),
        }
        let mut bad = msg.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xFF;
        assert!(matches!(
            read_request(&mut &bad[..]).await,
            Err(WireError::Checksum)
        ));
    }

    #[tokio::test]
    async fn rejects_garbage() {
        let garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(read_request(&mut &garbage[..]).await.is_err());
        let truncated = op_msg_bytes(0, &[0, 10, 0, 0], false);
        assert!(read_request(&mut &truncated[..]).await.is_err());
        let empty: &[u8] = &[];
        assert!(read_request(&mut &empty[..]).await.expect("eof").is_none());
    }
}
