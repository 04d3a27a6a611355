//! A hostile MQTT 3.1.1 client over a blocking socket: it sends exactly the packets a test
//! wants (a will on someone else's topic, QoS 2 publishes never released, a persistent
//! session under another's client id …) and reads what the broker answers.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A CONNECT to send.
#[derive(Debug, Clone)]
pub struct Connect<'a> {
    pub client_id: &'a str,
    pub login: Option<(&'a str, &'a str)>,
    pub clean_session: bool,
    pub keepalive_secs: u16,
    /// Topic, payload, QoS, retain.
    pub will: Option<(&'a str, &'a [u8], u8, bool)>,
}

impl<'a> Connect<'a> {
    pub fn new(client_id: &'a str) -> Self {
        Connect {
            client_id,
            login: None,
            clean_session: true,
            keepalive_secs: 60,
            will: None,
        }
    }

    pub fn login(mut self, username: &'a str, password: &'a str) -> Self {
        self.login = Some((username, password));
        self
    }

    pub fn persistent(mut self) -> Self {
        self.clean_session = false;
        self
    }

    pub fn will(mut self, topic: &'a str, payload: &'a [u8], qos: u8, retain: bool) -> Self {
        self.will = Some((topic, payload, qos, retain));
        self
    }

    pub fn packet(&self) -> Vec<u8> {
        let mut flags = 0u8;
        if self.clean_session {
            flags |= 0x02;
        }
        if let Some((_, _, qos, retain)) = self.will {
            flags |= 0x04 | (qos << 3) | if retain { 0x20 } else { 0 };
        }
        if self.login.is_some() {
            flags |= 0xc0;
        }
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags];
        body.extend_from_slice(&self.keepalive_secs.to_be_bytes());
        string(&mut body, self.client_id.as_bytes());
        if let Some((topic, payload, _, _)) = self.will {
            string(&mut body, topic.as_bytes());
            string(&mut body, payload);
        }
        if let Some((username, password)) = self.login {
            string(&mut body, username.as_bytes());
            string(&mut body, password.as_bytes());
        }
        frame(0x10, &body)
    }
}

fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Fixed header (type and flags), remaining length, body.
pub fn frame(header: u8, body: &[u8]) -> Vec<u8> {
    let mut packet = vec![header];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(body);
    packet
}

/// A PUBLISH packet.
pub fn publish(topic: &str, payload: &[u8], qos: u8, retain: bool, pkid: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
    string(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    frame(0x30 | (qos << 1) | u8::from(retain), &body)
}

/// One packet read: its first byte and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub header: u8,
    pub body: Vec<u8>,
}

impl Packet {
    pub fn kind(&self) -> u8 {
        self.header >> 4
    }

    /// A PUBLISH's topic and payload.
    pub fn topic_payload(&self) -> Option<(String, Vec<u8>)> {
        if self.kind() != 3 || self.body.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([self.body[0], self.body[1]]));
        let topic = String::from_utf8_lossy(self.body.get(2..2 + len)?).into_owned();
        let skip = 2 + len + if self.header & 0x06 != 0 { 2 } else { 0 };
        Some((topic, self.body.get(skip..)?.to_vec()))
    }

    pub fn retain(&self) -> bool {
        self.header & 1 == 1
    }

    /// The packet id of a QoS 1/2 PUBLISH, or of an acknowledgement.
    pub fn pkid(&self) -> Option<u16> {
        let at = match self.kind() {
            3 if self.header & 0x06 != 0 => {
                2 + usize::from(u16::from_be_bytes([
                    *self.body.first()?,
                    *self.body.get(1)?,
                ]))
            }
            4..=7 | 9 | 11 => 0,
            _ => return None,
        };
        Some(u16::from_be_bytes([
            *self.body.get(at)?,
            *self.body.get(at + 1)?,
        ]))
    }
}

/// The raw client.
pub struct Raw {
    stream: TcpStream,
}

impl Raw {
    pub fn open(port: u16) -> io::Result<Raw> {
        Self::open_from(port, None)
    }

    /// Connects from `source` (e.g. 127.0.0.2: another peer address on loopback).
    pub fn open_from(port: u16, source: Option<std::net::IpAddr>) -> io::Result<Raw> {
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = match source {
            None => TcpStream::connect_timeout(&target, Duration::from_secs(5))?,
            Some(source) => {
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                socket.bind(&SocketAddr::new(source, 0).into())?;
                socket.connect_timeout(&target.into(), Duration::from_secs(5))?;
                socket.into()
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Raw { stream })
    }

    /// Sends CONNECT; the CONNACK's (session present, return code).
    pub fn connect(&mut self, connect: &Connect<'_>) -> io::Result<(bool, u8)> {
        self.send(&connect.packet())?;
        let connack = self.read()?;
        if connack.kind() != 2 || connack.body.len() != 2 {
            return Err(io::Error::other(format!("not a CONNACK: {connack:?}")));
        }
        Ok((connack.body[0] & 1 == 1, connack.body[1]))
    }

    /// Opens and connects; fails unless the CONNACK is 0.
    pub fn connected(port: u16, connect: &Connect<'_>) -> io::Result<Raw> {
        let mut raw = Self::open(port)?;
        match raw.connect(connect)? {
            (_, 0) => Ok(raw),
            (_, code) => Err(io::Error::other(format!("CONNACK {code}"))),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// SUBSCRIBE one filter at QoS 1; the SUBACK's return code.
    pub fn subscribe(&mut self, pkid: u16, filter: &str) -> io::Result<u8> {
        self.subscribe_qos(pkid, filter, 1)
    }

    /// SUBSCRIBE one filter at `qos`; the SUBACK's return code.
    pub fn subscribe_qos(&mut self, pkid: u16, filter: &str, qos: u8) -> io::Result<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        string(&mut body, filter.as_bytes());
        body.push(qos);
        self.send(&frame(0x82, &body))?;
        loop {
            let packet = self.read()?;
            if packet.kind() == 9 {
                return Ok(*packet.body.last().unwrap_or(&0x80));
            }
        }
    }

    /// The next packet (within the read timeout).
    pub fn read(&mut self) -> io::Result<Packet> {
        let mut header = [0u8; 1];
        self.stream.read_exact(&mut header)?;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut byte = [0u8; 1];
            self.stream.read_exact(&mut byte)?;
            len |= usize::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Ok(Packet {
            header: header[0],
            body,
        })
    }

    /// The publishes that arrive within `wait`.
    pub fn publishes_within(&mut self, wait: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let _ = self
                .stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.read() {
                Ok(packet) if packet.kind() == 3 => got.push(packet),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(10)));
        got
    }

    /// Whether the broker closes the connection within `wait` (reading what comes).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(100)));
        let mut buffer = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }

    /// Ends the TCP connection without DISCONNECT (a device losing power): its will fires.
    pub fn drop_abruptly(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// DISCONNECT, then wait for the broker to close.
    pub fn disconnect(mut self) {
        let _ = self.send(&[0xe0, 0]);
        let _ = self.closed_within(Duration::from_secs(2));
    }
}
