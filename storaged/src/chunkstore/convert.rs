//! The layout of the chunk root: a root of layout 1 is converted to layout 2 (see
//! [`format::layout`]) once, when it opens, and then marked.

use std::fs::{self, File};
use std::io;

use format::layout;

use super::new_file::temp_path;
use super::{ChunkStoreError, DirChunkStore, io_error, read_dir_names, sync_dir, sync_filesystem};

impl DirChunkStore {
    /// Converts a layout 1 root; refuses an unknown layout.
    pub(super) fn check_layout(&self) -> Result<(), ChunkStoreError> {
        let root = &self.root;
        let marker = root.join(layout::LAYOUT_FILE);
        match fs::read_to_string(&marker) {
            Ok(text) if text.trim() == layout::LAYOUT_VERSION.to_string() => return Ok(()),
            Ok(text) => {
                return Err(ChunkStoreError::Damaged {
                    path: marker,
                    reason: format!(
                        "names layout {:?}; this build reads layouts 1 and {}",
                        text.trim(),
                        layout::LAYOUT_VERSION
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("reading", &marker)(e)),
        }
        let moved = self.convert_layout_1()?;
        if moved > 0 {
            tracing::info!(root = %root.display(), chunks = moved, "converted the chunk root from layout 1 to layout {}", layout::LAYOUT_VERSION);
        }
        // The conversion is durable before the marker says it is done.
        sync_filesystem(root)?;
        let temp = temp_path(root);
        fs::write(&temp, format!("{}\n", layout::LAYOUT_VERSION))
            .and_then(|()| File::open(&temp)?.sync_all())
            .and_then(|()| fs::rename(&temp, &marker))
            .map_err(io_error("writing", &marker))?;
        sync_dir(root)
    }

    /// Moves every chunk file of layout 1 to its layout 2 name (a rename: atomic, and safe to
    /// repeat after a crash) and removes the emptied directories. Returns how many moved.
    fn convert_layout_1(&self) -> Result<usize, ChunkStoreError> {
        let mut moved = 0;
        for first in read_dir_names(&self.root)? {
            let first_dir = self.root.join(&first);
            if first.len() != 2 || !first_dir.is_dir() {
                continue;
            }
            for second in read_dir_names(&first_dir)? {
                let second_dir = first_dir.join(&second);
                if second.len() != 2 || !second_dir.is_dir() {
                    continue;
                }
                for name in read_dir_names(&second_dir)? {
                    let file_dir = second_dir.join(&name);
                    let Some(file) = layout::parse_v1_file_dir(&name) else {
                        continue;
                    };
                    for chunk_name in read_dir_names(&file_dir)? {
                        let Some((index, generation)) = layout::parse_v1_chunk_name(&chunk_name)
                        else {
                            continue;
                        };
                        let to = layout::chunk_path(&self.root, file, index, generation);
                        let from = file_dir.join(&chunk_name);
                        fs::rename(&from, &to).map_err(io_error("moving", &from))?;
                        moved += 1;
                    }
                    let _ = fs::remove_dir(&file_dir);
                }
                let _ = fs::remove_dir(&second_dir);
            }
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use format::ids::FileId;

    use super::*;
    use crate::chunkstore::ChunkStore;
    use crate::chunkstore::tests::{chunk, sealed};

    #[test]
    fn a_layout_1_root_is_converted_once_and_then_marked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let chunks = [
            (0xabcd_0000_0000_0001_u64, 0_u64, 1_u64, 100_usize),
            (0xabcd_0000_0000_0001, 1, 7, 90),
            (0x1234_0000_0000_0002, 0, 3, 80),
        ];
        for &(ino, index, generation, len) in &chunks {
            let path = layout::v1_chunk_path(dir.path(), FileId(ino), index, generation);
            fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
            fs::write(&path, sealed(len)).expect("write");
        }
        // Something that is not a chunk stays where it is.
        fs::write(dir.path().join("ab/cd/notes.txt"), b"x").expect("write");
        let store = DirChunkStore::open(dir.path(), true).expect("open converts");
        for &(ino, index, generation, len) in &chunks {
            let chunk = chunk(ino, index, generation);
            assert_eq!(store.get(chunk).expect("moved"), sealed(len));
        }
        assert_eq!(store.list().expect("list").len(), chunks.len());
        assert!(!dir.path().join("12/34").exists(), "emptied dirs go");
        assert!(dir.path().join("ab/cd/notes.txt").exists());
        assert_eq!(
            fs::read_to_string(dir.path().join(layout::LAYOUT_FILE)).expect("marker"),
            "2\n"
        );
        // A layout 1 file appearing later is not looked for: the marker says the root is done.
        DirChunkStore::open(dir.path(), true).expect("opens again");
        fs::write(dir.path().join(layout::LAYOUT_FILE), "9\n").expect("write");
        let error = DirChunkStore::open(dir.path(), true).expect_err("unknown layout");
        assert!(error.to_string().contains("layout"), "{error}");
    }
}
