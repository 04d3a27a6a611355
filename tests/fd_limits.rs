//! Issue 17 item 8: file descriptors. HTTP connections that never finish a request are
//! closed (header timeout) and bounded per address, so monitoring is still answered; at
//! the file-descriptor limit the MQTT accept loop backs off instead of spinning a core,
//! and accepts again once descriptors are free.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::raw::{Connect, Raw};
use common::{http_get, Gateway};

/// Opens a TCP connection to `port` from `source`.
fn connect_from(port: u16, source: [u8; 4]) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .expect("bind");
    socket
        .connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("connect");
    socket.into()
}

/// Whether the server closed `stream` (reads 0, or an error) within `wait`.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buffer = [0u8; 1024];
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn slow_http_clients_are_closed_and_monitoring_is_still_answered() {
    let gateway = Gateway::start();
    let mut held = Vec::new();
    for n in 0..200u8 {
        // Idle ones and half-sent requests, from 10 addresses (8 each are kept open).
        let mut stream = connect_from(gateway.http_port, [127, 0, 2, 1 + n % 10]);
        if n % 2 == 0 {
            let _ = stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n");
        }
        held.push(stream);
    }
    // Monitoring from its own address is answered at once.
    let started = Instant::now();
    let (status, _) = http_get(gateway.http_port, "/health");
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Within the header timeout (5 s) and a margin, the server has closed them all.
    let deadline = Duration::from_secs(8);
    let started = Instant::now();
    for stream in held.iter_mut() {
        let left = deadline.saturating_sub(started.elapsed());
        assert!(
            closed_within(stream, left),
            "a slow HTTP client still open after {deadline:?}"
        );
    }
}

/// User and system CPU ticks of `pid` so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0)
}

#[test]
fn at_the_descriptor_limit_the_mqtt_listener_backs_off_and_recovers() {
    let gateway = Gateway::start();
    let pid = gateway.pid();
    let limit = "--nofile=160:160";
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), limit])
        .status()
        .expect("prlimit");
    assert!(status.success());
    // Fill the gateway's descriptors with idle connections.
    let mut held = Vec::new();
    for _ in 0..400 {
        match TcpStream::connect(("127.0.0.1", gateway.port)) {
            Ok(stream) => held.push(stream),
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(pid) - before;
    println!(
        "at the descriptor limit: {spent} CPU ticks in 2 s ({} connections held)",
        held.len()
    );
    // 2 s of a spinning core is 200 ticks; backing off is next to nothing.
    assert!(spent < 40, "{spent} ticks in 2 s: the accept loop spins");
    drop(held);
    // Descriptors free again (the idle ones time out after connect_timeout_ms): a heater
    // gets in.
    let started = Instant::now();
    loop {
        if let Ok(raw) = Raw::connected(gateway.port, &Connect::new("heater-after")) {
            raw.disconnect();
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never accepting again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(gateway.log().contains("cannot accept connections"));
}
