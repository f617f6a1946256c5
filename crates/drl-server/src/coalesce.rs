//! Write coalescing for HTTP/2 connections: the answers of many streams that finish in the same
//! scheduler round leave in one `write` instead of one each.
//!
//! hyper runs every HTTP/2 stream as a task of its own, and each stream that answers wakes the
//! connection's task. Tokio runs a task woken by the running one next (its LIFO slot), so the
//! connection task would write and flush each answer as soon as it exists: one system call per
//! call, most of a small call's cost on loopback. [`Coalesce`] holds what the connection writes
//! in a buffer, and on the first flush after a write gives way once (it wakes its own task and
//! answers `Pending`, which puts the task at the back of the run queue): the streams that are
//! ready run first, their frames join the buffer, and the next flush writes them all. One call
//! at a time costs a trip through the run queue and no extra system call.
//!
//! The buffer is bounded: past [`MAX_BUFFERED`] bytes a write goes through to the socket first,
//! and the socket's back-pressure holds as before.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held before they are written to the socket, whatever the flushes.
pub(crate) const MAX_BUFFERED: usize = 64 * 1024;

/// An IO whose writes are gathered and sent on the second flush (see the module). When not
/// `enabled` it is the IO itself.
#[derive(Debug)]
pub(crate) struct Coalesce<Io> {
    io: Io,
    enabled: bool,
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken.
    sent: usize,
    /// The current flush has given way once.
    yielded: bool,
}

impl<Io> Coalesce<Io> {
    pub(crate) fn new(io: Io, enabled: bool) -> Self {
        Self {
            io,
            enabled,
            buf: Vec::new(),
            sent: 0,
            yielded: false,
        }
    }
}

impl<Io: AsyncWrite + Unpin> Coalesce<Io> {
    /// Writes the whole buffer to the socket.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Room for `len` more bytes: the buffer is written out first when they would not fit.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() && self.buf.len() + len > MAX_BUFFERED {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Coalesce<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Coalesce<Io> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.enabled {
            return Pin::new(&mut this.io).poll_write(cx, data);
        }
        ready!(this.poll_room(cx, data.len()))?;
        if this.buf.is_empty() && data.len() >= MAX_BUFFERED {
            return Pin::new(&mut this.io).poll_write(cx, data);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.enabled {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        let len = bufs.iter().map(|b| b.len()).sum::<usize>();
        ready!(this.poll_room(cx, len))?;
        if this.buf.is_empty() && len >= MAX_BUFFERED {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        this.buf.reserve(len);
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        !self.enabled || self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            return Pin::new(&mut this.io).poll_flush(cx);
        }
        if !this.yielded {
            // Give way once: the streams ready now add their answers before this one leaves.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn what_is_written_arrives_in_order_after_a_flush() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut io = Coalesce::new(near, true);
        io.write_all(b"one ").await.expect("write");
        io.write_all(b"two ").await.expect("write");
        let big = vec![b'x'; MAX_BUFFERED + 10];
        io.write_all(&big).await.expect("write");
        io.write_all(b" three").await.expect("write");
        io.flush().await.expect("flush");
        let mut got = vec![0; 8 + big.len() + 6];
        far.read_exact(&mut got).await.expect("read");
        assert_eq!(&got[..8], b"one two ");
        assert_eq!(&got[8..8 + big.len()], &big[..]);
        assert_eq!(&got[8 + big.len()..], b" three");
    }

    #[tokio::test]
    async fn nothing_leaves_before_the_flush_and_all_of_it_after() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut io = Coalesce::new(near, true);
        io.write_all(b"held").await.expect("write");
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            far.read_exact(&mut byte),
        )
        .await;
        assert!(early.is_err(), "a write left before its flush");
        io.flush().await.expect("flush");
        let mut got = [0u8; 4];
        far.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"held");
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_held() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut io = Coalesce::new(near, true);
        io.write_all(b"last words").await.expect("write");
        io.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"last words");
    }

    #[tokio::test]
    async fn disabled_it_writes_through() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut io = Coalesce::new(near, false);
        io.write_all(b"now").await.expect("write");
        let mut got = [0u8; 3];
        far.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"now");
    }
}
