//! Many calls over one bidirectional gRPC stream, answered out of order by
//! call id. A call costs one HTTP/2 frame each way, where a unary RPC costs
//! a stream with its headers and trailers. Two streams use it: the Raft
//! transport between nodes (`RaftStream`) and the client's `Session`.
//!
//! - [`Mux`] is the calling side: it opens the stream on first use (and
//!   again after it breaks), sends each call with a fresh id and hands each
//!   reply to the caller waiting for that id.
//! - [`serve`] is the serving side: it runs every call of a stream in its
//!   own task and answers each as it finishes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Status, Streaming};

/// A message that belongs to one call of a stream.
pub trait Tagged {
    fn call_id(&self) -> u64;
}

/// Why a call over a [`Mux`] got no reply.
#[derive(Clone, Debug)]
pub enum MuxError {
    /// The stream could not be opened: the peer is down or refuses.
    Unreachable(String),
    /// The stream broke or ended with the call unanswered; it may or may
    /// not have been served.
    Ended(String),
    /// No reply within the call's timeout; it may still be served.
    TimedOut(Duration),
}

impl std::fmt::Display for MuxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MuxError::Unreachable(why) => write!(f, "unreachable: {why}"),
            MuxError::Ended(why) => write!(f, "stream ended: {why}"),
            MuxError::TimedOut(after) => write!(f, "no reply within {after:?}"),
        }
    }
}

/// The reply stream of an opened call stream.
pub type Opened<R> = Pin<Box<dyn Future<Output = Result<Streaming<R>, Status>> + Send>>;

type Opener<C, R> = Box<dyn Fn(UnboundedReceiverStream<C>) -> Opened<R> + Send + Sync>;

type Waiter<R> = oneshot::Sender<Result<R, MuxError>>;

/// Calls to one peer over one stream, opened on first use and again after
/// it ends.
pub struct Mux<C, R> {
    open: Arc<Opener<C, R>>,
    next_id: AtomicU64,
    current: Mutex<Option<Arc<OpenStream<C, R>>>>,
}

/// One open stream: its outgoing calls, and who waits for which reply.
struct OpenStream<C, R> {
    calls: mpsc::UnboundedSender<C>,
    /// `None` once the stream ended: no call can join it any more.
    waiting: Mutex<Option<HashMap<u64, Waiter<R>>>>,
    closed: AtomicBool,
}

impl<C, R> Mux<C, R>
where
    C: Send + 'static,
    R: Tagged + Send + 'static,
{
    /// `open` starts the stream with the calls to send (a tonic client's
    /// bidirectional method).
    pub fn new(
        open: impl Fn(UnboundedReceiverStream<C>) -> Opened<R> + Send + Sync + 'static,
    ) -> Self {
        Mux {
            open: Arc::new(Box::new(open)),
            next_id: AtomicU64::new(1),
            current: Mutex::new(None),
        }
    }

    /// Sends the call `make` builds for a fresh id, and waits up to
    /// `timeout` for its reply.
    pub async fn call(
        &self,
        make: impl FnOnce(u64) -> C,
        timeout: Duration,
    ) -> Result<R, MuxError> {
        let stream = self.stream();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = stream.waiting.lock().expect("waiting lock");
            let Some(waiting) = waiting.as_mut() else {
                return Err(MuxError::Ended("the stream just ended".into()));
            };
            waiting.insert(id, tx);
        }
        // A send fails only once the stream is over; its end then answers
        // the call with the reason (the call joined the map before it).
        let _ = stream.calls.send(make(id));
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(MuxError::Ended("the stream dropped the call".into())),
            Err(_) => {
                stream.forget(id);
                Err(MuxError::TimedOut(timeout))
            }
        }
    }

    /// The open stream, opening one if there is none or it ended.
    fn stream(&self) -> Arc<OpenStream<C, R>> {
        let mut current = self.current.lock().expect("mux lock");
        if let Some(stream) = current
            .as_ref()
            .filter(|s| !s.closed.load(Ordering::Acquire))
        {
            return Arc::clone(stream);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let stream = Arc::new(OpenStream {
            calls: tx,
            waiting: Mutex::new(Some(HashMap::new())),
            closed: AtomicBool::new(false),
        });
        let opened = (self.open)(UnboundedReceiverStream::new(rx));
        tokio::spawn(drive(opened, Arc::clone(&stream)));
        *current = Some(Arc::clone(&stream));
        stream
    }
}

/// Hands each reply to its caller until the stream ends; then fails every
/// call still waiting.
async fn drive<C, R: Tagged>(opened: Opened<R>, stream: Arc<OpenStream<C, R>>) {
    let ended = match opened.await {
        Err(status) if status.code() == tonic::Code::Unavailable => {
            MuxError::Unreachable(format!("{}: {}", status.code(), status.message()))
        }
        Err(status) => MuxError::Ended(format!("{}: {}", status.code(), status.message())),
        Ok(mut replies) => loop {
            match replies.message().await {
                Ok(Some(reply)) => stream.answer(reply),
                Ok(None) => break MuxError::Ended("the peer ended the stream".into()),
                Err(status) => {
                    break MuxError::Ended(format!("{}: {}", status.code(), status.message()))
                }
            }
        },
    };
    stream.close(&ended);
}

impl<C, R: Tagged> OpenStream<C, R> {
    fn answer(&self, reply: R) {
        let waiter = self
            .waiting
            .lock()
            .expect("waiting lock")
            .as_mut()
            .and_then(|w| w.remove(&reply.call_id()));
        // The caller may have timed out and gone.
        if let Some(waiter) = waiter {
            let _ = waiter.send(Ok(reply));
        }
    }

    fn forget(&self, id: u64) {
        if let Some(waiting) = self.waiting.lock().expect("waiting lock").as_mut() {
            waiting.remove(&id);
        }
    }

    fn close(&self, why: &MuxError) {
        self.closed.store(true, Ordering::Release);
        let waiting = self.waiting.lock().expect("waiting lock").take();
        for (_, waiter) in waiting.into_iter().flatten() {
            let _ = waiter.send(Err(why.clone()));
        }
    }
}

/// The replies of a served stream.
pub type Replies<R> = UnboundedReceiverStream<Result<R, Status>>;

/// Serves the calls of `calls` concurrently, at most `in_flight` at once
/// (then the stream is read no further until one finishes), and answers
/// each as it finishes: one slow call holds up no other. The calls run in
/// the stream's one task rather than a task each: a call is a future too
/// large to move into a task of its own cheaply, and most finish in a few
/// polls. Stops reading when `closing` turns true, or at a message that
/// cannot be read; the replies end once the calls already read are
/// answered, in the second case with the status saying why.
pub fn serve<C, R, F, Fut>(
    mut calls: Streaming<C>,
    mut closing: watch::Receiver<bool>,
    in_flight: usize,
    serve_one: F,
) -> Replies<R>
where
    C: Send + 'static,
    R: Send + 'static,
    F: Fn(C) -> Fut + Send + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let in_flight = in_flight.max(1);
    tokio::spawn(async move {
        let mut running = FuturesUnordered::new();
        let mut reading = true;
        let mut refused = None;
        while reading || !running.is_empty() {
            tokio::select! {
                call = calls.message(), if reading && running.len() < in_flight => match call {
                    Ok(Some(call)) => running.push(serve_one(call)),
                    Ok(None) => reading = false,
                    Err(status) => {
                        reading = false;
                        refused = Some(crate::server::codec::inbound(status));
                    }
                },
                Some(reply) = running.next(), if !running.is_empty() => {
                    // The caller may have gone; nothing then waits for it.
                    let _ = tx.send(Ok(reply));
                }
                _ = closing.wait_for(|closing| *closing), if reading => reading = false,
            }
        }
        // A message that could not be read (malformed, too large) ends the
        // stream with what was wrong with it, once the calls before it
        // are answered.
        if let Some(status) = refused {
            let _ = tx.send(Err(status));
        }
    });
    UnboundedReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, Debug)]
    struct Echo(u64);

    impl Tagged for Echo {
        fn call_id(&self) -> u64 {
            self.0
        }
    }

    /// The opener drops the outgoing calls at once, before the stream's
    /// end is known: the call still learns why it ended.
    #[tokio::test]
    async fn an_unopenable_stream_fails_its_calls_as_unreachable() {
        let mux: Mux<Echo, Echo> =
            Mux::new(|_calls| Box::pin(async { Err(Status::unavailable("connection refused")) }));
        let err = mux
            .call(Echo, Duration::from_secs(5))
            .await
            .expect_err("nothing serves the stream");
        assert!(
            matches!(err, MuxError::Unreachable(ref why) if why.contains("connection refused")),
            "{err}"
        );
        // The next call opens a new stream (and fails the same way) rather
        // than joining the dead one.
        let err = mux
            .call(Echo, Duration::from_secs(5))
            .await
            .expect_err("still down");
        assert!(matches!(err, MuxError::Unreachable(_)), "{err}");
    }

    #[tokio::test]
    async fn a_stream_that_never_opens_times_the_call_out() {
        let mux: Mux<Echo, Echo> =
            Mux::new(|_calls| Box::pin(std::future::pending::<Result<Streaming<Echo>, Status>>()));
        let err = mux
            .call(Echo, Duration::from_millis(50))
            .await
            .expect_err("no reply comes");
        assert!(
            matches!(err, MuxError::TimedOut(t) if t == Duration::from_millis(50)),
            "{err}"
        );
    }
}
