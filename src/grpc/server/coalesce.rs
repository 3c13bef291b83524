//! Fewer, larger socket writes under HTTP/2: a connection's writes are
//! gathered, and a flush first yields once to the runtime.
//!
//! Every stream task's `send_data` wakes the connection task, which then
//! writes what h2 has right away: when the streams of a connection are woken
//! one after another (a broadcast reaching several participants), each
//! one's few bytes went out in a write of their own. Here h2's writes land in
//! a buffer (bounded by [`GATHER_LIMIT`]: past it they go to the socket, and
//! a full socket pushes back on h2 as before), and a flush with bytes
//! gathered first returns `Pending` once with the task woken again: the tasks
//! already runnable (the other streams) run first and add their frames, and
//! the next poll writes them all in one go. The delay is one pass of the
//! runtime's queue, never a timer.
//!
//! ```text
//!  h2 write ─► gathered (≤ 64 KiB; a larger write: gathered bytes first, then it)
//!  h2 flush ─► first time: wake, Pending ─► next poll: one socket write, flush
//! ```

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most gathered before it goes to the socket (a write this large or
/// larger goes to the socket directly, after what was gathered).
pub const GATHER_LIMIT: usize = 64 * 1024;

/// A connection's I/O with its writes gathered (see the module doc).
#[derive(Debug)]
pub struct CoalescedWrites<T> {
    inner: T,
    gathered: Vec<u8>,
    /// Bytes of `gathered` the socket already took.
    written: usize,
    /// A flush yielded once already: the next one writes.
    yielded: bool,
}

impl<T> CoalescedWrites<T> {
    pub fn new(inner: T) -> Self {
        CoalescedWrites {
            inner,
            gathered: Vec::new(),
            written: 0,
            yielded: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn room(&self) -> usize {
        GATHER_LIMIT.saturating_sub(self.gathered.len())
    }
}

impl<T: AsyncWrite + Unpin> CoalescedWrites<T> {
    /// Writes everything gathered to the socket.
    fn poll_write_gathered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.gathered.len() {
            let rest = &self.gathered[self.written..];
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.gathered.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.room() < buf.len() {
            ready!(this.poll_write_gathered(cx))?;
            if buf.len() >= GATHER_LIMIT {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
        }
        this.gathered.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.room() < total {
            ready!(this.poll_write_gathered(cx))?;
            if total >= GATHER_LIMIT {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            }
        }
        for buf in bufs {
            this.gathered.extend_from_slice(buf);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.gathered.len() > this.written {
            if !this.yielded {
                // Let the tasks already woken add their frames first.
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(this.poll_write_gathered(cx))?;
        }
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_gathered(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the writes that reach it.
    #[derive(Default)]
    struct Socket {
        data: Vec<u8>,
        writes: usize,
        /// Takes at most this much per write (0: no limit).
        per_write: usize,
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = match self.per_write {
                0 => buf.len(),
                limit => buf.len().min(limit),
            };
            self.data.extend_from_slice(&buf[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn writes_are_gathered_and_a_flush_yields_once() {
        let mut io = CoalescedWrites::new(Socket::default());
        io.write_all(b"one ").await.unwrap();
        let n = io
            .write_vectored(&[IoSlice::new(b"two "), IoSlice::new(b"three")])
            .await
            .unwrap();
        assert_eq!(n, 9, "both slices are taken");
        assert_eq!(io.get_ref().writes, 0);
        // The first poll of a flush yields (and wakes the task), the next
        // writes everything at once.
        let mut polls = 0;
        poll_fn(|cx| {
            polls += 1;
            Pin::new(&mut io).poll_flush(cx)
        })
        .await
        .unwrap();
        assert_eq!(polls, 2);
        assert_eq!(io.get_ref().writes, 1);
        assert_eq!(io.get_ref().data, b"one two three");
        // Nothing gathered: a flush does not yield.
        let mut polls = 0;
        poll_fn(|cx| {
            polls += 1;
            Pin::new(&mut io).poll_flush(cx)
        })
        .await
        .unwrap();
        assert_eq!(polls, 1);
    }

    #[tokio::test]
    async fn large_writes_go_through_after_what_was_gathered() {
        let mut io = CoalescedWrites::new(Socket {
            per_write: 1000,
            ..Socket::default()
        });
        io.write_all(b"head").await.unwrap();
        let big = vec![7u8; GATHER_LIMIT + 10];
        io.write_all(&big).await.unwrap();
        io.flush().await.unwrap();
        let data = &io.get_ref().data;
        assert_eq!(&data[..4], b"head");
        assert_eq!(&data[4..], &big[..]);
        assert!(io.gathered.is_empty());
    }

    #[tokio::test]
    async fn shutdown_writes_what_was_gathered() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut io = CoalescedWrites::new(client);
        io.write_all(b"bye").await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
    }
}
