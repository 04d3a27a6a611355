//! One MQTT client connection over tokio: connect, queue packets, flush, read, close.
//!
//! Packets are queued in a write buffer and sent by [`Connection::flush`], so a publisher
//! can put many PUBLISHes in one `write`. [`Connection::read`] is cancel-safe (bytes are
//! kept in the read buffer), so it can sit in a `tokio::select!` next to a pacing timer.
//! [`Connection::close`] sends DISCONNECT and reads until the broker closes: closing a
//! socket with unread data makes the kernel send RST, and the broker may then drop what
//! it had not read yet from this client (DEPENDENCY-NOTES.md, load generators).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::codec::{self, Incoming};

/// How a connection is opened.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub broker: SocketAddr,
    /// Seconds; long, so held connections need no PINGREQ (rumqttd refuses 0).
    pub keep_alive: u16,
    /// TCP connect plus CONNACK must finish within this time.
    pub timeout: Duration,
    /// Bytes reserved in the read buffer when it runs out of room: small for thousands
    /// of idle devices, large for a fan-in subscriber.
    pub read_chunk: usize,
}

impl ConnectOptions {
    pub fn new(broker: SocketAddr) -> Self {
        Self {
            broker,
            keep_alive: u16::MAX,
            timeout: Duration::from_secs(10),
            read_chunk: 4096,
        }
    }
}

/// The broker answered CONNECT with a non-zero return code (3: server unavailable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub u8);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CONNACK refused with code {}", self.0)
    }
}

impl std::error::Error for Refused {}

pub struct Connection {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    read_chunk: usize,
    last_pkid: u16,
}

impl Connection {
    /// TCP connect (Nagle off), CONNECT with a clean session, and wait for CONNACK.
    pub async fn open(client_id: &str, options: &ConnectOptions) -> anyhow::Result<Connection> {
        let open = async {
            let stream = TcpStream::connect(options.broker)
                .await
                .with_context(|| format!("connect to {}", options.broker))?;
            stream.set_nodelay(true)?;
            let mut conn = Connection {
                stream,
                rbuf: BytesMut::new(),
                wbuf: BytesMut::with_capacity(128),
                read_chunk: options.read_chunk,
                last_pkid: 0,
            };
            codec::connect(&mut conn.wbuf, client_id, options.keep_alive, true);
            conn.flush().await?;
            match conn.read().await? {
                Some(Incoming::ConnAck { code: 0 }) => Ok(conn),
                Some(Incoming::ConnAck { code }) => Err(Refused(code).into()),
                Some(other) => bail!("expected CONNACK, got {other:?}"),
                None => bail!("the broker closed the connection before CONNACK"),
            }
        };
        tokio::time::timeout(options.timeout, open)
            .await
            .with_context(|| format!("no CONNACK within {:?}", options.timeout))?
    }

    /// The next packet, or `None` when the broker closed the connection. Cancel-safe.
    pub async fn read(&mut self) -> anyhow::Result<Option<Incoming>> {
        loop {
            if let Some(packet) = codec::decode(&mut self.rbuf)? {
                return Ok(Some(packet));
            }
            if self.rbuf.capacity() - self.rbuf.len() < self.read_chunk / 4 {
                self.rbuf.reserve(self.read_chunk);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                if !self.rbuf.is_empty() {
                    bail!("the broker closed the connection inside a packet");
                }
                return Ok(None);
            }
        }
    }

    /// The next packet already in the read buffer, without touching the socket.
    pub fn buffered(&mut self) -> anyhow::Result<Option<Incoming>> {
        Ok(codec::decode(&mut self.rbuf)?)
    }

    fn next_pkid(&mut self) -> u16 {
        self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
        self.last_pkid
    }

    /// Queues a PUBLISH; returns its packet id (0 for QoS 0).
    pub fn queue_publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> u16 {
        let pkid = if qos > 0 { self.next_pkid() } else { 0 };
        codec::publish(&mut self.wbuf, topic, payload, qos, pkid, retain);
        pkid
    }

    /// Queues a SUBSCRIBE to one filter; returns its packet id.
    pub fn queue_subscribe(&mut self, filter: &str, qos: u8) -> u16 {
        let pkid = self.next_pkid();
        codec::subscribe(&mut self.wbuf, pkid, filter, qos);
        pkid
    }

    pub fn queue_puback(&mut self, pkid: u16) {
        codec::puback(&mut self.wbuf, pkid);
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Subscribes to one filter and waits for its SUBACK; anything that arrives first
    /// (a retained message may) is returned with it.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> anyhow::Result<Vec<Incoming>> {
        let pkid = self.queue_subscribe(filter, qos);
        self.flush().await?;
        let mut before = Vec::new();
        loop {
            match self.read().await? {
                Some(Incoming::SubAck { pkid: p, granted }) if p == pkid => {
                    if granted == 0x80 {
                        bail!("SUBSCRIBE {filter} refused");
                    }
                    return Ok(before);
                }
                Some(packet) => before.push(packet),
                None => bail!("the broker closed the connection before SUBACK"),
            }
        }
    }

    /// Sends DISCONNECT and reads until the broker closes (or `drain` passes); returns
    /// what arrived in the meantime.
    pub async fn close(mut self, drain: Duration) -> anyhow::Result<Vec<Incoming>> {
        codec::disconnect(&mut self.wbuf);
        self.flush().await?;
        let mut late = Vec::new();
        let reading = async {
            while let Some(packet) = self.read().await? {
                late.push(packet);
            }
            anyhow::Ok(())
        };
        match tokio::time::timeout(drain, reading).await {
            Ok(result) => result.map(|()| late),
            Err(_) => {
                bail!("the broker did not close the connection within {drain:?} of DISCONNECT")
            }
        }
    }
}
