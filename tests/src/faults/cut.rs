//! A response body that breaks after a deadline: how a dropped watch looks to the client (the
//! connection dies mid-stream, no clean end of the chunked body).

use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::{BoxError, Shared};

/// `inner` until `after` has passed, then an error (hyper then aborts the connection).
pub struct CutBody<B> {
    inner: Pin<Box<B>>,
    deadline: Pin<Box<Sleep>>,
    shared: Arc<Shared>,
    done: bool,
}

impl<B> CutBody<B> {
    pub(super) fn new(inner: B, after: Duration, shared: Arc<Shared>) -> Self {
        Self {
            inner: Box::pin(inner),
            deadline: Box::pin(tokio::time::sleep(after)),
            shared,
            done: false,
        }
    }
}

impl<B> Body for CutBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.done = true;
            self.shared.counts.watches_cut.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Some(Err("fault proxy: watch stream cut".into())));
        }
        match self.inner.as_mut().poll_frame(cx) {
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => Poll::Ready(Some(frame.map_err(Into::into))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
