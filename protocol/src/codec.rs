//! A `tokio_util::codec` adapter over [`crate::frame`]: [`ServerCodec`] for the server side
//! of a connection (decodes client frames, encodes server frames), [`ClientCodec`] for the
//! other side. All the logic stays in `frame`; this file only wires it to the traits.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::{DecodeError, WireError};
use crate::frame::{encode, FrameDecoder};
use crate::limits::DecodeLimits;
use crate::message::{ClientFrame, ServerFrame};

/// Errors of a codec: a protocol violation, or the I/O below it.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// What the server side decodes: a frame, or a request whose envelope was fine but whose
/// body was not (unknown kind, malformed, over a [`DecodeLimits`] limit). The latter is an
/// item, not an error, because a `FramedRead` ends its stream after the first error, and
/// this one must be answered and the connection kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Frame(ClientFrame),
    /// Answer request `id` with `error` (`UnknownRequest` or `InvalidArgument`, its message
    /// saying why) and read on.
    BadRequest {
        id: u64,
        error: WireError,
    },
}

/// Server side: reads [`ClientFrame`]s, writes [`ServerFrame`]s.
#[derive(Debug, Clone, Copy)]
pub struct ServerCodec {
    frames: FrameDecoder,
}

impl ServerCodec {
    /// A codec with the default [`DecodeLimits`].
    pub fn new(max_frame: usize) -> Self {
        ServerCodec { frames: FrameDecoder::new(max_frame) }
    }

    pub fn with_limits(max_frame: usize, limits: DecodeLimits) -> Self {
        ServerCodec { frames: FrameDecoder::with_limits(max_frame, limits) }
    }

    /// Changes the largest frame accepted (and encoded) from now on: start a connection at
    /// [`crate::MAX_HANDSHAKE_FRAME`] and raise it after the handshake, e.g. through
    /// `FramedRead::decoder_mut`.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.frames.set_max(max_frame);
    }

    pub fn max_frame(&self) -> usize {
        self.frames.max()
    }

    pub fn set_limits(&mut self, limits: DecodeLimits) {
        self.frames.set_limits(limits);
    }
}

impl Decoder for ServerCodec {
    type Item = Incoming;
    type Error = CodecError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        match self.frames.decode_client(src) {
            Ok(frame) => Ok(frame.map(Incoming::Frame)),
            Err(e) => match e.request_id() {
                Some(id) => Ok(Some(Incoming::BadRequest { id, error: e.to_wire() })),
                None => Err(e.into()),
            },
        }
    }
}

impl Encoder<&ServerFrame> for ServerCodec {
    type Error = CodecError;
    fn encode(&mut self, item: &ServerFrame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(encode(item, dst, self.frames.max())?)
    }
}

/// Client side: reads [`ServerFrame`]s, writes [`ClientFrame`]s.
#[derive(Debug, Clone, Copy)]
pub struct ClientCodec {
    frames: FrameDecoder,
}

impl ClientCodec {
    pub fn new(max_frame: usize) -> Self {
        ClientCodec { frames: FrameDecoder::new(max_frame) }
    }
}

impl Decoder for ClientCodec {
    type Item = ServerFrame;
    type Error = CodecError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ServerFrame>, CodecError> {
        Ok(self.frames.decode_server(src)?)
    }
}

impl Encoder<&ClientFrame> for ClientCodec {
    type Error = CodecError;
    fn encode(&mut self, item: &ClientFrame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(encode(item, dst, self.frames.max())?)
    }
}
