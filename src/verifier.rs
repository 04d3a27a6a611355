//! Password checks with bounded cost, whatever arrives at the listener.
//!
//! - **A fixed pool**: [`Verifier::workers`] threads (one per core, at least 1, at most
//!   [`MAX_WORKERS`]) run every argon2 check. Each allocated its argon2 memory
//!   ([`MAX_MEMORY_BLOCKS`] KiB) once, at start, and reuses it for every check: argon2's
//!   memory is bounded by workers × 8 MiB, never by the number of CONNECTs at once.
//! - **A bounded queue** of [`Verifier::queue`] checks; when it is full a check is not
//!   queued ([`Verified::Busy`]: CONNACK 3 "server unavailable", the client retries), so a
//!   flood can make logins wait at most a queue's worth of checks.
//! - **A cache of recent successes**: a name whose password verified within [`CACHE_TTL`]
//!   is let in again without argon2 when it presents the same password. The cache keeps
//!   a keyed BLAKE2b MAC of name and password (the key is random, made at start, never
//!   leaves memory), never the password; it holds at most `cache_capacity` names and is
//!   emptied when the credentials file is reloaded. A reconnect storm of known heaters
//!   (a building after a power cut, the gateway still up) costs microseconds per heater.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{Output, PasswordHash};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use blake2::digest::{KeyInit, Mac};
use blake2::Blake2bMac512;

/// Argon2 memory of one check at most (8 MiB: the gateway's own hashes use exactly this).
pub const MAX_MEMORY_BLOCKS: usize = 8 * 1024;
pub const MAX_WORKERS: usize = 4;
/// Checks waiting for a worker at most, per worker.
pub const QUEUE_PER_WORKER: usize = 16;
/// How long a verified password is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(3600);

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    Yes,
    No,
    /// Every worker busy and the queue full: not checked.
    Busy,
}

struct Job {
    /// The stored PHC hash; `None` for an unknown name (checked against a dummy hash, so
    /// unknown names cost the same time as wrong passwords).
    stored: Option<String>,
    password: String,
    reply: tokio::sync::oneshot::Sender<bool>,
}

type Mac64 = [u8; 64];

/// The bounded pool and the cache of recent successes.
pub struct Verifier {
    jobs: flume::Sender<Job>,
    workers: usize,
    queue: usize,
    mac_key: [u8; 32],
    cache_capacity: usize,
    cache: Mutex<HashMap<String, (Mac64, Instant)>>,
}

impl Verifier {
    /// Starts the pool: one worker per core (1..=[`MAX_WORKERS`]).
    pub fn start(cache_capacity: usize) -> std::io::Result<Verifier> {
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_WORKERS);
        let queue = workers * QUEUE_PER_WORKER;
        let (jobs, inbox) = flume::bounded::<Job>(queue);
        for n in 0..workers {
            let inbox = inbox.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || work(&inbox))?;
        }
        let mut mac_key = [0u8; 32];
        OsRng.fill_bytes(&mut mac_key);
        Ok(Verifier {
            jobs,
            workers,
            queue,
            mac_key,
            cache_capacity,
            cache: Mutex::default(),
        })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn queue(&self) -> usize {
        self.queue
    }

    /// Checks `password` for `name` against `stored` (its hash, `None` if unknown).
    pub async fn verify(&self, name: &str, stored: Option<&str>, password: &str) -> Verified {
        let mac = self.mac(name, password);
        if stored.is_some() && self.cached(name, &mac) {
            return Verified::Yes;
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            stored: stored.map(str::to_string),
            password: password.to_string(),
            reply,
        };
        if self.jobs.try_send(job).is_err() {
            return Verified::Busy;
        }
        match answer.await {
            Ok(true) => {
                self.remember(name, mac);
                Verified::Yes
            }
            // A worker that died answers nothing: refuse.
            Ok(false) | Err(_) => Verified::No,
        }
    }

    /// Forgets every remembered success (the credentials file was reloaded).
    pub fn forget_all(&self) {
        self.lock().clear();
    }

    fn mac(&self, name: &str, password: &str) -> Mac64 {
        let mut mac = <Blake2bMac512 as KeyInit>::new_from_slice(&self.mac_key)
            .unwrap_or_else(|_| unreachable!("a 32-byte key is a valid BLAKE2b key"));
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn cached(&self, name: &str, mac: &Mac64) -> bool {
        let cache = self.lock();
        cache.get(name).is_some_and(|(known, at)| {
            at.elapsed() < CACHE_TTL && subtle::ConstantTimeEq::ct_eq(&known[..], &mac[..]).into()
        })
    }

    fn remember(&self, name: &str, mac: Mac64) {
        let mut cache = self.lock();
        if cache.len() >= self.cache_capacity && !cache.contains_key(name) {
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if cache.len() >= self.cache_capacity {
                // Full of fresh entries: drop the oldest.
                if let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(name, _)| name.clone())
                {
                    cache.remove(&oldest);
                }
            }
        }
        cache.insert(name.to_string(), (mac, Instant::now()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Mac64, Instant)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A worker: its argon2 memory is allocated at its first check, once, and reused for
/// every check after.
fn work(inbox: &flume::Receiver<Job>) {
    let mut memory = Vec::new();
    for job in inbox.iter() {
        if memory.is_empty() {
            memory = vec![Block::new(); MAX_MEMORY_BLOCKS];
        }
        let hash = job.stored.as_deref().unwrap_or(DUMMY_HASH);
        let matches = check(&mut memory, hash, &job.password);
        let _ = job.reply.send(job.stored.is_some() && matches);
    }
}

/// Does `password` match the PHC string `hash` (argon2id, at most 8 MiB)?
pub fn check(memory: &mut [Block], hash: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(params), Some(salt), Some(expected)) =
        (Params::try_from(&parsed), parsed.salt, parsed.hash)
    else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    if parsed.algorithm != argon2::ARGON2ID_IDENT || params.block_count() > memory.len() {
        return false;
    }
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let blocks = &mut memory[..params.block_count()];
    Argon2::new(Algorithm::Argon2id, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks)
        .is_ok()
        && Output::new(&out).is_ok_and(|out| out == expected)
}

/// A valid hash of a random password, checked against when the name is unknown.
pub const DUMMY_HASH: &str =
    "$argon2id$v=19$m=8192,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2Vmq9B3M8uSNwSCJ8+8LJ7dXKTQ2a2P+ahEBnq5w3q8";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checks_and_remembers_successes() {
        let hash = crate::auth::hash_password("s3cret").expect("hash");
        let verifier = Verifier::start(2).expect("start");
        assert_eq!(
            verifier.verify("heater-1", Some(&hash), "wrong").await,
            Verified::No
        );
        assert_eq!(
            verifier.verify("heater-9", None, "s3cret").await,
            Verified::No,
            "an unknown name"
        );
        assert_eq!(
            verifier.verify("heater-1", Some(&hash), "s3cret").await,
            Verified::Yes
        );
        // Remembered: no argon2 the second time (far below one check's ~15 ms).
        let started = Instant::now();
        for _ in 0..100 {
            assert_eq!(
                verifier.verify("heater-1", Some(&hash), "s3cret").await,
                Verified::Yes
            );
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            verifier.verify("heater-1", Some(&hash), "s3cret!").await,
            Verified::No,
            "another password is checked, not taken from the cache"
        );
        verifier.forget_all();
        assert!(!verifier.cached("heater-1", &verifier.mac("heater-1", "s3cret")));
    }

    #[test]
    fn the_cache_is_bounded() {
        let verifier = Verifier::start(2).expect("start");
        for name in ["a", "b", "c"] {
            verifier.remember(name, verifier.mac(name, "pw"));
        }
        assert_eq!(verifier.lock().len(), 2);
        assert!(verifier.cached("c", &verifier.mac("c", "pw")));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_instead_of_queueing() {
        let hash = crate::auth::hash_password("s3cret").expect("hash");
        let verifier = std::sync::Arc::new(Verifier::start(1).expect("start"));
        let checks: Vec<_> = (0..verifier.workers() + verifier.queue() + 20)
            .map(|_| {
                let verifier = verifier.clone();
                let hash = hash.clone();
                tokio::spawn(async move { verifier.verify("h", Some(&hash), "wrong").await })
            })
            .collect();
        let mut busy = 0;
        for check in checks {
            if check.await.expect("join") == Verified::Busy {
                busy += 1;
            }
        }
        assert!(busy >= 1, "nothing was refused");
    }
}
