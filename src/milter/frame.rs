//! Milter framing: a 4-byte big-endian length, then that many bytes (one kind byte + payload).
//!
//! This layer only cuts a byte stream into packets. It is pure (no I/O) so the connection layer,
//! the test client and the fuzzer share it. A length over [`MAX_PACKET`] is refused as soon as the
//! four length bytes are seen, before anything is allocated or buffered for it.

use thiserror::Error;

/// Largest packet accepted (kind byte + payload). Postfix sends body chunks of at most 64 KiB and
/// we never negotiate larger ones, so 1 MiB leaves room without inviting memory abuse.
pub const MAX_PACKET: usize = 1024 * 1024;

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;

/// One packet, borrowed from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The command or reply letter, e.g. `b'M'` or `b'c'`.
    pub kind: u8,
    /// Everything after the kind byte.
    pub payload: &'a [u8],
}

/// Why a byte stream is not a valid sequence of packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("packet length {0} is over the limit of {MAX_PACKET} bytes")]
    TooLarge(usize),
    #[error("packet length 0: a packet must hold at least its kind byte")]
    Empty,
}

/// Looks at the start of `buf`: `Ok(None)` when more bytes are needed, `Ok(Some(frame, used))`
/// with the number of bytes the packet takes when it is complete.
///
/// # Errors
/// [`FrameError`] when the length prefix is 0 or over [`MAX_PACKET`]; the stream cannot be
/// resynchronised after that, so the connection must end.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(len) = declared_length(buf)? else {
        return Ok(None);
    };
    let total = LENGTH_BYTES + len;
    if buf.len() < total {
        return Ok(None);
    }
    let frame = Frame { kind: buf[LENGTH_BYTES], payload: &buf[LENGTH_BYTES + 1..total] };
    Ok(Some((frame, total)))
}

/// The validated length of the packet starting at `buf`, once its prefix is there.
///
/// # Errors
/// As [`decode`].
pub fn declared_length(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.first_chunk::<LENGTH_BYTES>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    match len {
        0 => Err(FrameError::Empty),
        n if n > MAX_PACKET => Err(FrameError::TooLarge(n)),
        n => Ok(Some(n)),
    }
}

/// Appends one packet to `out`. The caller guarantees the payload fits [`MAX_PACKET`]
/// (everything this crate encodes does).
pub fn encode(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    begin(kind, out);
    out.extend_from_slice(payload);
    finish(out.len() - payload.len() - LENGTH_BYTES - 1, out);
}

/// Starts a packet whose payload the caller appends next; returns the packet's start offset for
/// [`finish`]. Lets encoders write fields straight into the output buffer without a temporary.
pub fn begin(kind: u8, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, kind]);
    start
}

/// Writes the length prefix of the packet that [`begin`] started at `start`.
pub fn finish(start: usize, out: &mut [u8]) {
    let len = (out.len() - start - LENGTH_BYTES) as u32;
    out[start..start + LENGTH_BYTES].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_prefix_and_payload_ask_for_more() {
        assert_eq!(decode(&[0, 0]), Ok(None));
        assert_eq!(decode(&[0, 0, 0, 3, b'M', 0]), Ok(None));
    }

    #[test]
    fn complete_packet_is_cut_with_its_length() {
        let buf = [0, 0, 0, 2, b'H', b'x', 0xff];
        let (frame, used) = decode(&buf).unwrap().unwrap();
        assert_eq!(frame.kind, b'H');
        assert_eq!(frame.payload, b"x");
        assert_eq!(used, 6);
    }

    #[test]
    fn oversized_length_is_refused_from_the_prefix_alone() {
        let too_big = (MAX_PACKET as u32 + 1).to_be_bytes();
        assert_eq!(decode(&too_big), Err(FrameError::TooLarge(MAX_PACKET + 1)));
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff]), Err(FrameError::TooLarge(u32::MAX as usize)));
    }

    #[test]
    fn zero_length_is_refused() {
        assert_eq!(decode(&[0, 0, 0, 0]), Err(FrameError::Empty));
    }

    #[test]
    fn encode_writes_length_including_kind() {
        let mut out = Vec::new();
        encode(b'c', b"", &mut out);
        encode(b'y', b"550 x\0", &mut out);
        assert_eq!(&out[..5], &[0, 0, 0, 1, b'c']);
        assert_eq!(&out[5..10], &[0, 0, 0, 7, b'y']);
    }
}
