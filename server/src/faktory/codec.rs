//! The bytes of Faktory's work protocol: command lines in, a small subset of RESP out.
//!
//! A client sends one text line per command, `VERB` or `VERB ARGS`, ended by `\r\n` (a bare
//! `\n` is accepted too). Lines are decoded by tokio-util's [`LinesCodec`] with a length
//! cap, checked before anything past the cap is buffered, so a client that never sends a
//! newline costs at most `max_line` bytes. The server answers with [`Reply`]s:
//!
//! | reply | bytes |
//! |---|---|
//! | `Ok` | `+OK\r\n` |
//! | `Simple(s)` | `+s\r\n` (the `+HI {json}` greeting) |
//! | `Error(m)` | `-ERR m\r\n` (CR and LF in `m` become spaces) |
//! | `Bulk(b)` | `$len\r\nb\r\n` |
//! | `Null` | `$-1\r\n` |
//!
//! Nothing here knows what a command means; `commands.rs` and `admin.rs` do.

use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LinesCodec, LinesCodecError};

/// One answer of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Simple(String),
    Error(String),
    Bulk(Vec<u8>),
    Null,
}

impl Reply {
    /// `-ERR message`.
    pub fn err(message: impl Into<String>) -> Reply {
        Reply::Error(message.into())
    }

    /// A bulk string holding `value` as compact JSON.
    pub fn json(value: &serde_json::Value) -> Reply {
        Reply::Bulk(serde_json::to_vec(value).unwrap_or_default())
    }
}

/// Why a connection's input could not be read as lines. Either ends the connection, after
/// an `-ERR` that says why.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error(
        "line too long: the most this server reads is {max} bytes; send smaller jobs or batches"
    )]
    TooLong { max: usize },
    #[error("line is not UTF-8 text; Faktory commands are text lines ending in CRLF")]
    NotText,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Lines in, [`Reply`]s out.
#[derive(Debug)]
pub struct FaktoryCodec {
    lines: LinesCodec,
    max: usize,
}

impl FaktoryCodec {
    /// A codec that refuses lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        FaktoryCodec { lines: LinesCodec::new_with_max_length(max_line), max: max_line }
    }
}

impl Decoder for FaktoryCodec {
    type Item = String;
    type Error = LineError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<String>, LineError> {
        self.lines.decode(src).map_err(|e| self.map(e))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<String>, LineError> {
        self.lines.decode_eof(src).map_err(|e| self.map(e))
    }
}

impl FaktoryCodec {
    fn map(&self, e: LinesCodecError) -> LineError {
        match e {
            LinesCodecError::MaxLineLengthExceeded => LineError::TooLong { max: self.max },
            LinesCodecError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                LineError::NotText
            }
            LinesCodecError::Io(e) => LineError::Io(e),
        }
    }
}

impl Encoder<Reply> for FaktoryCodec {
    type Error = LineError;

    fn encode(&mut self, reply: Reply, dst: &mut BytesMut) -> Result<(), LineError> {
        match reply {
            Reply::Ok => dst.put_slice(b"+OK\r\n"),
            Reply::Simple(s) => {
                dst.put_u8(b'+');
                dst.put_slice(one_line(&s).as_bytes());
                dst.put_slice(b"\r\n");
            }
            Reply::Error(m) => {
                dst.put_slice(b"-ERR ");
                dst.put_slice(one_line(&m).as_bytes());
                dst.put_slice(b"\r\n");
            }
            Reply::Bulk(b) => {
                dst.put_slice(format!("${}\r\n", b.len()).as_bytes());
                dst.put_slice(&b);
                dst.put_slice(b"\r\n");
            }
            Reply::Null => dst.put_slice(b"$-1\r\n"),
        }
        Ok(())
    }
}

/// A simple string or error must not contain a line break: the client would read the
/// rest as the next reply.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// Splits a command line into its verb and the rest (empty when there is none).
pub fn split_verb(line: &str) -> (&str, &str) {
    match line.split_once(' ') {
        Some((verb, rest)) => (verb, rest.trim()),
        None => (line.trim(), ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: Reply) -> Vec<u8> {
        let mut buf = BytesMut::new();
        FaktoryCodec::new(64).encode(reply, &mut buf).unwrap();
        buf.to_vec()
    }

    #[test]
    fn replies_are_resp() {
        assert_eq!(encoded(Reply::Ok), b"+OK\r\n");
        assert_eq!(encoded(Reply::Simple("HI {\"v\":2}".into())), b"+HI {\"v\":2}\r\n");
        assert_eq!(encoded(Reply::err("bad\r\nthing")), b"-ERR bad  thing\r\n");
        assert_eq!(encoded(Reply::Bulk(b"{}".to_vec())), b"$2\r\n{}\r\n");
        assert_eq!(encoded(Reply::Null), b"$-1\r\n");
    }

    #[test]
    fn lines_are_cut_at_crlf_and_capped() {
        let mut codec = FaktoryCodec::new(16);
        let mut buf = BytesMut::from(&b"PUSH {}\r\nFETCH"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().as_deref(), Some("PUSH {}"));
        assert_eq!(codec.decode(&mut buf).unwrap(), None, "no newline yet");
        buf.extend_from_slice(&[b'x'; 32]);
        assert!(matches!(codec.decode(&mut buf), Err(LineError::TooLong { max: 16 })));
    }

    #[test]
    fn garbage_bytes_are_an_error_not_a_panic() {
        let mut codec = FaktoryCodec::new(64);
        let mut buf = BytesMut::from(&b"\xff\xfe\x00\r\n"[..]);
        assert!(matches!(codec.decode(&mut buf), Err(LineError::NotText)));
    }

    #[test]
    fn verbs_split_at_the_first_space() {
        assert_eq!(split_verb("FETCH a b"), ("FETCH", "a b"));
        assert_eq!(split_verb("INFO"), ("INFO", ""));
        assert_eq!(split_verb("PUSH {\"a\": 1}"), ("PUSH", "{\"a\": 1}"));
    }
}
