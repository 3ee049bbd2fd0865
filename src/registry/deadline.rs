//! Deadlines for slow peers: idle time, never total time.
//!
//! A transfer is *stalled* when less than [`MIN_BYTES`] moved in a whole
//! window (`registries.<host>.timeout`, default [`DEFAULT_WINDOW`]): a
//! server that accepts and never answers, a body that trickles a byte every
//! few seconds, a target that stops reading an upload. A 5 GB layer over a
//! slow but moving link is never cut, however long it takes. Once a request
//! body is sent, the registry may take longer to answer (it moves the
//! upload into storage): [`WINDOWS_AFTER_UPLOAD`] windows, and as long again
//! as what may still be in flight takes at the slowest link
//! ([`MAX_IN_FLIGHT`] at [`SLOWEST_LINK`]).
//!
//! Once the body is handed over, bytes the kernel still holds for the
//! peer and sees acknowledged ([`super::unacked`]) count as movement: a body
//! draining slowly from socket buffers (or into a proxy) is not stalled.
//!
//! reqwest's own `read_timeout` cannot do this: its timer runs from the
//! request until the response head, across the whole upload body
//! (reqwest#2784), and a trickle resets it.
//!
//! A host [`MAX_STALLS`] of whose requests in a row stall or cannot
//! connect is marked down for the run ([`Health`]): its remaining requests
//! fail at once with one named cause, so no other host's work waits behind
//! it. The evidence is counted per request, not per attempt: one request's
//! own retries (up to [`retry::MAX_ATTEMPTS`](super::retry::MAX_ATTEMPTS))
//! never mark a host down by themselves.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::time::Instant;

use super::unacked::Unacked;

/// Idle window when the configuration gives none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

/// Less than this in a whole window is a stall (curl's low-speed limit).
pub const MIN_BYTES: u64 = 1024;

/// Windows a registry may take to answer once an upload body is sent.
pub const WINDOWS_AFTER_UPLOAD: u32 = 10;

/// The most of a body that may still be on its way once all of it was
/// handed over (our socket buffer, the peer's, a proxy's): loopback and
/// proxies hold megabytes, acknowledged before the registry has them.
pub const MAX_IN_FLIGHT: u64 = 16 << 20;

/// The slowest link a body still in flight is given time for: 64 KiB/s
/// (half a megabit). Where the kernel cannot show the bytes moving (they
/// were acknowledged into a peer's or a proxy's buffers), the answer to an
/// upload is waited for that much longer.
pub const SLOWEST_LINK: u64 = 64 << 10;

/// Distinct requests in a row that stalled (or could not connect) and
/// mark a host down.
pub const MAX_STALLS: usize = 3;

tokio::task_local! {
    /// The request (all its attempts, and the retries of its body) the
    /// current task is making, for [`Health`].
    static REQUEST: u64;
}

/// Numbers for requests.
static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// Runs `request` as one request for [`Health`]: whatever attempts and
/// retries it makes count once against a host. Nested calls keep the
/// outermost request (an upload retried whole, around the client's own
/// attempt loop).
pub async fn one_request<T>(request: impl std::future::Future<Output = T>) -> T {
    match REQUEST.try_with(|id| *id) {
        Ok(_) => request.await,
        Err(_) => {
            REQUEST
                .scope(NEXT_REQUEST.fetch_add(1, Ordering::Relaxed), request)
                .await
        }
    }
}

/// The request the current task is making (a fresh number outside
/// [`one_request`]: each failure then counts on its own).
fn current_request() -> u64 {
    REQUEST
        .try_with(|id| *id)
        .unwrap_or_else(|_| NEXT_REQUEST.fetch_add(1, Ordering::Relaxed))
}

/// Why a transfer stopped: the peer went quiet, or the transport failed.
#[derive(Debug)]
pub enum Fault {
    /// Less than [`MIN_BYTES`] moved in a window.
    Stalled,
    /// The transport failed.
    Transport(reqwest::Error),
}

/// The progress of one request's upload body, for [`send`]'s deadline.
#[derive(Default)]
pub struct Watch {
    /// Request body bytes handed to the connection so far.
    moved: AtomicU64,
    /// True once the whole request body was handed over.
    sent: AtomicBool,
    /// The body's length, once it is known.
    length: AtomicU64,
    /// Where the kernel's count of unacknowledged bytes comes from
    /// ([`Unacked::now`]; the unit tests give none).
    unacked: Option<fn() -> Option<Unacked>>,
}

impl Watch {
    /// A watch for one attempt.
    pub fn new() -> Arc<Watch> {
        Arc::new(Watch {
            unacked: Some(Unacked::now),
            ..Watch::default()
        })
    }

    /// A watch that does not ask the kernel (the unit tests: other tests'
    /// sockets drain meanwhile).
    #[cfg(test)]
    fn blind() -> Arc<Watch> {
        Arc::new(Watch::default())
    }

    /// Resolves when the request stalls: a window with less than
    /// [`MIN_BYTES`] of body sent (or, the body sent, several windows
    /// without an answer).
    async fn stalled(&self, window: Duration) {
        let mut quiet = 0;
        // For a request with a body: what the kernel held to send at the
        // last window's end.
        let mut unacked: Option<Unacked> = None;
        loop {
            let before = self.moved.load(Ordering::Relaxed);
            tokio::time::sleep(window).await;
            // Slow is not stalled: a body waits in socket buffers while they
            // drain (the kernel wakes a writer only once a good part of its
            // buffer is free), and the last of it is still on its way once
            // all was handed over. While the peer acknowledges at least
            // MIN_BYTES a window, the body moves.
            let now = (self.length.load(Ordering::Relaxed) > 0)
                .then_some(self.unacked)
                .flatten()
                .and_then(|count| count());
            let draining =
                matches!((&unacked, &now), (Some(then), Some(now)) if then.drained(now, MIN_BYTES));
            unacked = now;
            if draining || self.moved.load(Ordering::Relaxed) - before >= MIN_BYTES {
                quiet = 0;
                continue;
            }
            quiet += 1;
            let allowed = if self.sent.load(Ordering::Relaxed) {
                WINDOWS_AFTER_UPLOAD + self.in_flight_windows(window)
            } else {
                1
            };
            if quiet >= allowed {
                return;
            }
        }
    }

    /// Windows that what may still be in flight of the body takes at the
    /// slowest link ([`MAX_IN_FLIGHT`], [`SLOWEST_LINK`]).
    fn in_flight_windows(&self, window: Duration) -> u32 {
        let in_flight = self.length.load(Ordering::Relaxed).min(MAX_IN_FLIGHT);
        let per_window = (SLOWEST_LINK as f64 * window.as_secs_f64()).max(1.0);
        (in_flight as f64 / per_window).floor() as u32
    }

    /// `body` (a streamed request body of `length` bytes) reporting its
    /// progress here. The body counts as sent once `length` bytes passed:
    /// with a `Content-Length`, hyper never asks a stream for more, so its
    /// end is never seen (and a slow link may still be draining megabytes
    /// of socket buffers by then).
    pub fn body<S>(
        self: &Arc<Self>,
        body: S,
        length: u64,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + use<S>
    where
        S: Stream<Item = std::io::Result<Bytes>>,
    {
        self.length.store(length, Ordering::Relaxed);
        let (moving, done) = (self.clone(), self.clone());
        let end = futures::stream::once(async move {
            done.sent.store(true, Ordering::Relaxed);
            None
        })
        .filter_map(futures::future::ready);
        body.inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                let before = moving
                    .moved
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if before + chunk.len() as u64 >= length {
                    moving.sent.store(true, Ordering::Relaxed);
                }
            }
        })
        .chain(end)
    }
}

/// Sends `request` and waits for the response head, until it stalls.
pub async fn send(
    request: reqwest::RequestBuilder,
    watch: &Watch,
    window: Duration,
) -> Result<reqwest::Response, Fault> {
    // Whichever comes first: the answer, or the watch seeing no progress.
    tokio::select! {
        answer = request.send() => answer.map_err(Fault::Transport),
        () = watch.stalled(window) => Err(Fault::Stalled),
    }
}

/// A response body whose chunks fail with [`Fault::Stalled`] once a window
/// passes with less than [`MIN_BYTES`] received; `keep` (a host permit)
/// lives as long as the stream.
pub fn body<K: Send + 'static>(
    response: reqwest::Response,
    window: Duration,
    keep: K,
) -> Pin<Box<dyn Stream<Item = Result<Bytes, Fault>> + Send>> {
    struct State<K> {
        chunks: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
        deadline: Instant,
        moved: u64,
        _keep: K,
    }
    let state = State {
        chunks: Box::pin(response.bytes_stream()),
        deadline: Instant::now() + window,
        moved: 0,
        _keep: keep,
    };
    Box::pin(futures::stream::unfold(
        Some(state),
        move |state| async move {
            let mut state = state?;
            loop {
                // The next chunk, unless the window ends first.
                let next = tokio::select! {
                    chunk = state.chunks.next() => Some(chunk),
                    () = tokio::time::sleep_until(state.deadline) => None,
                };
                match next {
                    Some(None) => return None,
                    Some(Some(Err(error))) => return Some((Err(Fault::Transport(error)), None)),
                    Some(Some(Ok(chunk))) => {
                        state.moved += chunk.len() as u64;
                        if Instant::now() >= state.deadline {
                            if state.moved < MIN_BYTES {
                                return Some((Err(Fault::Stalled), None));
                            }
                            state.deadline = Instant::now() + window;
                            state.moved = 0;
                        }
                        return Some((Ok(chunk), Some(state)));
                    }
                    None if state.moved < MIN_BYTES => return Some((Err(Fault::Stalled), None)),
                    None => {
                        state.deadline = Instant::now() + window;
                        state.moved = 0;
                    }
                }
            }
        },
    ))
}

/// Whether a host still answers: the one place that decides a host is
/// down. The evidence: distinct requests (see [`one_request`]) that
/// stalled or could not connect since the host last answered.
#[derive(Default)]
pub struct Health {
    /// Requests that failed so since the last answer.
    failing: Mutex<std::collections::HashSet<u64>>,
    /// Why the host was marked down, once it was.
    down: Mutex<Option<String>>,
}

impl Health {
    /// An answer came: the host is alive.
    pub fn answered(&self) {
        self.failing.lock().expect("health lock poisoned").clear();
    }

    /// The current request stalled or could not connect; marks the host
    /// down once [`MAX_STALLS`] distinct requests in a row did. True when
    /// this call marked it.
    pub fn stalled(&self, cause: &str) -> bool {
        let failing = {
            let mut failing = self.failing.lock().expect("health lock poisoned");
            failing.insert(current_request());
            failing.len()
        };
        if failing < MAX_STALLS {
            return false;
        }
        let mut down = self.down.lock().expect("health lock poisoned");
        if down.is_some() {
            return false;
        }
        *down = Some(format!("{failing} requests in a row failed ({cause})"));
        true
    }

    /// Why the host is down, if it is.
    pub fn down(&self) -> Option<String> {
        self.down.lock().expect("health lock poisoned").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One request's retries count once; distinct requests mark it down.
    #[tokio::test]
    async fn a_host_is_down_on_distinct_requests_only() {
        let health = Health::default();
        one_request(async {
            for _ in 0..4 {
                assert!(!health.stalled("x"));
            }
        })
        .await;
        assert_eq!(health.down(), None);
        one_request(async { assert!(!health.stalled("x")) }).await;
        assert!(one_request(async { health.stalled("again") }).await);
        assert!(health.down().unwrap().starts_with("3 requests"));
    }

    #[test]
    fn a_host_is_down_after_stalls_in_a_row_only() {
        let health = Health::default();
        assert!(!health.stalled("x"));
        assert!(!health.stalled("x"));
        health.answered();
        assert!(!health.stalled("x"));
        assert!(!health.stalled("x"));
        assert_eq!(health.down(), None);
        assert!(health.stalled("no byte for 1s"));
        assert!(!health.stalled("x"), "marked once");
        assert!(health.down().unwrap().contains("no byte for 1s"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_stalls_after_one_quiet_window_or_ten_once_its_body_is_sent() {
        let window = Duration::from_secs(30);
        let watch = Watch::blind();
        let start = Instant::now();
        watch.stalled(window).await;
        assert_eq!(start.elapsed(), window);

        let watch = Watch::blind();
        let body = watch.body(futures::stream::iter([Ok(Bytes::from_static(b"x"))]), 1);
        let _: Vec<_> = body.collect().await;
        let start = Instant::now();
        watch.stalled(window).await;
        assert_eq!(start.elapsed(), window * WINDOWS_AFTER_UPLOAD);
    }

    /// Once a body is sent, what may still be in flight of it is given time
    /// at the slowest link: an 8 MiB body, 2 s windows, 64 more windows.
    #[tokio::test(start_paused = true)]
    async fn a_large_body_sent_is_given_time_to_drain() {
        let window = Duration::from_secs(2);
        let watch = Watch::blind();
        let body = watch.body(
            futures::stream::iter([Ok(Bytes::from(vec![0; 8 << 20]))]),
            8 << 20,
        );
        let _: Vec<_> = body.collect().await;
        let start = Instant::now();
        watch.stalled(window).await;
        assert_eq!(start.elapsed(), window * (WINDOWS_AFTER_UPLOAD + 64));
    }

    /// hyper stops asking a body for more once `Content-Length` bytes came:
    /// the body is sent then, though its stream never ended.
    #[tokio::test(start_paused = true)]
    async fn a_body_is_sent_once_its_length_has_passed() {
        let window = Duration::from_secs(30);
        let watch = Watch::blind();
        let endless = futures::stream::iter([Ok(Bytes::from_static(b"xy"))])
            .chain(futures::stream::pending());
        let mut body = std::pin::pin!(watch.body(endless, 2));
        assert!(body.next().await.is_some());
        let start = Instant::now();
        watch.stalled(window).await;
        assert_eq!(start.elapsed(), window * WINDOWS_AFTER_UPLOAD);
    }

    #[tokio::test(start_paused = true)]
    async fn moving_uploads_never_stall() {
        let window = Duration::from_secs(30);
        let watch = Watch::blind();
        let feeder = watch.clone();
        // 2 KiB every 10 s: slow, but moving.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                feeder.moved.fetch_add(2048, Ordering::Relaxed);
            }
        });
        let stalled = tokio::time::timeout(Duration::from_secs(3600), watch.stalled(window)).await;
        assert!(stalled.is_err(), "a moving upload was called stalled");
    }
}
