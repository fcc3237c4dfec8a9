//! The snapshot file, `snapshot/snapshot.bin`: the latest snapshot's meta and state, checksummed,
//! replaced atomically. Its layout:
//!
//! `[u8 codec version][u32 LE crc32 of the rest][u32 LE meta length][meta][state]`
//!
//! where the meta ([`SnapshotMeta`]) and the state (the snapshot's data, as Raft sends it to a
//! follower) are each in gm's binary encoding ([`codec`]). A file whose checksum does not match,
//! or of a format version this gm does not read, stops the node with an error that says so; so
//! does the JSON `snapshot.json` of a gm from before the binary encoding.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::codec::{self, CodecError};
use super::SnapshotMeta;

const FILE: &str = "snapshot.bin";
/// The snapshot file of a gm from before the binary encoding.
const OLD_JSON_FILE: &str = "snapshot.json";
/// Version byte, crc, meta length.
const HEADER: usize = 9;

/// Why the snapshot file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("snapshot {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("snapshot {} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "snapshot {} cannot be read by this gm: {source}; a data dir of another gm version cannot \
         be opened: start this node on an empty one",
        path.display()
    )]
    Format { path: PathBuf, source: CodecError },
}

impl From<SnapshotFileError> for io::Error {
    fn from(e: SnapshotFileError) -> io::Error {
        let kind = match &e {
            SnapshotFileError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// The size of the snapshot file in `dir`, if there is one.
pub fn size(dir: &Path) -> Option<u64> {
    fs::metadata(dir.join(FILE)).ok().map(|m| m.len())
}

/// The meta and the state's bytes of the snapshot in `dir`, if there is one.
pub fn read(dir: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, SnapshotFileError> {
    let path = dir.join(FILE);
    let old = dir.join(OLD_JSON_FILE);
    if old.exists() {
        let source = CodecError::UnknownVersion { found: b'{' };
        return Err(SnapshotFileError::Format { path: old, source });
    }
    let mut bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotFileError::Io { path, source }),
    };
    let corrupt = |reason: &str| SnapshotFileError::Corrupt { path: path.clone(), reason: reason.to_owned() };
    let Some(header) = bytes.get(..HEADER) else { return Err(corrupt("shorter than its header")) };
    if header[0] != codec::VERSION {
        let source = CodecError::UnknownVersion { found: header[0] };
        return Err(SnapshotFileError::Format { path, source });
    }
    let crc = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let meta_len = u32::from_le_bytes([header[5], header[6], header[7], header[8]]) as usize;
    if crc32fast::hash(&bytes[5..]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let Some(meta) = bytes.get(HEADER..HEADER + meta_len) else { return Err(corrupt("meta runs past the end")) };
    let meta =
        codec::decode(meta).map_err(|e| corrupt(&format!("meta passes its checksum but does not decode: {e}")))?;
    // The state's bytes are the rest of the file: moved out, not copied (it can be large).
    bytes.drain(..HEADER + meta_len);
    Ok(Some((meta, bytes)))
}

/// Replaces the snapshot file in `dir` atomically: a crash leaves the old one or the new one,
/// never half.
pub fn write(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
    let meta = codec::encode(meta).map_err(io::Error::other)?;
    let meta_len = u32::try_from(meta.len()).map_err(io::Error::other)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&meta_len.to_le_bytes());
    crc.update(&meta);
    crc.update(data);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&[codec::VERSION])?;
    f.write_all(&crc.finalize().to_le_bytes())?;
    f.write_all(&meta_len.to_le_bytes())?;
    f.write_all(&meta)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(FILE))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta { snapshot_id: "3-7".into(), ..SnapshotMeta::default() }
    }

    #[test]
    fn written_then_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read(dir.path()).expect("no snapshot").is_none());
        write(dir.path(), &meta(), b"state bytes").expect("write");
        let (back, data) = read(dir.path()).expect("read").expect("a snapshot");
        assert_eq!(back, meta());
        assert_eq!(data, b"state bytes");
        assert_eq!(size(dir.path()), Some((HEADER + codec::encode(&meta()).expect("meta").len() + 11) as u64));
    }

    #[test]
    fn a_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), &meta(), b"state bytes").expect("write");
        let path = dir.path().join(FILE);
        let mut bytes = fs::read(&path).expect("read file");
        *bytes.last_mut().expect("a byte") ^= 0x40;
        fs::write(&path, bytes).expect("write file");
        let error = read(dir.path()).expect_err("corrupt").to_string();
        assert!(error.contains("checksum mismatch"), "{error}");
    }

    #[test]
    fn the_json_snapshot_of_an_older_gm_is_refused_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(OLD_JSON_FILE), b"{\"last_log_id\":null}\n{}").expect("write");
        let error = read(dir.path()).expect_err("old format").to_string();
        assert!(error.contains("JSON") && error.contains("snapshot.json"), "{error}");
    }
}
