//! The servers' gRPC codec: prost's, except in what a request that does
//! not decode is called. Bytes a caller sent that are not the message
//! they claim to be (invalid UTF-8 in a string, a truncated varint, a wrong
//! wire type) are the caller's fault: INVALID_ARGUMENT, with prost's
//! account of where (`AcquireRequest.scope: invalid string value: …`).
//! prost's own codec answers INTERNAL, which this service keeps for its
//! own faults. The generated servers use it (see `build.rs`); clients keep
//! prost's, since an answer that does not decode is not the caller's fault.
//!
//! A request over the size limit is refused by tonic before any codec
//! runs, as OUT_OF_RANGE; gRPC's convention is RESOURCE_EXHAUSTED, which
//! [`OversizedLayer`] (unary calls) and [`inbound`] (streams) make it.

use std::marker::PhantomData;
use std::task::{Context, Poll};

use futures_util::future::MapOk;
use futures_util::TryFutureExt;
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::codegen::{http, Service};
use tonic::{Code, Status};
use tonic_prost::ProstEncoder;
use tower_layer::Layer;

/// A message that does not decode, as the caller hears it.
pub fn malformed(error: &prost::DecodeError) -> Status {
    Status::invalid_argument(format!("malformed message: {error}"))
}

/// The codec of every generated server: encodes `T`, decodes `U`.
pub struct ServerCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        ServerCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ServerDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ServerDecoder { _type: PhantomData }
    }
}

/// Decodes a `U`, calling bytes that are not one the caller's fault.
pub struct ServerDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for ServerDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| malformed(&e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// tonic's own refusal of a request message over the size limit begins
/// so; it calls it OUT_OF_RANGE.
const TOO_LARGE_PREFIX: &str = "Error, decoded message length too large";

/// What a caller hears of an inbound message tonic refused: a message
/// over the size limit is RESOURCE_EXHAUSTED (gRPC's convention for it),
/// anything else as it came.
pub fn inbound(status: Status) -> Status {
    if status.code() == Code::OutOfRange && status.message().starts_with(TOO_LARGE_PREFIX) {
        Status::resource_exhausted(status.message().to_string())
    } else {
        status
    }
}

/// Rewrites tonic's OUT_OF_RANGE for a request over the size limit into
/// RESOURCE_EXHAUSTED on a unary call's answer, which tonic sends before
/// any handler runs (see [`inbound`] for streams, whose handlers see it).
#[derive(Clone, Copy, Debug, Default)]
pub struct OversizedLayer;

impl<S> Layer<S> for OversizedLayer {
    type Service = Oversized<S>;

    fn layer(&self, inner: S) -> Oversized<S> {
        Oversized(inner)
    }
}

/// See [`OversizedLayer`].
#[derive(Clone, Debug)]
pub struct Oversized<S>(S);

impl<S, Req, B> Service<Req> for Oversized<S>
where
    S: Service<Req, Response = http::Response<B>>,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = MapOk<S::Future, fn(http::Response<B>) -> http::Response<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.0.call(request).map_ok(rewrite_oversized)
    }
}

fn rewrite_oversized<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let Some(status) = Status::from_header_map(headers) else {
        return response;
    };
    let heard = inbound(status);
    if heard.code() == Code::ResourceExhausted {
        let code = (heard.code() as i32).to_string();
        let code = http::HeaderValue::from_str(&code).expect("digits are a header value");
        headers.insert("grpc-status", code);
    }
    response
}
