//! The administrator's and the user's tools run against a test vault, as a script would run
//! them: `storaged backup`/`restore`/`fsck`, `tar` of the chunk root, `vaultfs fsck`; and the
//! chunk files of a file, named the way fsck names them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use format::ids::FileId;

use crate::daemon::Storaged;
use crate::mount::ClientFiles;

/// What a command printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn of(command: &mut Command) -> Run {
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Fails the test, showing the output, unless it exited with one of `codes`.
    pub fn expect_code(&self, codes: &[i32], what: &str) -> &Run {
        assert!(
            self.code.is_some_and(|c| codes.contains(&c)),
            "{what}: exit {:?}, wanted one of {codes:?}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// The stdout lines whose first word is `label`, without it (trimmed).
    pub fn findings(&self, label: &str) -> BTreeSet<String> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(label))
            .filter(|rest| rest.starts_with(' '))
            .map(|rest| rest.trim().to_string())
            .collect()
    }

    /// The first word of every stdout line but the summary (`checked ...`).
    pub fn labels(&self) -> BTreeSet<String> {
        self.stdout
            .lines()
            .filter(|l| !l.starts_with("checked "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }
}

/// `storaged COMMAND --data-dir DATA_DIR [--meta URL] ARGS...`.
pub fn storaged(command: &str, data_dir: &Path, meta_url: Option<&str>, args: &[&Path]) -> Run {
    let mut cmd = Command::new(crate::binary("storaged"));
    cmd.arg(command).arg("--data-dir").arg(data_dir);
    if let Some(url) = meta_url {
        cmd.args(["--meta", url]);
    }
    Run::of(cmd.args(args).env("RUST_LOG", "warn"))
}

/// `storaged fsck` (with `--repair` if asked) of a daemon's vault.
pub fn storaged_fsck(daemon: &Storaged, repair: bool) -> Run {
    let repair: &[&Path] = if repair {
        &[Path::new("--repair")]
    } else {
        &[]
    };
    storaged("fsck", daemon.data_dir(), daemon.meta_url(), repair)
}

/// `vaultfs fsck PATH` as `client`'s user, over the daemon's socket.
pub fn vaultfs_fsck(daemon: &Storaged, client: &ClientFiles, path: &str) -> Run {
    Run::of(
        Command::new(crate::binary("vaultfs"))
            .arg("fsck")
            .args(client.args(daemon))
            .arg(path)
            .env("RUST_LOG", "warn"),
    )
}

/// `tar -cf ARCHIVE -C CHUNK_ROOT .`, while the daemon may write into it: a file that
/// vanishes or changes meanwhile (spare files, `docs/format.md` section 3) is not an error.
pub fn tar_create(chunk_root: &Path, archive: &Path) {
    Run::of(
        Command::new("tar")
            .args(["--ignore-failed-read", "--warning=no-file-changed"])
            .args(["--warning=no-file-removed", "-cf"])
            .arg(archive)
            .arg("-C")
            .arg(chunk_root)
            .arg("."),
    )
    // GNU tar: 1 is "some files changed while being read", which only spare files do.
    .expect_code(&[0, 1], "tar of the chunk root");
}

/// Unpacks a chunk root archive into `chunk_root` (made if missing).
pub fn tar_extract(archive: &Path, chunk_root: &Path) {
    std::fs::create_dir_all(chunk_root).expect("chunk root");
    Run::of(
        Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(chunk_root),
    )
    .expect_code(&[0], "untar of the chunk root");
}

/// Every chunk file of file `ino` under `chunk_root` (superseded ones too) with its index,
/// by index, then generation.
fn indexed_chunk_files(chunk_root: &Path, ino: u64) -> Vec<(u64, u64, PathBuf)> {
    let file = FileId(ino);
    let dir = format::layout::chunk_dir(chunk_root, file);
    let mut files: Vec<(u64, u64, PathBuf)> = std::fs::read_dir(&dir)
        .expect("the file's chunk directory")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (owner, index, generation) = format::layout::parse_chunk_name(&name)?;
            (owner == file).then(|| (index, generation, e.path()))
        })
        .collect();
    files.sort();
    files
}

/// Every chunk file of file `ino` under `chunk_root`, superseded ones too.
pub fn chunk_files_all(chunk_root: &Path, ino: u64) -> Vec<PathBuf> {
    let files = indexed_chunk_files(chunk_root, ino);
    files.into_iter().map(|(_, _, p)| p).collect()
}

/// The current chunk files of file `ino`, in index order, once its uploads are committed:
/// the newest generation at each index (a rewrite takes a higher one, `docs/format.md`
/// section 6; the one it supersedes stays a grace period).
pub fn chunk_files(chunk_root: &Path, ino: u64) -> Vec<PathBuf> {
    let mut newest: Vec<(u64, PathBuf)> = Vec::new();
    for (index, _, path) in indexed_chunk_files(chunk_root, ino) {
        match newest.last_mut() {
            Some(last) if last.0 == index => last.1 = path,
            _ => newest.push((index, path)),
        }
    }
    newest.into_iter().map(|(_, p)| p).collect()
}

/// How `storaged fsck` names the chunk in the chunk file at `path`: "file F chunk I
/// generation G".
pub fn chunk_id(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).expect("a name");
    let (file, index, generation) =
        format::layout::parse_chunk_name(name).expect("a chunk file name");
    format!("file {file} chunk {index} generation {generation}")
}

/// What `findings` lines are about: the part before the first colon (`SUBJECT: reason`), a
/// chunk ID of `storaged fsck` or a path of `vaultfs fsck`.
pub fn subjects(findings: &BTreeSet<String>) -> BTreeSet<String> {
    findings
        .iter()
        .map(|f| {
            f.split_once(':')
                .map_or(f.as_str(), |(id, _)| id)
                .to_string()
        })
        .collect()
}

/// Writes `bytes` to `path` and fsyncs the file and its directory.
pub fn write_synced(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file =
        std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.write_all(bytes).expect("write");
    file.sync_all().expect("fsync");
    let dir = path.parent().expect("a parent");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync the directory");
}
