//! Chunk files handed to local clients as descriptors, so that a chunk's bytes are read from
//! the file by the client itself instead of being copied through this daemon and the gRPC
//! stream (five passes over 8 MiB become one).
//!
//! `GetChunk` with `descriptor` set, from a client on the Unix socket, does every check a
//! `GetChunk` does, then opens the chunk file read-only and answers with a one-time ticket
//! instead of the bytes. The client claims the descriptor on the descriptor socket
//! ([`proto::descriptor_socket`]): it writes the 16-byte ticket and reads one status byte, 0 with
//! the descriptor attached (`SCM_RIGHTS`), 1 without. A ticket is good once, for
//! [`TICKET_LIFETIME`], and only for a peer of the same user ID as the one it was issued to.
//! The descriptor grants nothing the bytes would not: it reads the ciphertext of one chunk
//! file, which never changes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, Read};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// How long a ticket may wait to be claimed.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(10);
/// Tickets outstanding at once; past this, chunks go out as bytes.
const TICKETS_MAX: usize = 256;
/// Descriptor socket connections served at once (a thread each).
const CONNECTIONS_MAX: usize = 64;
/// A connection that sends no claim for this long is closed (clients connect again).
const IDLE_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

pub type Ticket = [u8; proto::DESCRIPTOR_TICKET_BYTES];

struct Issued {
    file: File,
    uid: u32,
    at: Instant,
}

/// The tickets issued and not yet claimed.
#[derive(Default)]
pub struct Descriptors {
    issued: Mutex<HashMap<Ticket, Issued>>,
}

impl std::fmt::Debug for Descriptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Descriptors")
    }
}

impl Descriptors {
    /// A ticket for `file`, claimable by a peer with user ID `uid`; `None` when too many wait.
    pub fn issue(&self, file: File, uid: u32) -> Option<Ticket> {
        let mut issued = self.issued.lock().expect("tickets poisoned");
        issued.retain(|_, i| i.at.elapsed() < TICKET_LIFETIME);
        if issued.len() >= TICKETS_MAX {
            return None;
        }
        let ticket = identity::random_bytes::<{ proto::DESCRIPTOR_TICKET_BYTES }>();
        let at = Instant::now();
        issued.insert(ticket, Issued { file, uid, at });
        Some(ticket)
    }

    /// The file of a ticket, which is used up; `None` if unknown, expired or another user's.
    pub fn claim(&self, ticket: &Ticket, uid: u32) -> Option<File> {
        let mut issued = self.issued.lock().expect("tickets poisoned");
        let found = issued.remove(ticket);
        issued.retain(|_, i| i.at.elapsed() < TICKET_LIFETIME);
        let found = found?;
        (found.uid == uid && found.at.elapsed() < TICKET_LIFETIME).then_some(found.file)
    }
}

/// Serves claims on `listener` until the process ends: a thread accepts, a thread per
/// connection answers its claims in turn.
pub fn serve(listener: UnixListener, descriptors: Arc<Descriptors>) -> std::io::Result<()> {
    let connections = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("descriptors".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(error) => {
                        // Out of descriptors, say: let some go before trying again.
                        tracing::warn!(%error, "accepting on the descriptor socket");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if connections.fetch_add(1, Ordering::AcqRel) >= CONNECTIONS_MAX {
                    connections.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!("too many descriptor socket connections; closing one");
                    continue;
                }
                let (descriptors, counted) = (descriptors.clone(), connections.clone());
                let spawned = std::thread::Builder::new()
                    .name("descriptor-claims".into())
                    .spawn(move || {
                        answer_claims(stream, &descriptors);
                        counted.fetch_sub(1, Ordering::AcqRel);
                    });
                if let Err(error) = spawned {
                    // The thread that would have counted it out never ran.
                    connections.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!(%error, "could not start a descriptor socket thread");
                }
            }
        })?;
    Ok(())
}

/// Answers the claims of one connection until it closes or misbehaves.
fn answer_claims(mut stream: UnixStream, descriptors: &Descriptors) {
    let uid = match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(peer) => peer.uid.as_raw(),
        Err(_) => return,
    };
    if stream
        .set_read_timeout(Some(IDLE_CONNECTION_LIFETIME))
        .is_err()
    {
        return;
    }
    let mut ticket: Ticket = [0; proto::DESCRIPTOR_TICKET_BYTES];
    while stream.read_exact(&mut ticket).is_ok() {
        let file = descriptors.claim(&ticket, uid);
        if send(&stream, file.as_ref()).is_err() {
            return;
        }
    }
}

/// Sends the status byte, with the descriptor attached when there is one.
fn send(stream: &UnixStream, file: Option<&File>) -> std::io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    let fds;
    let status = match file {
        Some(file) => {
            fds = [file.as_fd()];
            if !ancillary.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(std::io::Error::other("no room for the descriptor"));
            }
            proto::DESCRIPTOR_GRANTED
        }
        None => proto::DESCRIPTOR_REFUSED,
    };
    loop {
        match rustix::net::sendmsg(
            stream,
            &[IoSlice::new(&[status])],
            &mut ancillary,
            SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(error) => return Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_good_once_and_only_for_its_user() {
        let descriptors = Descriptors::default();
        let file = || tempfile::tempfile().expect("file");
        let ticket = descriptors.issue(file(), 1000).expect("ticket");
        assert!(descriptors.claim(&ticket, 1001).is_none(), "another user");
        assert!(
            descriptors.claim(&ticket, 1000).is_none(),
            "used up by the failed claim"
        );
        let ticket = descriptors.issue(file(), 1000).expect("ticket");
        assert!(
            descriptors.claim(&[0; 16], 1000).is_none(),
            "unknown ticket"
        );
        assert!(descriptors.claim(&ticket, 1000).is_some());
        assert!(descriptors.claim(&ticket, 1000).is_none(), "once");
        for _ in 0..TICKETS_MAX {
            descriptors.issue(file(), 1000).expect("ticket");
        }
        assert!(descriptors.issue(file(), 1000).is_none(), "bounded");
    }
}
