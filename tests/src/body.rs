//! Bodies shared by the test server and client.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};

pub type AnyBody = BoxBody<Bytes, Infallible>;

const CHUNK: usize = 64 * 1024;

/// `len` bytes of `'x'` produced in 64 KiB chunks, so large transfers need no large buffers.
#[derive(Debug, Clone)]
pub struct RepeatBody {
    remaining: u64,
    chunk: Bytes,
}

impl RepeatBody {
    pub fn new(len: u64) -> Self {
        Self {
            remaining: len,
            chunk: Bytes::from(vec![b'x'; CHUNK]),
        }
    }
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(self.remaining).map_or(CHUNK, |r| r.min(CHUNK));
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

pub fn full(data: impl Into<Bytes>) -> AnyBody {
    Full::new(data.into()).boxed()
}

pub fn empty() -> AnyBody {
    Empty::new().boxed()
}

pub fn repeat(len: u64) -> AnyBody {
    RepeatBody::new(len).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_body_yields_exactly_len_bytes() {
        for len in [
            0u64,
            1,
            CHUNK as u64,
            CHUNK as u64 + 1,
            3 * CHUNK as u64 - 5,
        ] {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let got = rt
                .block_on(RepeatBody::new(len).collect())
                .expect("infallible")
                .to_bytes();
            assert_eq!(got.len() as u64, len);
            assert!(got.iter().all(|b| *b == b'x'));
        }
    }
}
