//! Where chunk files live under the chunk root. Backup tools copy this tree as it is.
//!
//! Layout 2 (this build writes it): `<root>/<hh>/<file id>.<index>.<generation>`, where `<hh>`
//! is the file ID's first two hex digits. File IDs are random, so the 256 directories fill
//! evenly, and a new file costs the chunk filesystem one new inode, not new directories too.
//!
//! Layout 1 (earlier builds): `<root>/<hh>/<hh>/<file id>/<index>.<generation>`, a directory
//! per file. Kept here so that a chunk root in layout 1 can be converted (see storaged).

use std::path::{Path, PathBuf};

use crate::ids::FileId;

/// The layout this build writes.
pub const LAYOUT_VERSION: u32 = 2;

/// The file in the chunk root that records its layout (`2\n`). A root without it holds
/// layout 1, or nothing yet.
pub const LAYOUT_FILE: &str = "LAYOUT";

/// The directory that holds the chunk files of `file` (and of other files).
pub fn chunk_dir(root: &Path, file: FileId) -> PathBuf {
    root.join(&file.to_hex()[0..2])
}

/// The path of one chunk file.
pub fn chunk_path(root: &Path, file: FileId, index: u64, generation: u64) -> PathBuf {
    chunk_dir(root, file).join(chunk_name(file, index, generation))
}

/// The name of one chunk file in its directory: `<file id>.<index>.<generation>`, the file ID
/// in 16 lowercase hex digits, index and generation in decimal.
pub fn chunk_name(file: FileId, index: u64, generation: u64) -> String {
    format!("{}.{index}.{generation}", file.to_hex())
}

/// Parses a chunk file name back into (file, index, generation).
pub fn parse_chunk_name(name: &str) -> Option<(FileId, u64, u64)> {
    let (file, rest) = name.split_once('.')?;
    let file = parse_file_id(file)?;
    let (index, generation) = parse_v1_chunk_name(rest)?;
    Some((file, index, generation))
}

fn parse_file_id(hex: &str) -> Option<FileId> {
    (hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u64::from_str_radix(hex, 16).ok().map(FileId))
        .flatten()
}

/// Layout 1: the directory of one file's chunk files.
pub fn v1_file_dir(root: &Path, file: FileId) -> PathBuf {
    let hex = file.to_hex();
    root.join(&hex[0..2]).join(&hex[2..4]).join(&hex)
}

/// Layout 1: the path of one chunk file.
pub fn v1_chunk_path(root: &Path, file: FileId, index: u64, generation: u64) -> PathBuf {
    v1_file_dir(root, file).join(format!("{index}.{generation}"))
}

/// Layout 1: parses a file directory's name into the file ID.
pub fn parse_v1_file_dir(name: &str) -> Option<FileId> {
    parse_file_id(name)
}

/// Layout 1: parses a chunk file name (`<index>.<generation>`) into (index, generation).
pub fn parse_v1_chunk_name(name: &str) -> Option<(u64, u64)> {
    let (index, generation) = name.split_once('.')?;
    let parse = |digits: &str| {
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    };
    Some((parse(index)?, parse(generation)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fan_out_by_the_file_id() {
        let file = FileId(0xabcd_0123_4567_89ef);
        let path = chunk_path(Path::new("/c"), file, 3, 12);
        assert_eq!(path, Path::new("/c/ab/abcd0123456789ef.3.12"));
        assert_eq!(
            parse_chunk_name("abcd0123456789ef.3.12"),
            Some((file, 3, 12))
        );
        for bad in [
            "abcd0123456789ef.3",
            "abcd0123456789ef.3.",
            "abcd0123456789ef..1",
            "abcd0123456789ef.a.1",
            "abcd0123456789ef.1.2.3",
            "abcd0123456789e.1.2",
            "ABCD0123456789EF.1.2",
            "abcd0123456789eg.1.2",
            "abcd0123456789ef.-1.2",
            ".tmp-0011223344556677",
            "LAYOUT",
        ] {
            assert_eq!(parse_chunk_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn layout_1_paths_stay_known() {
        let path = v1_chunk_path(Path::new("/c"), FileId(0xabcd_0123_4567_89ef), 3, 12);
        assert_eq!(path, Path::new("/c/ab/cd/abcd0123456789ef/3.12"));
        assert_eq!(parse_v1_chunk_name("3.12"), Some((3, 12)));
        for bad in ["3", "3.", ".1", "a.1", "1.b", "1.2.3", "-1.2", "+1.2"] {
            assert_eq!(parse_v1_chunk_name(bad), None, "{bad}");
        }
        assert_eq!(
            parse_v1_file_dir("abcd0123456789ef"),
            Some(FileId(0xabcd_0123_4567_89ef))
        );
    }
}
