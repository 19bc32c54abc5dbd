//! A `tokio_util::codec` adapter over [`crate::frame`]: [`ServerCodec`] for the server side
//! of a connection (decodes client frames, encodes server frames), [`ClientCodec`] for the
//! other side. All the logic stays in `frame`; this file only wires it to the traits.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::DecodeError;
use crate::frame::{encode, FrameDecoder};
use crate::message::{ClientFrame, ServerFrame};

/// Errors of a codec: a protocol violation, or the I/O below it.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Server side: reads [`ClientFrame`]s, writes [`ServerFrame`]s.
#[derive(Debug, Clone, Copy)]
pub struct ServerCodec {
    frames: FrameDecoder,
}

impl ServerCodec {
    pub fn new(max_frame: usize) -> Self {
        ServerCodec { frames: FrameDecoder::new(max_frame) }
    }
}

impl Decoder for ServerCodec {
    type Item = ClientFrame;
    type Error = CodecError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ClientFrame>, CodecError> {
        Ok(self.frames.decode_client(src)?)
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
