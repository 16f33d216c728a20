//! Identifiers that appear in chunk headers, authenticated data and paths.

use std::fmt;

/// A vault: one deployment's tree of files. Random 128 bits, fixed at `storaged` set-up.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VaultId(pub [u8; 16]);

/// A file or directory (an inode). 64 bits so that it can be the FUSE inode number; 0 is never
/// valid and 1 is the vault's root directory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u64);

impl FileId {
    /// The vault's root directory.
    pub const ROOT: FileId = FileId(1);

    /// The name of this file's chunk directory: 16 lowercase hex digits.
    pub fn to_hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

impl VaultId {
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// Parses 32 hex digits.
    pub fn from_hex(text: &str) -> Option<VaultId> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(text.trim(), &mut bytes).ok()?;
        Some(VaultId(bytes))
    }
}

impl fmt::Debug for VaultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaultId({})", self.to_hex())
    }
}

impl fmt::Display for VaultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({:016x})", self.0)
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Declares a `u64` newtype with the conversions every such number needs, so that an inode
/// number cannot be passed where a generation is expected.
macro_rules! number {
    ($(#[$doc:meta])* $name:ident, $short:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl $name {
            /// The number itself, for the wire and for storage.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl From<u64> for $name {
            fn from(number: u64) -> $name {
                $name(number)
            }
        }

        impl From<$name> for u64 {
            fn from(number: $name) -> u64 {
                number.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($short, "{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

number!(
    /// An open file or directory of one client (FUSE's `fh`): meaningful only to the client
    /// that handed it out.
    Handle,
    "fh#"
);
number!(
    /// How many times a file's or directory's record changed: each committed change makes it
    /// one larger, so a client can tell whether what it knows is current.
    Version,
    "v"
);
number!(
    /// A chunk's write generation: 1 for a chunk's first write, one more for each rewrite.
    /// Bound into the chunk's authenticated data, so an older copy put back fails to open.
    Generation,
    "gen"
);
number!(
    /// A chunk's position in its file: chunk `i` holds plaintext bytes from `i * CHUNK_BYTES`.
    ChunkIndex,
    "chunk#"
);

impl Version {
    /// The version a change to a record at this version makes.
    pub const fn next(self) -> Version {
        Version(self.0 + 1)
    }
}

impl Generation {
    /// The generation of a chunk's first write.
    pub const FIRST: Generation = Generation(1);

    /// The generation a rewrite of a chunk at this generation gets.
    pub const fn next(self) -> Generation {
        Generation(self.0 + 1)
    }
}

impl ChunkIndex {
    /// The chunk that holds plaintext byte `offset`.
    pub const fn of_offset(offset: u64) -> ChunkIndex {
        ChunkIndex(offset / crate::limits::CHUNK_BYTES as u64)
    }

    /// The file offset of this chunk's first plaintext byte.
    pub const fn start(self) -> u64 {
        self.0 * crate::limits::CHUNK_BYTES as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::CHUNK_BYTES;

    #[test]
    fn chunk_indexes_and_offsets_agree() {
        let chunk = CHUNK_BYTES as u64;
        assert_eq!(ChunkIndex::of_offset(0), ChunkIndex(0));
        assert_eq!(ChunkIndex::of_offset(chunk - 1), ChunkIndex(0));
        assert_eq!(ChunkIndex::of_offset(chunk), ChunkIndex(1));
        assert_eq!(ChunkIndex(3).start(), 3 * chunk);
    }

    #[test]
    fn numbers_print_as_numbers_and_debug_with_their_kind() {
        assert_eq!(Generation::FIRST.next().to_string(), "2");
        assert_eq!(format!("{:?}", Version(7).next()), "v8");
        assert_eq!(format!("{:?}", Handle(3)), "fh#3");
        assert_eq!(u64::from(ChunkIndex(5)), 5);
    }
}
