//! Frames: a 4-byte big-endian length, then that many bytes holding one bincode-encoded
//! message.
//!
//! ```text
//! +----------------+---------------------------------------------+
//! | len: u32 (BE)  | bincode v2 standard (varint, little-endian) |
//! |                |   ClientFrame or ServerFrame, exactly len B |
//! +----------------+---------------------------------------------+
//! ```
//!
//! The length is checked against the maximum before a byte of the body is buffered or
//! allocated, so a peer cannot make us reserve memory by announcing a huge frame. Decoding
//! is incremental: [`FrameDecoder::decode_client`] returns `Ok(None)` until a whole frame
//! is in the buffer.
//!
//! Inside a frame, decoding may not cost more than a fixed multiple of the frame's bytes:
//! - a string or byte field allocates its announced length up front (bincode does), so
//!   bincode's byte limit is chosen per frame, the smallest of a few sizes that holds the
//!   body ([`decode_slice`]): a 10-byte frame cannot claim a 64 MiB string;
//! - a request's vectors are held to [`DecodeLimits`] and never preallocate much
//!   (`limits.rs`).
//!
//! During the handshake the server holds frames to [`MAX_HANDSHAKE_FRAME`] and raises the
//! limit once the client is authenticated ([`FrameDecoder::set_max`]).

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use bytes::{Buf, BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::DecodeError;
use crate::limits::{with_limits, DecodeLimits};
use crate::message::{ClientFrame, Request, ServerFrame};

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Default largest frame body: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;
/// Largest frame body any configuration may allow: 64 MiB. (Decoding a frame limits
/// bincode's claims to a multiple of the frame's own length: see [`decode_slice`].)
pub const HARD_MAX_FRAME: usize = 64 * 1024 * 1024;
/// Largest frame body before a connection is authenticated: `Hello`, `Auth` and their
/// answers are a few dozen bytes.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;

type Config = Configuration<LittleEndian, Varint, Limit<HARD_MAX_FRAME>>;

/// The bincode configuration of the wire format: standard (varint integers, little-endian)
/// with an allocation limit.
pub const fn config() -> Config {
    bincode::config::standard().with_limit::<HARD_MAX_FRAME>()
}

/// Appends one frame holding `msg` to `dst`. Fails, leaving `dst` as it was, if the
/// encoded message is longer than `max`.
pub fn encode<T: Serialize>(msg: &T, dst: &mut BytesMut, max: usize) -> Result<(), DecodeError> {
    let start = dst.len();
    dst.put_u32(0);
    let mut writer = dst.writer();
    if let Err(e) = bincode::serde::encode_into_std_write(msg, &mut writer, config()) {
        writer.into_inner().truncate(start);
        return Err(DecodeError::Malformed(format!("cannot encode: {e}")));
    }
    let dst = writer.into_inner();
    let len = dst.len() - start - LEN_PREFIX;
    if len > max {
        dst.truncate(start);
        return Err(DecodeError::FrameTooLarge { len, max });
    }
    dst[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Decodes one message from `body` with a bincode byte limit of [`CLAIM_PER_BYTE`] times
/// the smallest of a few fixed sizes at least `body.len()`.
///
/// Bincode's limit counts *claims*, not bytes read: a string or byte field claims its
/// announced length, an integer its in-memory size (8 for a `u64`, even when its varint
/// took one byte). So a legitimate message claims at most 8 times its length and the limit
/// never refuses one, while a lying length prefix inside a small frame is refused before
/// it is allocated. Returns the message and the bytes it used.
pub fn decode_slice<T: DeserializeOwned>(
    body: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    macro_rules! buckets {
        ($($n:expr),*) => {
            $(if body.len() <= $n {
                return bincode::serde::decode_from_slice(
                    body,
                    bincode::config::standard().with_limit::<{ CLAIM_PER_BYTE * $n }>(),
                );
            })*
        };
    }
    // Steps of 4x: a claim is at most 4 * CLAIM_PER_BYTE times the body, at the cost of
    // 8 monomorphizations per message type.
    buckets!(4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, HARD_MAX_FRAME);
    // Longer than any frame may be; refused by the frame decoder before this point.
    Err(bincode::error::DecodeError::LimitExceeded)
}

/// The most bincode claims per byte of a legitimate message: a `u64` encoded in one byte.
pub const CLAIM_PER_BYTE: usize = 8;

/// Splits frames off a byte buffer, enforcing a maximum length, and decodes them with the
/// request [`DecodeLimits`].
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max: usize,
    limits: DecodeLimits,
}

impl FrameDecoder {
    /// A decoder with the default [`DecodeLimits`].
    pub fn new(max: usize) -> Self {
        FrameDecoder::with_limits(max, DecodeLimits::default())
    }

    pub fn with_limits(max: usize, limits: DecodeLimits) -> Self {
        FrameDecoder { max: max.min(HARD_MAX_FRAME), limits }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Changes the largest frame accepted from now on (capped at [`HARD_MAX_FRAME`]); e.g.
    /// from [`MAX_HANDSHAKE_FRAME`] to the configured maximum after the handshake.
    pub fn set_max(&mut self, max: usize) {
        self.max = max.min(HARD_MAX_FRAME);
    }

    pub fn limits(&self) -> DecodeLimits {
        self.limits
    }

    pub fn set_limits(&mut self, limits: DecodeLimits) {
        self.limits = limits;
    }

    /// Takes the next whole frame body off `src`, or `Ok(None)` if it is not all there yet.
    pub fn split_frame(&self, src: &mut BytesMut) -> Result<Option<BytesMut>, DecodeError> {
        if src.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max {
            return Err(DecodeError::FrameTooLarge { len, max: self.max });
        }
        if len == 0 {
            return Err(DecodeError::EmptyFrame);
        }
        if src.len() < LEN_PREFIX + len {
            // Ask for the rest in one allocation; `len` was bounded above.
            src.reserve(LEN_PREFIX + len - src.len());
            return Ok(None);
        }
        src.advance(LEN_PREFIX);
        Ok(Some(src.split_to(len)))
    }

    /// Decodes the next client frame. A request whose envelope decodes but whose body does
    /// not is reported as [`DecodeError::BadRequest`] (or [`DecodeError::OverLimit`]) with
    /// its id, after the frame was consumed, so the server can answer it and go on.
    pub fn decode_client(&self, src: &mut BytesMut) -> Result<Option<ClientFrame>, DecodeError> {
        match self.split_frame(src)? {
            None => Ok(None),
            Some(body) => decode_client_body(&body, self.limits).map(Some),
        }
    }

    /// Decodes the next server frame.
    pub fn decode_server(&self, src: &mut BytesMut) -> Result<Option<ServerFrame>, DecodeError> {
        match self.split_frame(src)? {
            None => Ok(None),
            Some(body) => decode_whole(&body).map(Some),
        }
    }
}

fn decode_whole<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    let (msg, used) = decode_slice::<T>(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::TrailingBytes(body.len() - used));
    }
    Ok(msg)
}

/// Decodes a client frame body step by step (variant index, request id, request body) so
/// that a bad body can be answered under its id. Same bytes as decoding `ClientFrame`
/// whole: serde's enum layout is the variant index followed by the fields in order.
fn decode_client_body(body: &[u8], limits: DecodeLimits) -> Result<ClientFrame, DecodeError> {
    let malformed = |e: bincode::error::DecodeError| DecodeError::Malformed(e.to_string());
    let (variant, n) =
        bincode::serde::decode_from_slice::<u32, _>(body, config()).map_err(malformed)?;
    if variant != 1 {
        return decode_whole(body);
    }
    let (id, m) =
        bincode::serde::decode_from_slice::<u64, _>(&body[n..], config()).map_err(malformed)?;
    let rest = &body[n + m..];
    let bad = |reason: String| DecodeError::BadRequest { id, reason };
    let (decoded, broken) = with_limits(limits, || decode_slice::<Request>(rest));
    if let Some(b) = broken {
        return Err(DecodeError::OverLimit { id, kind: b.kind, len: b.len, max: b.max });
    }
    let (request, used) = decoded.map_err(|e| bad(e.to_string()))?;
    if used != rest.len() {
        return Err(bad(format!("{} trailing bytes", rest.len() - used)));
    }
    Ok(ClientFrame::Request { id, body: request })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Hello;

    fn hello() -> ClientFrame {
        ClientFrame::Hello(Hello { protocol: 1, client_name: "t".into() })
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut whole = BytesMut::new();
        encode(&hello(), &mut whole, DEFAULT_MAX_FRAME).unwrap();
        let dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert!(dec.decode_client(&mut part).unwrap().is_none(), "cut at {cut}");
        }
        let mut all = whole.clone();
        assert_eq!(dec.decode_client(&mut all).unwrap(), Some(hello()));
        assert!(all.is_empty());
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let dec = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&[0x00, 0x00, 0x04, 0x01][..]);
        let cap_before = buf.capacity();
        match dec.decode_client(&mut buf) {
            Err(DecodeError::FrameTooLarge { len: 1025, max: 1024 }) => {}
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert_eq!(buf.capacity(), cap_before, "nothing reserved for a refused frame");
    }

    #[test]
    fn encode_refuses_oversized_and_leaves_buffer() {
        let mut buf = BytesMut::from(&b"xy"[..]);
        let big = ClientFrame::Hello(Hello { protocol: 1, client_name: "n".repeat(100) });
        assert!(matches!(encode(&big, &mut buf, 50), Err(DecodeError::FrameTooLarge { .. })));
        assert_eq!(&buf[..], b"xy");
    }

    #[test]
    fn unknown_request_keeps_its_id() {
        // variant 1 (Request), id 7, request variant 200 (unknown), one byte of junk.
        let body = [0x01, 0x07, 0xc8, 0x00];
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.put_slice(&body);
        match FrameDecoder::new(DEFAULT_MAX_FRAME).decode_client(&mut buf) {
            Err(DecodeError::BadRequest { id: 7, .. }) => {}
            other => panic!("expected BadRequest for id 7, got {other:?}"),
        }
        assert!(buf.is_empty(), "the bad frame is consumed");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(dec.decode_client(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert!(matches!(dec.decode_client(&mut buf), Err(DecodeError::EmptyFrame)));
    }
}
