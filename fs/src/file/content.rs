//! A dirty chunk's bytes: the whole chunk, or only what this client wrote over a committed
//! chunk it did not load.
//!
//! A write into a committed chunk does not fetch and open the chunk's 8 MiB first: it keeps
//! just the bytes written ([`Extents`]), so that a random writer pays for what it writes. The
//! committed chunk is loaded once, when the chunk is sealed (its extents laid over it), and
//! reads in between lay the extents over the committed bytes they read anyway.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use proto::ErrorKind;

use crate::error::FsError;
use crate::shared::{ChunkRead, Shared};

/// Byte runs written into a chunk, by their start: never overlapping, never touching.
#[derive(Clone, Debug, Default)]
pub struct Extents {
    runs: BTreeMap<usize, Vec<u8>>,
    bytes: usize,
}

impl Extents {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Runs held.
    #[cfg(test)]
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Where the last run ends (0 when empty).
    pub fn end(&self) -> usize {
        self.runs
            .last_key_value()
            .map_or(0, |(start, run)| start + run.len())
    }

    /// Writes `data` at `start`, merging the runs it overlaps or touches into one.
    pub fn write(&mut self, start: usize, data: &[u8]) {
        let end = start + data.len();
        let before = self
            .runs
            .range(..=start)
            .next_back()
            .filter(|(at, run)| *at + run.len() >= start)
            .map(|(at, _)| *at);
        let base = before.unwrap_or(start);
        let absorbed: Vec<usize> = self
            .runs
            .range((Bound::Excluded(base), Bound::Included(end)))
            .map(|(at, _)| *at)
            .collect();
        let mut run = before
            .and_then(|at| self.runs.remove(&at))
            .unwrap_or_default();
        self.bytes -= run.len();
        for at in absorbed {
            let other = self.runs.remove(&at).expect("listed");
            self.bytes -= other.len();
            let from = at - base;
            if run.len() < from + other.len() {
                run.resize(from + other.len(), 0);
            }
            run[from..from + other.len()].copy_from_slice(&other);
        }
        if run.len() < end - base {
            run.resize(end - base, 0);
        }
        run[start - base..end - base].copy_from_slice(data);
        self.bytes += run.len();
        self.runs.insert(base, run);
    }

    /// Lays what the runs hold of `at..at + out.len()` over `out`.
    pub fn overlay(&self, at: usize, out: &mut [u8]) {
        let end = at + out.len();
        let first = self
            .runs
            .range(..=at)
            .next_back()
            .map_or(at, |(start, _)| *start);
        for (&start, run) in self.runs.range(first..end) {
            let from = start.max(at);
            let to = (start + run.len()).min(end);
            if from < to {
                out[from - at..to - at].copy_from_slice(&run[from - start..to - start]);
            }
        }
    }

    /// Drops what lies at or past `len`.
    pub fn clip(&mut self, len: usize) {
        let past: Vec<usize> = self.runs.range(len..).map(|(at, _)| *at).collect();
        for at in past {
            let run = self.runs.remove(&at).expect("listed");
            self.bytes -= run.len();
        }
        if let Some((&at, run)) = self.runs.iter_mut().next_back()
            && at + run.len() > len
        {
            self.bytes -= at + run.len() - len;
            run.truncate(len - at);
        }
    }

    /// The one run, taken out as a chunk buffer, when it starts at 0 and covers at least
    /// `0..n` (so nothing of the committed chunk under it is left to show).
    pub fn take_whole(&mut self, n: usize) -> Option<Vec<u8>> {
        let (&at, run) = self.runs.iter().next()?;
        if at != 0 || run.len() < n || self.runs.len() != 1 {
            return None;
        }
        self.bytes = 0;
        self.runs.remove(&0)
    }

    /// The ranges written, in order.
    #[cfg(test)]
    pub fn ranges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.runs.iter().map(|(at, run)| (*at, at + run.len()))
    }
}

/// A dirty chunk's bytes.
#[derive(Clone, Debug)]
pub enum Content {
    /// Every byte of the chunk, from 0 to its length.
    Full(Arc<Vec<u8>>),
    /// Only what was written, over the committed chunk the dirty chunk started from (not
    /// loaded). Shared with the uploads that seal it.
    Sparse(Arc<Extents>),
}

impl Content {
    /// Memory held (what counts against the dirty budget).
    pub fn bytes(&self) -> usize {
        match self {
            Content::Full(data) => data.len(),
            Content::Sparse(extents) => extents.bytes(),
        }
    }
}

/// What sealing a chunk starts from: its bytes, or its written runs and the committed chunk
/// under them (`None`: a hole).
#[derive(Debug)]
pub enum Source {
    Full(Arc<Vec<u8>>),
    Sparse {
        base: Option<ChunkRead>,
        extents: Arc<Extents>,
    },
}

impl Source {
    /// The chunk's `len` bytes: for runs, the committed chunk loaded (through the cache) with
    /// the runs laid over it, zeros where neither holds anything.
    pub async fn bytes(self, shared: &Shared, len: usize) -> Result<Arc<Vec<u8>>, FsError> {
        match self {
            Source::Full(data) if data.len() == len => Ok(data),
            Source::Full(data) => Err(FsError::local(
                ErrorKind::Internal,
                format!("a chunk of {} bytes sealed as {len}", data.len()),
            )),
            Source::Sparse { base, extents } => {
                let mut out = vec![0u8; len];
                keystore::memory::exclude_allocation_from_dumps(&out);
                if let Some(read) = base {
                    let committed = shared.load(&read).await?;
                    let n = committed.plaintext.len().min(len);
                    out[..n].copy_from_slice(&committed.plaintext[..n]);
                }
                extents.overlay(0, &mut out);
                Ok(Arc::new(out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reference: a plain buffer and a written mask.
    fn check(extents: &Extents, model: &[Option<u8>]) {
        let mut out = vec![0xAAu8; model.len()];
        extents.overlay(0, &mut out);
        for (i, expected) in model.iter().enumerate() {
            if let Some(b) = expected {
                assert_eq!(out[i], *b, "byte {i}");
            } else {
                assert_eq!(out[i], 0xAA, "byte {i} was never written");
            }
        }
        let written = model.iter().filter(|b| b.is_some()).count();
        assert_eq!(extents.bytes(), written);
        let ranges: Vec<_> = extents.ranges().collect();
        for pair in ranges.windows(2) {
            assert!(
                pair[0].1 < pair[1].0,
                "runs neither overlap nor touch: {ranges:?}"
            );
        }
    }

    #[test]
    fn writes_merge_into_runs_that_read_back() {
        let mut extents = Extents::default();
        let mut model = vec![None; 100];
        let mut write = |extents: &mut Extents, at: usize, len: usize, byte: u8| {
            extents.write(at, &vec![byte; len]);
            for b in &mut model[at..at + len] {
                *b = Some(byte);
            }
            check(extents, &model);
        };
        write(&mut extents, 10, 5, 1);
        write(&mut extents, 30, 5, 2);
        write(&mut extents, 15, 3, 3); // touches the first
        write(&mut extents, 50, 10, 4);
        write(&mut extents, 12, 40, 5); // swallows two, reaches into the third
        assert_eq!(extents.runs(), 1);
        write(&mut extents, 0, 3, 6);
        write(&mut extents, 90, 10, 7);
        assert_eq!(extents.end(), 100);
        let mut part = vec![0u8; 10];
        extents.overlay(55, &mut part);
        assert_eq!(part, [4, 4, 4, 4, 4, 0, 0, 0, 0, 0]);
        extents.clip(95);
        assert_eq!(extents.end(), 95);
        assert!(extents.take_whole(10).is_none(), "holes under it");
    }

    #[test]
    fn a_run_from_zero_makes_the_chunk_whole() {
        let mut extents = Extents::default();
        for at in (0..64).step_by(8) {
            extents.write(at, &[at as u8; 8]);
        }
        assert_eq!(extents.runs(), 1);
        assert!(extents.take_whole(65).is_none());
        assert_eq!(extents.take_whole(64).map(|v| v.len()), Some(64));
        assert_eq!((extents.runs(), extents.bytes()), (0, 0));
    }
}
