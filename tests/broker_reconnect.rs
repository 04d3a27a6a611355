//! Regression for rumqttd #1062 (patched in vendor/rumqttd): devices that drop abruptly and
//! reconnect with the same client id must never wedge the listener.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Gateway;

/// A raw MQTT 3.1.1 CONNECT (clean session) for `client_id`.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// Sends CONNECT and resets the connection at once (SO_LINGER 0), as a heater losing power
/// mid-handshake does: the broker's CONNACK write then fails.
fn connect_and_reset(port: u16, client_id: &str) {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut stream = socket2::Socket::from(stream);
    stream
        .write_all(&connect_packet(client_id))
        .expect("send CONNECT");
    stream.set_linger(Some(Duration::ZERO)).expect("linger 0");
    drop(stream);
}

/// A full CONNECT / CONNACK; panics when the broker does not answer.
fn connect_and_wait_for_connack(port: u16, client_id: &str, cycle: usize) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(&connect_packet(client_id))
        .expect("send CONNECT");
    let mut connack = [0u8; 4];
    stream
        .read_exact(&mut connack)
        .unwrap_or_else(|e| panic!("no CONNACK at cycle {cycle}: {e}"));
    assert_eq!(connack, [0x20, 2, 0, 0], "cycle {cycle}");
    stream
}

#[test]
fn abrupt_drops_and_reconnects_with_the_same_ids_keep_the_listener_alive() {
    let mut gateway = Gateway::start();
    for cycle in 0..500 {
        let id = format!("heater-{}", cycle % 25);
        connect_and_reset(gateway.port, &id);
        // Dropped without DISCONNECT, like a heater losing power.
        drop(connect_and_wait_for_connack(gateway.port, &id, cycle));
    }
    assert!(gateway.is_running());
}
