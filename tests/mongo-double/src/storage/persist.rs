//! `--dbpath` persistence: an append-only log of BSON records, compacted into a snapshot
//! (written to a temporary file, fsynced and atomically renamed) every time the store opens.
//!
//! Each command's records are written with one `write` call before its reply is sent, so they
//! survive the double being killed; they are fsynced only for `j: true` / `w: "majority"`
//! writes and on shutdown.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use bson::Document;

const DATA_FILE: &str = "mongo-double.bson";
const LOCK_FILE: &str = "mongo-double.lock";

/// An open data directory.
#[derive(Debug)]
pub struct Persist {
    file: File,
    /// Held for the lifetime of the store (advisory exclusive lock).
    _lock: File,
}

/// Locks `dir` and reads every intact record; a torn record at the end is ignored.
pub fn open(dir: &Path) -> io::Result<(File, Vec<Document>)> {
    std::fs::create_dir_all(dir)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    lock.try_lock().map_err(|_| {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("dbpath {} is in use by another mongo-double", dir.display()),
        )
    })?;
    let mut bytes = Vec::new();
    match File::open(dir.join(DATA_FILE)) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut records = Vec::new();
    let mut pos = 0;
    while bytes.len() - pos >= 5 {
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[pos..pos + 4]);
        let len = i32::from_le_bytes(len);
        if len < 5 || len as usize > bytes.len() - pos {
            break;
        }
        match Document::from_reader(&bytes[pos..pos + len as usize]) {
            Ok(d) => records.push(d),
            Err(_) => break,
        }
        pos += len as usize;
    }
    Ok((lock, records))
}

impl Persist {
    /// Writes `records` as the new snapshot and opens it for appending.
    pub fn rewrite(dir: &Path, lock: File, records: &[Document]) -> io::Result<Persist> {
        let tmp = dir.join(format!("{DATA_FILE}.tmp"));
        {
            let mut f = File::create(&tmp)?;
            let mut buf = Vec::new();
            for r in records {
                r.to_writer(&mut buf).map_err(io::Error::other)?;
                if buf.len() > 1 << 20 {
                    f.write_all(&buf)?;
                    buf.clear();
                }
            }
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, dir.join(DATA_FILE))?;
        File::open(dir)?.sync_all()?;
        let file = OpenOptions::new().append(true).open(dir.join(DATA_FILE))?;
        Ok(Persist { file, _lock: lock })
    }

    /// Appends records in one write; fsyncs when `sync`.
    pub fn append(&mut self, records: &[Document], sync: bool) -> io::Result<()> {
        if !records.is_empty() {
            let mut buf = Vec::new();
            for r in records {
                r.to_writer(&mut buf).map_err(io::Error::other)?;
            }
            self.file.write_all(&buf)?;
        }
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }
}
