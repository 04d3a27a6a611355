//! Raw wire-protocol behaviour: malformed input closes only that connection, legacy
//! OP_QUERY handshake, checksums, moreToCome.

use std::time::Duration;

use mongodb::bson::{doc, Document};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{client, start};

const OP_REPLY: i32 = 1;
const OP_QUERY: i32 = 2004;
const OP_COMPRESSED: i32 = 2012;
const OP_MSG: i32 = 2013;

fn message(request_id: i32, op: i32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((16 + body.len()) as i32).to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&op.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn op_msg(request_id: i32, flags: u32, cmd: &Document) -> Vec<u8> {
    let mut body = flags.to_le_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&mongodb::bson::to_vec(cmd).expect("encode"));
    message(request_id, OP_MSG, &body)
}

/// CRC-32C, as a client computes it.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Reads one reply: (opcode, responseTo, document).
async fn read_reply(s: &mut TcpStream) -> (i32, i32, Document) {
    let mut header = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut header))
        .await
        .expect("reply in time")
        .expect("reply");
    let len = i32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    let response_to = i32::from_le_bytes(header[8..12].try_into().unwrap());
    let op = i32::from_le_bytes(header[12..16].try_into().unwrap());
    let mut body = vec![0u8; len - 16];
    s.read_exact(&mut body).await.expect("body");
    let doc_start = if op == OP_REPLY { 20 } else { 5 };
    (
        op,
        response_to,
        Document::from_reader(&body[doc_start..]).expect("reply doc"),
    )
}

/// True when the server closes the connection (EOF or reset) without answering.
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn malformed_input_closes_only_that_connection() {
    let srv = start().await;
    let c = client(&srv).await;

    let mut garbage = TcpStream::connect(srv.addr()).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed(&mut garbage).await);

    let mut huge = TcpStream::connect(srv.addr()).await.unwrap();
    let mut h = (100_000_000i32).to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 12]);
    huge.write_all(&h).await.unwrap();
    assert!(closed(&mut huge).await);

    // A body section whose BSON length runs past the message.
    let mut bad_bson = TcpStream::connect(srv.addr()).await.unwrap();
    let mut body = 0u32.to_le_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&500i32.to_le_bytes());
    body.extend_from_slice(&[1, 2, 3, 4]);
    bad_bson
        .write_all(&message(2, OP_MSG, &body))
        .await
        .unwrap();
    assert!(closed(&mut bad_bson).await);

    // Unknown required flag bit, OP_COMPRESSED, a wrong checksum.
    for msg in [
        op_msg(3, 1 << 5, &doc! {"ping": 1, "$db": "admin"}),
        message(4, OP_COMPRESSED, &[0; 9]),
        {
            let mut m = op_msg(5, 1, &doc! {"ping": 1, "$db": "admin"});
            let len = (m.len() + 4) as i32;
            m[0..4].copy_from_slice(&len.to_le_bytes());
            m.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
            m
        },
    ] {
        let mut s = TcpStream::connect(srv.addr()).await.unwrap();
        s.write_all(&msg).await.unwrap();
        assert!(closed(&mut s).await);
    }

    // A truncated message followed by the client closing: the server just drops it.
    let mut truncated = TcpStream::connect(srv.addr()).await.unwrap();
    truncated
        .write_all(&op_msg(6, 0, &doc! {"ping": 1, "$db": "admin"})[..20])
        .await
        .unwrap();
    truncated.shutdown().await.unwrap();
    assert!(closed(&mut truncated).await);

    // Everyone else is still served.
    let pong = c
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .unwrap();
    assert_eq!(pong.get_f64("ok"), Ok(1.0));
}

#[tokio::test]
async fn legacy_handshake_checksum_and_more_to_come() {
    let srv = start().await;
    let mut s = TcpStream::connect(srv.addr()).await.unwrap();

    // OP_QUERY isMaster on admin.$cmd -> OP_REPLY.
    let mut q = 0i32.to_le_bytes().to_vec();
    q.extend_from_slice(b"admin.$cmd\0");
    q.extend_from_slice(&0i32.to_le_bytes());
    q.extend_from_slice(&(-1i32).to_le_bytes());
    q.extend_from_slice(&mongodb::bson::to_vec(&doc! {"isMaster": 1, "helloOk": true}).unwrap());
    s.write_all(&message(10, OP_QUERY, &q)).await.unwrap();
    let (op, to, reply) = read_reply(&mut s).await;
    assert_eq!((op, to), (OP_REPLY, 10));
    assert_eq!(reply.get_bool("ismaster"), Ok(true));
    assert_eq!(reply.get_bool("helloOk"), Ok(true));
    assert_eq!(reply.get_str("setName"), Ok("rs0"));

    // Any other command over OP_QUERY is refused like MongoDB 6+ does.
    let mut q = 0i32.to_le_bytes().to_vec();
    q.extend_from_slice(b"app.$cmd\0");
    q.extend_from_slice(&0i32.to_le_bytes());
    q.extend_from_slice(&(-1i32).to_le_bytes());
    q.extend_from_slice(&mongodb::bson::to_vec(&doc! {"find": "x"}).unwrap());
    s.write_all(&message(11, OP_QUERY, &q)).await.unwrap();
    let (_, _, reply) = read_reply(&mut s).await;
    assert_eq!(reply.get_i32("code"), Ok(352));

    // OP_MSG with a valid CRC-32C checksum.
    let mut m = op_msg(12, 1, &doc! {"ping": 1, "$db": "admin"});
    let len = (m.len() + 4) as i32;
    m[0..4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c(&m);
    m.extend_from_slice(&crc.to_le_bytes());
    s.write_all(&m).await.unwrap();
    let (op, to, reply) = read_reply(&mut s).await;
    assert_eq!((op, to, reply.get_f64("ok")), (OP_MSG, 12, Ok(1.0)));

    // moreToCome: no reply for the insert; the next reply answers the ping.
    let insert =
        doc! {"insert": "c", "documents": [{"_id": 1}], "writeConcern": {"w": 0}, "$db": "app"};
    s.write_all(&op_msg(13, 2, &insert)).await.unwrap();
    s.write_all(&op_msg(14, 0, &doc! {"count": "c", "$db": "app"}))
        .await
        .unwrap();
    let (_, to, reply) = read_reply(&mut s).await;
    assert_eq!((to, reply.get_i32("n")), (14, Ok(1)));

    // Missing $db.
    s.write_all(&op_msg(15, 0, &doc! {"ping": 1}))
        .await
        .unwrap();
    let (_, _, reply) = read_reply(&mut s).await;
    assert_eq!(reply.get_i32("code"), Ok(40571));
}
