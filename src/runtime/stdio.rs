//! A run's standard streams: stdout and stderr captured in memory under a cap and the run's
//! memory budget; stdin streamed from the request body as it arrives.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncWrite, DuplexStream};
use wasmtime_wasi::cli::{AsyncStdinStream, IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use crate::budget::MemoryBudget;

/// Bytes of request body buffered between the connection and the guest's reads.
pub const STDIN_BUFFER: usize = 64 << 10;

/// What the stdin path can hold at once: the pipe, and the chunk read ahead plus the one being
/// read by WASI's reader.
pub const STDIN_HELD: usize = 3 * STDIN_BUFFER;

/// Bytes a guest may always hand to a write that is not yet full.
const WRITE_PERMIT: usize = 64 << 10;

/// A pipe whose reading end is the guest's stdin; the writing end is fed from the request body.
pub fn stdin_pipe() -> (DuplexStream, AsyncStdinStream) {
    let (writer, reader) = tokio::io::duplex(STDIN_BUFFER);
    (writer, AsyncStdinStream::new(reader))
}

/// A guest's stdout or stderr, kept in memory. Writes past the cap, or past what the run's
/// memory budget allows, are dropped and mark the output truncated.
#[derive(Clone)]
pub struct CapturedOutput(Arc<Mutex<Captured>>);

struct Captured {
    bytes: Vec<u8>,
    /// Bytes of capacity charged to the budget.
    charged: usize,
    cap: usize,
    budget: Arc<MemoryBudget>,
    truncated: bool,
}

impl CapturedOutput {
    /// An empty output keeping at most `cap` bytes, charging its buffer to `budget`.
    pub fn new(cap: usize, budget: Arc<MemoryBudget>) -> Self {
        CapturedOutput(Arc::new(Mutex::new(Captured {
            bytes: Vec::new(),
            charged: 0,
            cap,
            budget,
            truncated: false,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Captured> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What was kept, and whether anything was dropped.
    pub fn contents(&self) -> (Bytes, bool) {
        let mut captured = self.lock();
        let bytes = Bytes::from(std::mem::take(&mut captured.bytes));
        (bytes, captured.truncated)
    }
}

impl Captured {
    /// Keeps what fits of `data`; the rest is dropped and marks the output truncated.
    fn append(&mut self, data: &[u8]) {
        let mut keep = data.len().min(self.cap - self.bytes.len());
        let needed = self.bytes.len() + keep;
        if needed > self.charged {
            // Grow geometrically, as far as the cap and the budget allow.
            let wanted = needed.max(self.charged.saturating_mul(2)).min(self.cap);
            self.charged += self.budget.charge_up_to(wanted - self.charged);
            keep = keep.min(self.charged - self.bytes.len());
            self.bytes
                .reserve_exact(self.charged.saturating_sub(self.bytes.len()));
        }
        self.bytes.extend_from_slice(&data[..keep]);
        self.truncated |= keep < data.len();
    }

    fn is_full(&self) -> bool {
        self.truncated || self.bytes.len() >= self.cap
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.lock().append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        let captured = self.lock();
        if captured.is_full() {
            // Nothing more will be kept: the guest sees a closed stream, as at a full pipe.
            Err(StreamError::Closed)
        } else {
            // At least a chunk, even past the cap: the guest's write then succeeds and what
            // does not fit is dropped and marked, rather than shortened without a trace.
            Ok((captured.cap - captured.bytes.len()).max(WRITE_PERMIT))
        }
    }
}

impl AsyncWrite for CapturedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.lock().append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_stops_at_its_cap() {
        let budget = Arc::new(MemoryBudget::new(1 << 20));
        let mut out = CapturedOutput::new(10, budget.clone());
        out.write(Bytes::from_static(b"0123456")).unwrap();
        assert_eq!(out.check_write().unwrap(), WRITE_PERMIT);
        out.write(Bytes::from_static(b"789abc")).unwrap();
        assert!(matches!(out.check_write(), Err(StreamError::Closed)));
        assert_eq!(out.contents(), (Bytes::from_static(b"0123456789"), true));
        assert!(budget.used() <= 10);
    }

    #[test]
    fn output_stops_where_the_budget_ends() {
        let budget = Arc::new(MemoryBudget::new(100));
        assert!(budget.try_charge(96));
        let mut out = CapturedOutput::new(1000, budget.clone());
        out.write(Bytes::from_static(b"abcdefgh")).unwrap();
        assert_eq!(out.contents(), (Bytes::from_static(b"abcd"), true));
        assert_eq!(budget.used(), 100);
    }
}
