//! Mounting through `fusermount3` with `auto_unmount`, done here rather than by `fuser` so that a
//! killed client's mount is always cleaned up.
//!
//! fusermount3 stays behind as a helper and waits for its control socket to close. Then it
//! opens the mount point and unmounts only if that fails with ENOTCONN: the FUSE connection is
//! gone, so the client died without unmounting. When a process dies, the kernel closes its
//! descriptors one after another. If the control socket goes before the last `/dev/fuse`
//! descriptor, the helper's open can reach a connection that is still up (nobody will answer
//! it) and then fails with ECONNABORTED when the connection is torn down, and the helper
//! leaves the dead mount in place ("Transport endpoint is not connected").
//!
//! So the socket must close after every `/dev/fuse` descriptor. A second reference to it
//! travels in a message that this process sends to itself and never reads. That reference is
//! dropped only when the socket queueing the message is released, which the kernel does while
//! closing the process's descriptors; the socket's own release then runs after all of them,
//! the FUSE device included. The order of descriptor numbers does not matter.

use std::io::{IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context;
use rustix::io::{Errno, FdFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// The environment variable that tells fusermount3 which descriptor is its control socket.
const COMMFD_ENV: &str = "_FUSE_COMMFD";

/// fusermount3's control socket, kept open for as long as the process lives.
#[derive(Debug)]
pub struct Control {
    _socket: OwnedFd,
    /// Holds the unread message that carries the second reference to the socket.
    _queue: OwnedFd,
}

/// Mounts a FUSE filesystem on `mountpoint` through fusermount3 with `options` (comma
/// separated, as for `fusermount3 -o`; `auto_unmount` is added). Returns the FUSE device for
/// the session (`fuser::Session::from_fd`) and the control socket, to keep.
pub fn mount(mountpoint: &Path, options: &str) -> anyhow::Result<(OwnedFd, Control)> {
    let (control, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .context("creating the fusermount3 control socket")?;
    // The helper's end must survive exec; nothing else in this process starts programs while
    // mounting, so no other child can inherit it.
    rustix::io::fcntl_setfd(&theirs, FdFlags::empty())
        .context("passing the control socket to fusermount3")?;
    let child = Command::new("fusermount3")
        .arg("-o")
        .arg(format!("{options},auto_unmount"))
        .arg("--")
        .arg(mountpoint)
        .env(COMMFD_ENV, theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running fusermount3 (install fuse3)")?;
    drop(theirs);
    let device = match receive_device(&control) {
        Ok(Some(device)) => device,
        outcome => {
            // Closing our end also ends a helper that mounted but could not hand the device
            // over (it then removes that mount), so the wait below cannot hang.
            drop(control);
            let output = child
                .wait_with_output()
                .context("waiting for fusermount3")?;
            let said = String::from_utf8_lossy(&output.stderr);
            let said = said.trim();
            return Err(match outcome {
                Err(error) => anyhow::Error::new(error).context(format!(
                    "receiving the FUSE device from fusermount3 ({said})"
                )),
                Ok(_) if said.is_empty() => {
                    anyhow::anyhow!("fusermount3 failed ({})", output.status)
                }
                Ok(_) => anyhow::anyhow!("fusermount3: {said}"),
            });
        }
    };
    // The helper lives on (it is the auto_unmount watcher) and writes nothing more that we
    // need; its stderr pipe and its process handle can go.
    if let Some(mut stderr) = child.stderr {
        rustix::io::ioctl_fionbio(&stderr, true).ok();
        let mut early = Vec::new();
        let _ = stderr.read_to_end(&mut early);
        if !early.is_empty() {
            tracing::info!("fusermount3: {}", String::from_utf8_lossy(&early).trim());
        }
    }
    let queue = hold_until_exit(&control).context("keeping the control socket open")?;
    Ok((
        device,
        Control {
            _socket: control,
            _queue: queue,
        },
    ))
}

/// Receives the `/dev/fuse` descriptor fusermount3 sends after mounting; `None` when it closed
/// the socket without one (it failed, and said why on stderr).
fn receive_device(control: &OwnedFd) -> std::io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    loop {
        let received = rustix::net::recvmsg(
            control,
            &mut [IoSliceMut::new(&mut byte)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        );
        match received {
            Err(Errno::INTR) => continue,
            Err(error) => return Err(error.into()),
            Ok(_) => break,
        }
    }
    let device = ancillary.drain().find_map(|message| match message {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    });
    Ok(device)
}

/// Sends a reference to `control` in a message to a socket of our own that nobody reads, and
/// returns that socket. See the module documentation for why.
fn hold_until_exit(control: &OwnedFd) -> std::io::Result<OwnedFd> {
    let (queue, sender) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    let fds = [control.as_fd()];
    if !ancillary.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("no room for the descriptor"));
    }
    rustix::net::sendmsg(
        &sender,
        &[IoSlice::new(&[0])],
        &mut ancillary,
        SendFlags::empty(),
    )?;
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer_sees_eof(peer: &OwnedFd) -> bool {
        let mut byte = [0u8; 1];
        match rustix::net::recv(peer, &mut byte, RecvFlags::DONTWAIT) {
            Ok((0, _)) => true,
            Err(Errno::AGAIN) => false,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_control_socket_stays_open_until_the_queue_holding_it_is_closed() {
        let (ours, peer) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        let queue = hold_until_exit(&ours).expect("hold");
        drop(ours);
        assert!(
            !peer_sees_eof(&peer),
            "the reference in the unread message keeps the socket open"
        );
        drop(queue);
        assert!(
            peer_sees_eof(&peer),
            "closing the queue drops the last reference"
        );
    }
}
