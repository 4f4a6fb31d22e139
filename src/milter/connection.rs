//! One milter connection: owns the socket and the buffers, reads whole packets under
//! timeouts, feeds them to the [`Session`], and writes the replies.
//!
//! Two clocks apply: between commands the MTA may stay silent for `idle_timeout` (it holds the
//! connection for the whole SMTP session); once a packet has started it must arrive whole within
//! `io_timeout`. Every write is bounded by `io_timeout` too.

use std::io;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

use super::command::{Command, CommandError};
use super::frame::{self, FrameError};
use super::session::{Flow, Session, SessionError};
use crate::policy::Policy;

/// Bytes asked of the socket per read; Postfix's packets are small except body chunks.
const READ_CHUNK: usize = 16 * 1024;

/// Bytes a connection reads (and handles) before it lets the other tasks of its thread run;
/// also the most one read takes. Tokio's own budget counts reads, not bytes: a connection
/// sending 1 MiB headers got up to a hundred megabytes through per turn and starved the others
/// (one thread: 5,381 → 221 messages/s for the rest). A turn of 64 KiB is tens of
/// microseconds of work; an ordinary message is smaller and goes through in one turn as before.
const FAIR_SHARE: usize = 64 * 1024;

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub io: Duration,
    pub idle: Duration,
}

/// How a connection ended badly. Each message says what happened in words a mail
/// administrator can act on.
#[derive(Debug, Error)]
pub enum ConnectionError {
    #[error("read failed: {0}")]
    Read(#[source] io::Error),
    #[error("write failed: {0}")]
    Write(#[source] io::Error),
    #[error("the MTA closed the connection in the middle of a packet ({0} bytes received)")]
    Truncated(usize),
    #[error("a packet was not received whole within {0:?} (io_timeout)")]
    PacketTimeout(Duration),
    #[error("a reply could not be written within {0:?} (io_timeout)")]
    WriteTimeout(Duration),
    #[error("no command for {0:?} (idle_timeout); closing the idle connection")]
    Idle(Duration),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// A stream the filter talks over; TCP needs a nudge when we read without answering (see
/// [`Transport::ack_now`]).
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// Called when what was read needs no reply.
    fn ack_now(&self) {}
}

impl Transport for tokio::net::UnixStream {}

impl Transport for tokio::net::TcpStream {
    /// Acknowledge at once. When the MTA sends a packet we do not answer (macros, a no-reply
    /// step) and then a small one, Nagle on its side holds the second until our delayed ACK
    /// fires: ~40 ms per message. Setting QUICKACK sends the pending ACK now; Linux resets it
    /// after use, hence every time. Not after reads we answer: the reply carries the ACK, and
    /// a separate ACK segment per read would cost both sides a packet for nothing.
    fn ack_now(&self) {
        set_quickack(self);
    }
}

#[cfg(target_os = "linux")]
fn set_quickack(stream: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn set_quickack(_: &tokio::net::TcpStream) {}

/// Serves one connection until the MTA quits, an error ends it, or shutdown is requested while
/// no message is in progress.
///
/// # Errors
/// [`ConnectionError`] saying why the connection ended early.
pub async fn serve<T: Transport, P: Policy>(
    mut stream: T,
    mut session: Session<P>,
    timeouts: Timeouts,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut start = 0usize;
    let mut out: Vec<u8> = Vec::with_capacity(256);
    // When the packet now in the buffer must be complete.
    let mut packet_deadline: Option<Instant> = None;
    // Bytes arrived since we last wrote or acknowledged.
    let mut unacknowledged = false;
    // Bytes read since this task last let the others run.
    let mut since_yield = 0usize;
    // One timer and one shutdown wait for the whole connection, moved or re-polled at each
    // read: a fresh `timeout_at` and `changed()` per read registered and removed a timer and a
    // waiter every time, about 4,000 instructions a message.
    let timer = tokio::time::sleep(timeouts.idle);
    tokio::pin!(timer);
    let mut stop_signal = shutdown.clone();
    let stop = async move {
        // A dropped sender ends the wait too; it is only ever dropped at exit.
        let _ = stop_signal.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stop);
    let mut stop_seen = false;
    loop {
        // Every complete packet in the buffer first.
        while let Some((frame, used)) = frame::decode(&buf[start..])? {
            let command = Command::decode(frame)?;
            let mut flow = session.handle(command, &mut out)?;
            start += used;
            // The two waits below are boxed: inline, their futures (a Redis round trip, a
            // scanner's) made every connection's task 3.6 KiB rather than 2 KiB, also where
            // neither is ever used (the memory backend without scanners).
            if flow == Flow::Prepare {
                // Never longer than io_timeout: past it the local decision stands.
                Box::pin(session.prepare(timeouts.io, &mut out)).await;
                flow = Flow::KeepOpen;
            }
            if flow == Flow::Scan {
                let verdicts = Box::pin(session.scan()).await;
                session.finish_message(&verdicts, &mut out);
                flow = Flow::KeepOpen;
            }
            if flow == Flow::Close {
                flush(&mut stream, &mut out, timeouts.io).await?;
                return Ok(());
            }
        }
        if unacknowledged && out.is_empty() {
            // Nothing to answer with, and the MTA may be holding its next write until it
            // hears that this one arrived.
            stream.ack_now();
        }
        unacknowledged = false;
        flush(&mut stream, &mut out, timeouts.io).await?;
        if start > 0 {
            // A packet completed; whatever follows is a new one with its own deadline.
            packet_deadline = None;
        }
        if start == buf.len() {
            buf.clear();
        } else if start > 0 {
            buf.drain(..start);
        }
        start = 0;

        let waiting_for_command = buf.is_empty();
        if waiting_for_command {
            packet_deadline = None;
        }
        if waiting_for_command && *shutdown.borrow() && !session.in_transaction() {
            return Ok(());
        }
        if buf.capacity() - buf.len() < READ_CHUNK {
            // Grow only as far as the packet being received needs.
            let want = frame::declared_length(&buf)?.map_or(READ_CHUNK, |n| n + frame::LENGTH_BYTES);
            buf.reserve(want.max(READ_CHUNK));
        }
        // At most one fair share per read (see FAIR_SHARE).
        let mut limited = (&mut stream).take(FAIR_SHARE as u64);
        let deadline = if waiting_for_command {
            Instant::now() + timeouts.idle
        } else {
            *packet_deadline.get_or_insert_with(|| Instant::now() + timeouts.io)
        };
        if timer.deadline() != deadline {
            // A later deadline only updates the registered timer in place.
            timer.as_mut().reset(deadline);
        }
        let read = tokio::select! {
            biased;
            r = limited.read_buf(&mut buf) => r,
            () = &mut timer => {
                return Err(if waiting_for_command {
                    ConnectionError::Idle(timeouts.idle)
                } else {
                    ConnectionError::PacketTimeout(timeouts.io)
                });
            }
            () = &mut stop, if waiting_for_command && !stop_seen => {
                stop_seen = true;
                continue;
            }
        };
        match read.map_err(ConnectionError::Read)? {
            0 if buf.is_empty() => return Ok(()),
            0 => return Err(ConnectionError::Truncated(buf.len())),
            n => {
                unacknowledged = true;
                since_yield += n;
                if since_yield >= FAIR_SHARE {
                    since_yield = 0;
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

async fn flush<T: Transport>(stream: &mut T, out: &mut Vec<u8>, limit: Duration) -> Result<(), ConnectionError> {
    if out.is_empty() {
        return Ok(());
    }
    timeout(limit, stream.write_all(out))
        .await
        .map_err(|_| ConnectionError::WriteTimeout(limit))?
        .map_err(ConnectionError::Write)?;
    out.clear();
    Ok(())
}
