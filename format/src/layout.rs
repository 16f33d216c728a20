//! Where chunk files live under the chunk root. Backup tools copy this tree as it is.
//!
//! `<root>/<hh>/<hh>/<file id: 16 hex>/<index>.<generation>`, where the two `<hh>` levels are
//! the file ID's first four hex digits. File IDs are random, so the fan-out is even.

use std::path::{Path, PathBuf};

use crate::ids::FileId;

/// The directory that holds every chunk of `file`.
pub fn file_dir(root: &Path, file: FileId) -> PathBuf {
    let hex = file.to_hex();
    root.join(&hex[0..2]).join(&hex[2..4]).join(&hex)
}

/// The name of one chunk file inside its file's directory: `<index>.<generation>`, decimal.
pub fn chunk_name(index: u64, generation: u64) -> String {
    format!("{index}.{generation}")
}

/// Parses a chunk file name back into (index, generation).
pub fn parse_chunk_name(name: &str) -> Option<(u64, u64)> {
    let (index, generation) = name.split_once('.')?;
    let parse = |digits: &str| {
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    };
    Some((parse(index)?, parse(generation)?))
}

pub fn chunk_path(root: &Path, file: FileId, index: u64, generation: u64) -> PathBuf {
    file_dir(root, file).join(chunk_name(index, generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fan_out_by_the_file_id() {
        let path = chunk_path(Path::new("/c"), FileId(0xabcd_0123_4567_89ef), 3, 12);
        assert_eq!(path, Path::new("/c/ab/cd/abcd0123456789ef/3.12"));
        assert_eq!(parse_chunk_name("3.12"), Some((3, 12)));
        for bad in ["3", "3.", ".1", "a.1", "1.b", "1.2.3", "-1.2", "+1.2"] {
            assert_eq!(parse_chunk_name(bad), None, "{bad}");
        }
    }
}
