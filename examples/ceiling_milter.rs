//! The ceiling peer of `scripts/bench-peers`: a filter on outbound-guard's own codec that only
//! answers. It negotiates exactly as outbound-guard does with header verdicts off (MAIL, RCPT
//! and end of message; the same macros through the symbol list; every other stage skipped or
//! its reply waived), continues at every stage, runs on one thread and forces the ACK after a
//! read it does not answer, as outbound-guard does.
//!
//! What it measures: the distance from no milter to this filter is what the milter protocol
//! costs the MTA and the machine, which no filter can remove; the distance from this filter to
//! outbound-guard is what the policy costs.
//!
//! ```sh
//! cargo run --release --example ceiling_milter -- inet:127.0.0.1:7358    # or unix:/path
//! ```

use std::io;

use outbound_guard::config::ListenAddr;
use outbound_guard::milter::command::Command;
use outbound_guard::milter::connection::Transport;
use outbound_guard::milter::frame;
use outbound_guard::milter::negotiate::{self, Needs, Negotiated};
use outbound_guard::milter::reply::Reply;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

#[allow(dead_code)] // tests/ceiling_filter.rs includes this file as a module for `serve`
fn main() {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: ceiling_milter inet:HOST:PORT | unix:PATH");
        std::process::exit(2);
    };
    let addr: ListenAddr = match addr.parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("ceiling_milter: {addr}: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    if let Err(e) = runtime.block_on(listen(addr)) {
        eprintln!("ceiling_milter: {e}");
        std::process::exit(1);
    }
}

#[allow(dead_code)]
async fn listen(addr: ListenAddr) -> io::Result<()> {
    match addr {
        ListenAddr::Inet(sa) => {
            let listener = TcpListener::bind(sa).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                tokio::spawn(serve(stream));
            }
        }
        ListenAddr::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)?;
            loop {
                let (stream, _) = listener.accept().await?;
                tokio::spawn(serve(stream));
            }
        }
    }
}

/// One MTA connection: answers `continue` wherever the MTA waits for a reply.
pub async fn serve<T: Transport>(mut stream: T) -> io::Result<()> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(256);
    let mut negotiated: Option<Negotiated> = None;
    // Bytes arrived since we last wrote or acknowledged, also part of a packet: as in
    // outbound-guard's connection loop, the MTA's next write may wait for their ACK.
    let mut unacknowledged = false;
    loop {
        let mut start = 0;
        while let Some((packet, used)) = frame::decode(&buf[start..]).map_err(|e| invalid(e.to_string()))? {
            start += used;
            let command = Command::decode(packet).map_err(|e| invalid(e.to_string()))?;
            match command {
                Command::Negotiate(offer) => {
                    let agreed = negotiate::answer(offer.version, offer.actions, offer.steps, Needs::default())
                        .map_err(|e| invalid(e.to_string()))?;
                    agreed.encode_reply(&mut out);
                    negotiated = Some(agreed);
                }
                Command::Quit => {
                    stream.write_all(&out).await?;
                    return Ok(());
                }
                _ if negotiated.is_some_and(|n| n.expects_reply(command.kind())) => Reply::Continue.encode(&mut out),
                _ => {}
            }
        }
        buf.drain(..start);
        if out.is_empty() {
            if unacknowledged {
                stream.ack_now();
            }
        } else {
            stream.write_all(&out).await?;
            out.clear();
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        unacknowledged = true;
    }
}
