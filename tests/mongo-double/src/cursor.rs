//! Server-side cursors (`find`/`aggregate` results and change streams) for `getMore`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bson::Document;

use crate::changestream::StreamCursor;
use crate::wire::MAX_BSON_OBJECT_SIZE;

/// Idle cursors are reaped after this long, like the server's `cursorTimeoutMillis` default.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// What a cursor iterates.
#[derive(Debug)]
pub enum CursorKind {
    Docs(VecDeque<Document>),
    Stream(Box<StreamCursor>),
}

#[derive(Debug)]
pub struct Cursor {
    pub ns: String,
    pub kind: CursorKind,
    last_used: Instant,
}

/// All open cursors of a server.
#[derive(Debug, Default)]
pub struct Cursors {
    map: HashMap<i64, Cursor>,
}

fn random_id() -> i64 {
    let b = bson::Uuid::new().bytes();
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    (i64::from_le_bytes(a) & i64::MAX).max(1)
}

impl Cursors {
    /// Registers a cursor and returns its id.
    pub fn insert(&mut self, ns: String, kind: CursorKind) -> i64 {
        let now = Instant::now();
        self.map
            .retain(|_, c| now.duration_since(c.last_used) < IDLE_TIMEOUT);
        let mut id = random_id();
        while self.map.contains_key(&id) {
            id = random_id();
        }
        self.map.insert(
            id,
            Cursor {
                ns,
                kind,
                last_used: now,
            },
        );
        id
    }

    pub fn get_mut(&mut self, id: i64) -> Option<&mut Cursor> {
        let c = self.map.get_mut(&id)?;
        c.last_used = Instant::now();
        Some(c)
    }

    pub fn remove(&mut self, id: i64) -> Option<Cursor> {
        self.map.remove(&id)
    }

    /// Whether `id` is an open change-stream cursor.
    pub fn is_stream(&self, id: i64) -> bool {
        matches!(
            self.map.get(&id),
            Some(Cursor {
                kind: CursorKind::Stream(_),
                ..
            })
        )
    }
}

/// Takes up to `n` documents (all when `None`), stopping before 16 MiB of documents.
pub fn take_batch(docs: &mut VecDeque<Document>, n: Option<usize>) -> Vec<Document> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while n.is_none_or(|n| out.len() < n) {
        let size = match docs.front() {
            Some(d) => bson::to_vec(d).map(|v| v.len()).unwrap_or(0),
            None => break,
        };
        if !out.is_empty() && bytes + size > MAX_BSON_OBJECT_SIZE {
            break;
        }
        bytes += size;
        if let Some(d) = docs.pop_front() {
            out.push(d);
        }
    }
    out
}
