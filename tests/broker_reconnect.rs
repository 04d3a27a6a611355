//! Regression for rumqttd #1062 (patched in vendor/rumqttd): devices that drop abruptly and
//! reconnect with the same client id must never wedge the listener.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Gateway;

/// Sends CONNECT and resets the connection at once (SO_LINGER 0), as a heater losing power
/// mid-handshake does: the broker's CONNACK write then fails.
fn connect_and_reset(port: u16, client_id: &str) {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut stream = socket2::Socket::from(stream);
    stream
        .write_all(&common::connect_packet(client_id, 30))
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
        .write_all(&common::connect_packet(client_id, 30))
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
