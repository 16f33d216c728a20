//! Claiming chunk files as descriptors from a storaged on this machine (see storaged's
//! `descriptors` module and docs/format.md section 6): the chunk's bytes are then read from
//! the file here, not copied through the daemon and the gRPC stream.

use std::fs::File;
use std::io::{IoSliceMut, Read, Seek, Write};
use std::mem::MaybeUninit;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use format::limits::SEALED_CHUNK_BYTES_MAX;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// Idle connections kept for later claims.
const IDLE_CONNECTIONS_MAX: usize = 8;
/// How long chunks come as bytes after the descriptor socket could not be reached (not
/// bind-mounted into a container, say, or an older storaged).
const UNREACHABLE_PAUSE: Duration = Duration::from_secs(60);

/// The descriptor socket of one storaged, and connections to it.
#[derive(Debug)]
pub struct Claims {
    socket: PathBuf,
    idle: Mutex<Vec<UnixStream>>,
    /// Set when the socket could not be reached: until when not to try again.
    unreachable_until: Mutex<Option<Instant>>,
}

impl Claims {
    /// For a server reached over the Unix socket `api`.
    pub fn new(api: &std::path::Path) -> Claims {
        Claims {
            socket: proto::descriptor_socket(api),
            idle: Mutex::new(Vec::new()),
            unreachable_until: Mutex::new(None),
        }
    }

    /// Whether to ask for descriptors now: not while the socket was lately unreachable.
    pub fn usable(&self) -> bool {
        let until = *self.unreachable_until.lock().expect("claims poisoned");
        until.is_none_or(|until| Instant::now() >= until)
    }

    /// Claims the chunk file of `ticket` and reads it whole; the descriptor comes along.
    /// `keep`: the caller keeps the descriptor to read parts of the file again, so its pages
    /// stay in the page cache. Blocks.
    pub fn read(&self, ticket: &[u8], keep: bool) -> std::io::Result<(File, Bytes)> {
        let file = self.claim(ticket)?;
        let sealed = read_chunk_file(&file, keep)?;
        Ok((file, sealed))
    }

    fn connect(&self) -> std::io::Result<UnixStream> {
        UnixStream::connect(&self.socket).inspect_err(|error| {
            let mut until = self.unreachable_until.lock().expect("claims poisoned");
            if until.is_none_or(|until| Instant::now() >= until) {
                tracing::warn!(socket = %self.socket.display(), %error, "storaged's descriptor socket is unreachable; chunks come as bytes for a minute");
            }
            *until = Some(Instant::now() + UNREACHABLE_PAUSE);
        })
    }

    fn claim(&self, ticket: &[u8]) -> std::io::Result<File> {
        if ticket.len() != proto::DESCRIPTOR_TICKET_BYTES {
            return Err(std::io::Error::other(format!(
                "storaged sent a ticket of {} bytes",
                ticket.len()
            )));
        }
        let idle = self.idle.lock().expect("claims poisoned").pop();
        // An idle connection may have been closed by the server (idle too long, or restarted)
        // before it saw the ticket: then a new one.
        let answered = match idle {
            Some(stream) => ask(stream, ticket).or_else(|_| ask(self.connect()?, ticket)),
            None => ask(self.connect()?, ticket),
        };
        let (stream, status, file) = answered?;
        let mut idle = self.idle.lock().expect("claims poisoned");
        if idle.len() < IDLE_CONNECTIONS_MAX {
            idle.push(stream);
        }
        match (status, file) {
            (proto::DESCRIPTOR_GRANTED, Some(file)) => Ok(file),
            _ => Err(std::io::Error::other(
                "storaged refused the ticket (expired, used, or not ours)",
            )),
        }
    }
}

/// Sends a ticket; the connection, the status byte and the descriptor that may come with it.
fn ask(mut stream: UnixStream, ticket: &[u8]) -> std::io::Result<(UnixStream, u8, Option<File>)> {
    stream.write_all(ticket)?;
    let (status, file) = receive(&stream)?;
    Ok((stream, status, file))
}

/// One status byte and the descriptor that may come with it.
fn receive(stream: &UnixStream) -> std::io::Result<(u8, Option<File>)> {
    let mut status = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    loop {
        match rustix::net::recvmsg(
            stream,
            &mut [IoSliceMut::new(&mut status)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(received) if received.bytes == 1 => break,
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "storaged closed the descriptor socket",
                ));
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let file = ancillary.drain().find_map(|message| match message {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next().map(File::from),
        _ => None,
    });
    Ok((status[0], file))
}

/// A chunk file's bytes, at most one sealed chunk; unless `keep`, its pages are dropped from
/// the page cache afterwards (the plaintext cache is what serves reads again).
fn read_chunk_file(file: &File, keep: bool) -> std::io::Result<Bytes> {
    let len = file.metadata()?.len();
    if len > SEALED_CHUNK_BYTES_MAX as u64 {
        return Err(std::io::Error::other(format!(
            "the chunk file holds {len} bytes, more than a sealed chunk"
        )));
    }
    let mut sealed = Vec::with_capacity(len as usize);
    // From the start, wherever the server left the shared file offset.
    let mut file = file;
    file.seek(std::io::SeekFrom::Start(0))?;
    file.take(len).read_to_end(&mut sealed)?;
    if !keep {
        let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
    }
    Ok(sealed.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_socket_pauses_asking_for_descriptors() {
        let nowhere = std::path::Path::new("/nonexistent/vault/storaged.sock");
        let claims = Claims::new(nowhere);
        assert!(claims.usable());
        assert!(claims.read(&[0; 16], false).is_err());
        assert!(!claims.usable(), "no socket: bytes for a while");
    }
}
