//! systemd's notify protocol (`Type=notify`, `WatchdogSec=`): `READY=1` once serving,
//! `WATCHDOG=1` while healthy. One datagram to `$NOTIFY_SOCKET` per message; written here
//! in a few lines rather than taken from a crate (std has unix datagrams and abstract
//! addresses; the protocol is one line of text).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where systemd listens for this service's notifications.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: String,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; `None` when not started by systemd with `Type=notify`.
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var("NOTIFY_SOCKET").ok()?;
        (!socket.is_empty()).then_some(Notifier { socket })
    }

    /// Sends one notification such as `READY=1`.
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        let datagram = UnixDatagram::unbound()?;
        // `@name` is an abstract socket (Linux); anything else is a filesystem path.
        match self.socket.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                datagram.send_to_addr(state.as_bytes(), &address)?;
            }
            None => {
                datagram.send_to(state.as_bytes(), &self.socket)?;
            }
        }
        Ok(())
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3)
/// advises. `None` when the watchdog is off, or meant for another process
/// (`$WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier {
            socket: path.display().to_string(),
        };
        notifier.notify("READY=1").expect("notify");
        let mut buffer = [0u8; 64];
        let n = listener.recv(&mut buffer).expect("recv");
        assert_eq!(&buffer[..n], b"READY=1");
    }

    #[test]
    fn notifications_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("iotsphere-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).expect("name");
        let listener = UnixDatagram::bind_addr(&address).expect("bind");
        let notifier = Notifier {
            socket: format!("@{name}"),
        };
        notifier.notify("WATCHDOG=1").expect("notify");
        let mut buffer = [0u8; 64];
        let n = listener.recv(&mut buffer).expect("recv");
        assert_eq!(&buffer[..n], b"WATCHDOG=1");
    }
}
