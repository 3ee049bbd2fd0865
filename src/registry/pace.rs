//! Limits nobody published, found by trying.
//!
//! Most registries throttle at a rate they do not document, and many say
//! so with a bare 429 (no `Retry-After`). Retrying each request on its own
//! brings every throttled request back at once into an empty bucket. So
//! each registry host keeps a [`Pace`] per [`Kind`] of request: manifest
//! reads and blob reads apart (some registries limit them apart), and one
//! for writes, uploads and manifest writes together (a limit on pushes,
//! such as a proxy's in front of a registry, counts both in one bucket;
//! ECR's per-action quotas are documented, and kept to as ceilings). Of
//! writes, the PUTs take slots of the pace, as `write_rate_limit` counts
//! them; an upload session's POST and PATCHes only once the registry
//! throttles one ([`Pace::takes_slot`]). Writes start at a modest pace
//! that grows fast while answers are clean (TCP's slow start), so a burst
//! never meets a wall of 429s; reads start unpaced. On a throttling answer
//! the pace halves (at most every 300 ms: one burst of 429s counts once),
//! grows back fast to four fifths of where the registry throttled, then
//! slowly while answers are clean (by about one request a second, each
//! second: additive increase, multiplicative decrease, as TCP does, with
//! CUBIC's quick return below the last limit); requests already waiting
//! take the faster pace as it grows ([`RESLOT`]). A pace grows no further
//! than twice the rate requests took turns at (RFC 7661's congestion
//! window validation): answers to a trickle say nothing of a burst. Turns
//! are kept to as requests leave, not only as they are handed out: a
//! request that took its turn and then waited for a connection leaves an
//! interval after the last ([`Pace::spaced`]), and turns missed while the
//! client was off the CPU are lost, not made up at once
//! ([`Pacer::begin`]). The configured and
//! documented limits (`rate_limit`, `write_rate_limit`, `concurrency`)
//! stay ceilings above it.
//!
//! What was found is reported per registry ([`Settled`]), so a user can
//! write the limit into `mirror.yaml`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::Method;
use tokio::time::Instant;

/// What a request does, for pacing: registries limit these apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Manifest GETs and HEADs, tag lists, referrers.
    ManifestRead,
    /// Blob GETs and HEADs.
    BlobRead,
    /// Upload sessions: POST, PATCH and the PUT that completes them.
    Upload,
    /// Manifest PUTs.
    ManifestWrite,
}

impl Kind {
    /// The kind of `method` on `url` (`/v2/<name>/blobs/…`, `…/manifests/…`).
    pub fn of(method: &Method, url: &str) -> Kind {
        let path = url.split('?').next().unwrap_or_default();
        let writes = *method != Method::GET && *method != Method::HEAD;
        match (
            path.contains("/blobs/uploads"),
            path.contains("/blobs/"),
            writes,
        ) {
            (true, _, _) => Kind::Upload,
            (false, true, true) => Kind::Upload,
            (false, true, false) => Kind::BlobRead,
            (false, false, true) => Kind::ManifestWrite,
            (false, false, false) => Kind::ManifestRead,
        }
    }

    /// Every kind, in the order reports name them.
    pub const ALL: [Kind; 4] = [
        Kind::ManifestRead,
        Kind::BlobRead,
        Kind::Upload,
        Kind::ManifestWrite,
    ];

    /// The name reports use (`manifest_reads`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ManifestRead => "manifest_reads",
            Kind::BlobRead => "blob_reads",
            Kind::Upload => "uploads",
            Kind::ManifestWrite => "manifest_writes",
        }
    }

    /// Its pace's index: uploads and manifest writes share one pace (see
    /// [`Pace`]).
    fn index(self) -> usize {
        match self {
            Kind::ManifestRead => 0,
            Kind::BlobRead => 1,
            Kind::Upload | Kind::ManifestWrite => 2,
        }
    }
}

/// The paces a registry keeps: manifest reads, blob reads, writes.
const PACES: usize = 3;

/// The lowest pace: one request every 4 s. A registry that throttles even
/// that is waited for by each request's own back-off.
const SLOWEST: f64 = 0.25;

/// Where writes start: 32 a second, raised by a tenth for each clean
/// answer ([`GROWTH`]) until the registry throttles or [`UNPACED`] is
/// passed (after about 45 clean answers). A burst of writes into a registry
/// with a limit would meet a wall of 429s before the first came back;
/// reads start unpaced (their published limits are `rate_limit`'s).
const FIRST_WRITES: f64 = 32.0;

/// How much faster each clean answer makes a pace still finding out.
const GROWTH: f64 = 1.1;

/// A pace above which requests are not paced at all.
const UNPACED: f64 = 2000.0;

/// How close below the pace that was last throttled a lowered pace grows
/// back fast, before it creeps past it by about one a second each second.
const RECOVER_TO: f64 = 0.8;

/// How much faster than the slots already handed out a pace must have
/// grown for the requests waiting for them to take new ones. Requests
/// queue for their slots: a queue handed slots at a lowered pace kept it
/// for as long as it was (seconds of writes at half the pace found) while
/// the pace grew back. Each growth of a tenth ([`GROWTH`]) hands them out
/// anew; the creep of one a second each second does so every few seconds.
const RESLOT: f64 = 1.08;

/// Fewer clean answers than this in the last second tell too little of
/// what a registry accepts ([`Pacer::decrease`]).
const FEW: usize = 4;

/// How late a request may wake for its slot, beyond one interval of the
/// pace, before the slots after it are handed out anew: the timer's and
/// the scheduler's usual delay ([`Pacer::begin`]).
const LATE: Duration = Duration::from_millis(10);

/// The least time between two decreases of a pace.
const DECREASE_EVERY: Duration = Duration::from_millis(300);

/// How far back clean answers count for the rate the registry accepted
/// when its first throttling answer comes.
const RECENT: Duration = Duration::from_secs(1);

/// The pace of one kind of request at one registry.
#[derive(Debug, Default)]
struct Pacer {
    /// Requests a second; `None`: not paced.
    rate: Option<f64>,
    /// Still finding out (no throttling answer yet): the pace grows fast.
    starting: bool,
    /// When the next request may start.
    next: Option<Instant>,
    /// Recent clean answers (within [`RECENT`]).
    recent: VecDeque<Instant>,
    /// Recent request starts (within [`RECENT`]).
    starts: VecDeque<Instant>,
    /// Recent clean answers to requests that took no slot (upload
    /// sessions' POSTs and PATCHes, until the registry throttles one):
    /// what the registry accepted, once it turns out to count them.
    unslotted: VecDeque<Instant>,
    /// When the rate was last lowered.
    last_decrease: Option<Instant>,
    /// The pace when it was last lowered: where the registry throttled.
    throttled_at: Option<f64>,
    /// Changes of pace so far (each decrease, and each quarter more while
    /// finding out): a request waiting for a slot given before a change
    /// takes a new slot at the new pace.
    epoch: u64,
    /// The pace when the epoch last changed.
    epoch_rate: f64,
    /// When the last request that waited its turn started.
    begun: Option<Instant>,
    /// When the last request that took a slot was sent ([`Pacer::send`]).
    sent: Option<Instant>,
    /// Throttling answers seen.
    throttled: u64,
}

impl Pacer {
    /// A pacer for `kind`: writes start slow and speed up (see
    /// [`FIRST_WRITES`]), reads start unpaced.
    fn new(kind: Kind) -> Pacer {
        let writes = matches!(kind, Kind::Upload | Kind::ManifestWrite);
        Pacer {
            rate: writes.then_some(FIRST_WRITES),
            starting: true,
            epoch_rate: if writes { FIRST_WRITES } else { 0.0 },
            ..Pacer::default()
        }
    }

    /// When a request may start, counting it as started then.
    fn slot(&mut self, now: Instant) -> Instant {
        let at = match (self.rate, self.next) {
            (Some(rate), Some(next)) if next > now => {
                self.next = Some(next + Duration::from_secs_f64(1.0 / rate));
                next
            }
            (Some(rate), _) => {
                self.next = Some(now + Duration::from_secs_f64(1.0 / rate));
                now
            }
            (None, _) => now,
        };
        forget_before(&mut self.starts, now);
        self.starts.push_back(at);
        at
    }

    /// The pace changed: requests waiting for a slot, or to be sent, take
    /// new turns at it (the sends claimed ahead of `now` are forgotten).
    fn new_epoch(&mut self, now: Instant) {
        self.epoch += 1;
        self.sent = self.sent.map(|sent| sent.min(now));
    }

    /// When a request that took its slot and has its connection may be
    /// sent: an interval after the last one (or now), counting it as
    /// sent then ([`Pace::spaced`]).
    fn send(&mut self, now: Instant) -> Instant {
        let Some(rate) = self.rate else {
            return now;
        };
        let at = self.sent.map_or(now, |last| {
            now.max(last + Duration::from_secs_f64(1.0 / rate))
        });
        self.sent = Some(at);
        at
    }

    /// Requests a second that took slots in the last second (those still
    /// waiting for theirs too), over the time they span, at least a
    /// quarter second.
    fn used(&mut self, now: Instant) -> f64 {
        forget_before(&mut self.starts, now);
        per_second(&self.starts, now)
    }

    /// A request whose slot was `at` woke at `now`; when it started.
    /// Late by more than an interval of the pace (and [`LATE`]), the
    /// client was held off the CPU (a busy runner): the requests whose
    /// slots passed meanwhile would all start at once, a burst the pace
    /// is there to prevent. So it starts now, and the slots after it are
    /// handed out anew from now (a new epoch): turns missed are lost, not
    /// made up.
    fn begin(&mut self, at: Instant, now: Instant) -> Instant {
        let interval = self.rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
        match interval {
            Some(interval) if now.duration_since(at) > interval.max(LATE) => {
                tracing::debug!(late = ?now.duration_since(at), "woke late: slots handed out anew");
                self.begun = Some(now);
                self.next = Some(now + interval);
                self.new_epoch(now);
                now
            }
            _ => {
                self.begun = Some(at);
                at
            }
        }
    }

    /// A throttling answer to a request that started at `started`. Only a
    /// request started after the last decrease lowers the pace again
    /// ([`Pacer::decrease`]): the 429s of requests sent at the old pace say
    /// nothing new (TCP's one decrease per window).
    fn throttle(&mut self, started: Instant, now: Instant) {
        self.throttled += 1;
        if self.last_decrease.is_some_and(|at| started <= at) {
            return;
        }
        self.decrease(now);
    }

    /// A clean answer to a request that took no slot: it counts for what
    /// the registry accepted only once the registry is seen to count such
    /// requests ([`Pacer::count_unslotted`]).
    fn clean_unslotted(&mut self, now: Instant) {
        forget_before(&mut self.unslotted, now);
        self.unslotted.push_back(now);
    }

    /// The registry counts the requests that took no slot: their recent
    /// clean answers are part of what it accepted.
    fn count_unslotted(&mut self) {
        let mut all: Vec<Instant> = self
            .recent
            .drain(..)
            .chain(self.unslotted.drain(..))
            .collect();
        all.sort();
        self.recent = all.into();
    }

    /// Lowers the pace: half of it (while finding out, not above half what
    /// the registry was seen to accept, once it answered [`FEW`] writes or
    /// more); unpaced until now, what the registry was seen to accept (its
    /// clean answers in the last second, or half the requests sent in it,
    /// the more). Remembers where it throttled, to grow back there fast
    /// ([`RECOVER_TO`]). At most every [`DECREASE_EVERY`]: the 429s of
    /// requests sent just before or after a decrease say nothing new.
    fn decrease(&mut self, now: Instant) {
        if self
            .last_decrease
            .is_some_and(|at| now.duration_since(at) < DECREASE_EVERY)
        {
            return;
        }
        forget_before(&mut self.recent, now);
        forget_before(&mut self.starts, now);
        forget_before(&mut self.unslotted, now);
        // Too few answers to the requests that take slots to tell what the
        // registry accepts (a throttle within a run's first moments, when
        // upload sessions were all it had answered): every write it
        // answered counts.
        if self.recent.len() < FEW {
            self.count_unslotted();
        }
        // Clean answers a second, over the time they span (at least a
        // quarter second) within the last second: early in a run the
        // registry has had less than a second to answer.
        let accepted = per_second(&self.recent, now);
        let told = self.recent.len() >= FEW;
        let rate = match self.rate {
            // Still finding out, the pace may have run far past the limit
            // before the first 429 came back: not above half what the
            // registry was seen to accept in the last second (which may
            // include a burst it will not give again); it grows back to
            // four fifths of that fast.
            Some(rate) if self.starting && told => (rate / 2.0).min(accepted.max(2.0) / 2.0),
            // Found before, or too few answers to tell even counting every
            // write: half the pace.
            Some(rate) => rate / 2.0,
            None => {
                let accepted = self.recent.len() as f64;
                let sent = self.starts.len() as f64 / 2.0;
                accepted.max(sent) / RECENT.as_secs_f64()
            }
        }
        .max(SLOWEST);
        tracing::debug!(from = ?self.rate, to = rate, "throttled: slower");
        // Where it was throttled: once found, the pace it had; while
        // finding out (or unpaced), the pace may have run far past the
        // limit, so only what the registry was seen to accept.
        self.throttled_at = match self.rate {
            Some(before) if !self.starting => Some(before),
            Some(before) if told => Some(before.min(accepted)),
            _ => Some(rate),
        };
        self.rate = Some(rate);
        self.starting = false;
        self.last_decrease = Some(now);
        // Nobody starts before one interval has passed.
        self.next = Some(now + Duration::from_secs_f64(1.0 / rate));
        self.new_epoch(now);
        self.epoch_rate = rate;
    }

    /// A clean answer: faster; fast while still finding out, then by about
    /// one request a second each second.
    fn clean(&mut self, now: Instant) {
        forget_before(&mut self.recent, now);
        self.recent.push_back(now);
        let before = self.rate;
        self.rate = match self.rate {
            // A tenth more for each clean answer: the time a run spends
            // below any pace is bounded (the sum of 1/(16 × 1.1^n) is
            // 0.69 s), and a limit is found within a few answers.
            Some(rate) if self.starting => Some(rate * GROWTH).filter(|r| *r < UNPACED),
            // Back fast to just under where the registry last throttled
            // (a tenth more per clean answer: from half, within a second),
            // as CUBIC does: a halved pace would otherwise stay far below
            // a limit it only just passed, for seconds.
            Some(rate)
                if self
                    .throttled_at
                    .is_some_and(|at| rate * GROWTH < at * RECOVER_TO) =>
            {
                Some(rate * GROWTH)
            }
            Some(rate) => Some(rate + 1.0 / rate.max(1.0)),
            None => None,
        };
        // Not past twice the rate requests started at (or waited for a
        // slot at) recently: answers to a trickle of requests say nothing
        // of a faster pace (TCP's congestion window validation, RFC 7661).
        // Grown on every answer, a pace found while uploads were under way
        // let the PUTs that ended them together out as a burst.
        let used = self.used(now);
        if let (Some(rate), Some(before)) = (self.rate.as_mut(), before) {
            *rate = rate.min(before.max(2.0 * used));
        }
        // Faster than the slots handed out by more than [`RESLOT`]: they
        // are handed out anew from the last request that started, while
        // finding out and while growing back after a throttle alike.
        let faster = match self.rate {
            Some(rate) => rate > self.epoch_rate * RESLOT,
            None => self.epoch_rate > 0.0,
        };
        if faster {
            self.new_epoch(now);
            self.epoch_rate = self.rate.unwrap_or_default();
            self.next = match (self.rate, self.begun) {
                (Some(rate), Some(begun)) => Some(begun + Duration::from_secs_f64(1.0 / rate)),
                _ => None,
            };
        }
    }
}

/// `instants` a second, over the time they span until `now`: at least a
/// quarter second, at most [`RECENT`] (early in a run there has been less
/// than a second to count).
fn per_second(instants: &VecDeque<Instant>, now: Instant) -> f64 {
    let span = instants
        .front()
        .map_or(RECENT, |oldest| now.saturating_duration_since(*oldest));
    instants.len() as f64 / span.clamp(Duration::from_millis(250), RECENT).as_secs_f64()
}

/// Drops the instants older than [`RECENT`].
fn forget_before(instants: &mut VecDeque<Instant>, now: Instant) {
    while instants
        .front()
        .is_some_and(|t| now.duration_since(*t) > RECENT)
    {
        instants.pop_front();
    }
}

/// The paces of one registry host.
#[derive(Debug)]
pub struct Pace {
    kinds: Mutex<[Pacer; PACES]>,
    /// The registry throttled a POST or PATCH of an upload session: its
    /// limit counts them, so from then on they take slots of the write
    /// pace (see [`Pace::takes_slot`]).
    sessions_counted: AtomicBool,
    /// Per kind, its epoch, for the requests waiting their turn: told when
    /// the pace changed, they take a new slot.
    changes: [tokio::sync::watch::Sender<u64>; PACES],
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            kinds: Mutex::new([Kind::ManifestRead, Kind::BlobRead, Kind::Upload].map(Pacer::new)),
            changes: [(); PACES].map(|_| tokio::sync::watch::Sender::new(0)),
            sessions_counted: AtomicBool::new(false),
        }
    }
}

/// What was found for one registry: throttling answers, and the pace each
/// kind of request settled on (requests a second), where one was needed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settled {
    /// Throttling answers (429, and 503 or 403 that throttle) in all.
    pub throttled: u64,
    /// Per kind, the pace in force at the end of the run.
    pub pace: Vec<(Kind, f64)>,
}

impl Pace {
    /// Whether a `method` request of `kind` takes a slot of its pace.
    /// Reads do, and of writes the PUTs (an upload's last request, and a
    /// manifest's): what `write_rate_limit` paces. The POST that opens an
    /// upload session and the PATCHes that fill it take none until the
    /// registry throttles one of them. A limit that counts only what
    /// completes a push (the PUTs) would otherwise let the PUTs through at
    /// half the pace found while blobs go up, and at all of it once only
    /// manifests are left; a limit that counts every push request shows
    /// itself with its first throttled POST.
    pub fn takes_slot(&self, kind: Kind, method: &Method) -> bool {
        match kind {
            Kind::ManifestRead | Kind::BlobRead | Kind::ManifestWrite => true,
            Kind::Upload => *method == Method::PUT || self.sessions_counted.load(Ordering::Relaxed),
        }
    }

    /// Waits until a request of `kind` may start; when it started. Who
    /// waits: the request alone, before it takes a connection permit.
    pub async fn before(&self, kind: Kind) -> Instant {
        loop {
            // Who waits: this request, for its slot, or for the pace to
            // change (then it takes a new slot).
            let (at, epoch, mut changed) = {
                let mut kinds = self.kinds.lock().expect("pace lock");
                let pacer = &mut kinds[kind.index()];
                let changed = self.changes[kind.index()].subscribe();
                (pacer.slot(Instant::now()), pacer.epoch, changed)
            };
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                _ = changed.changed() => {}
            }
            let mut kinds = self.kinds.lock().expect("pace lock");
            let pacer = &mut kinds[kind.index()];
            let now = Instant::now();
            if pacer.epoch == epoch && now >= at {
                let started = pacer.begin(at, now);
                let epoch = pacer.epoch;
                drop(kinds);
                self.tell(kind, epoch);
                return started;
            }
        }
    }

    /// Waits, once a request of `kind` that took its slot has its
    /// connection, until an interval of the pace has passed since the last
    /// such request was sent. Slots are handed out in turn, but requests
    /// then wait for a connection (the host's `concurrency`), and those
    /// that waited together would otherwise go out together.
    pub async fn spaced(&self, kind: Kind) {
        loop {
            let (at, epoch, mut changed) = {
                let mut kinds = self.kinds.lock().expect("pace lock");
                let pacer = &mut kinds[kind.index()];
                let now = Instant::now();
                let at = pacer.send(now);
                if at <= now {
                    return;
                }
                let changed = self.changes[kind.index()].subscribe();
                (at, pacer.epoch, changed)
            };
            tokio::select! {
                () = tokio::time::sleep_until(at) => return,
                _ = changed.changed() => {}
            }
            // The pace changed: a new turn at it, unless this one stands.
            let stands = self.kinds.lock().expect("pace lock")[kind.index()].epoch == epoch;
            if stands {
                tokio::time::sleep_until(at).await;
                return;
            }
        }
    }

    /// Tells the requests waiting for `kind` that its pace changed.
    fn tell(&self, kind: Kind, epoch: u64) {
        self.changes[kind.index()].send_if_modified(|seen| {
            let news = *seen != epoch;
            *seen = epoch;
            news
        });
    }

    /// The registry throttled a `method` request of `kind` that started
    /// at `started`.
    pub fn throttled(&self, kind: Kind, method: &Method, started: Instant) {
        let now = Instant::now();
        let mut kinds = self.kinds.lock().expect("pace lock");
        if kind == Kind::Upload
            && *method != Method::PUT
            && !self.sessions_counted.swap(true, Ordering::Relaxed)
        {
            tracing::debug!("upload sessions throttled: they take slots of the write pace");
            kinds[kind.index()].count_unslotted();
        }
        let epoch = kinds[kind.index()].epoch;
        kinds[kind.index()].throttle(started, now);
        // Registries that limit reads mostly count manifest and blob reads
        // in one bucket: the other kind of read, still finding out, goes
        // no faster than the pace just found. (Writes share one pace.)
        let sibling = match kind {
            Kind::ManifestRead => Some(Kind::BlobRead),
            Kind::BlobRead => Some(Kind::ManifestRead),
            Kind::Upload | Kind::ManifestWrite => None,
        };
        if let (Some(sibling), true) = (sibling, kinds[kind.index()].epoch > epoch) {
            let found = kinds[kind.index()].rate;
            let sibling = &mut kinds[sibling.index()];
            if sibling.starting {
                // Still finding out: not above the pace just found (its own
                // 429s, if any, lower it further).
                sibling.rate = match (sibling.rate, found) {
                    (Some(own), Some(found)) => Some(own.min(found)),
                    (_, found) => found,
                };
                sibling.starting = false;
                sibling.new_epoch(now);
                sibling.next = None;
            }
        }
        let epochs = Kind::ALL.map(|kind| (kind, kinds[kind.index()].epoch));
        drop(kinds);
        for (kind, epoch) in epochs {
            self.tell(kind, epoch);
        }
    }

    /// A request of `kind` was answered without throttling; `slotted`:
    /// it took a slot of the pace ([`Pace::takes_slot`]).
    pub fn clean(&self, kind: Kind, slotted: bool) {
        let epoch = {
            let mut kinds = self.kinds.lock().expect("pace lock");
            if !slotted {
                kinds[kind.index()].clean_unslotted(Instant::now());
                return;
            }
            kinds[kind.index()].clean(Instant::now());
            kinds[kind.index()].epoch
        };
        self.tell(kind, epoch);
    }

    /// What was found, if the registry throttled at all.
    pub fn settled(&self) -> Option<Settled> {
        let kinds = self.kinds.lock().expect("pace lock");
        let throttled: u64 = kinds.iter().map(|k| k.throttled).sum();
        (throttled > 0).then(|| Settled {
            throttled,
            pace: Kind::ALL
                .iter()
                .filter(|kind| !kinds[kind.index()].starting)
                .filter_map(|kind| kinds[kind.index()].rate.map(|rate| (*kind, rate)))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write pace of 10 a second, found: 20 answers in the last second,
    /// then a throttle (half of them).
    async fn paced_at_ten() -> std::sync::Arc<Pace> {
        let pace = std::sync::Arc::new(Pace::default());
        for _ in 0..20 {
            pace.clean(Kind::Upload, true);
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        pace.throttled(Kind::Upload, &Method::PUT, Instant::now());
        assert_eq!(pace.settled().unwrap().pace[0].1, 10.0);
        pace
    }

    /// `n` writes waiting for their slots; each returns its slot.
    fn waiters(pace: &std::sync::Arc<Pace>, n: usize) -> Vec<tokio::task::JoinHandle<Instant>> {
        (0..n)
            .map(|_| {
                let pace = pace.clone();
                tokio::spawn(async move { pace.before(Kind::Upload).await })
            })
            .collect()
    }

    /// The seconds between the instants the `waiting` tasks return, in
    /// order.
    async fn gaps(waiting: Vec<tokio::task::JoinHandle<Instant>>) -> Vec<f64> {
        let mut instants = Vec::new();
        for waiter in waiting {
            instants.push(waiter.await.unwrap());
        }
        instants.sort();
        instants
            .windows(2)
            .map(|two| two[1].duration_since(two[0]).as_secs_f64())
            .collect()
    }

    #[test]
    fn requests_are_sorted_by_what_they_do() {
        let kind = |method: Method, path: &str| Kind::of(&method, &format!("https://r{path}"));
        assert_eq!(kind(Method::HEAD, "/v2/a/manifests/v1"), Kind::ManifestRead);
        assert_eq!(kind(Method::GET, "/v2/a/tags/list?n=1"), Kind::ManifestRead);
        assert_eq!(kind(Method::GET, "/v2/a/blobs/sha256:ab"), Kind::BlobRead);
        assert_eq!(kind(Method::POST, "/v2/a/blobs/uploads/"), Kind::Upload);
        assert_eq!(
            kind(Method::PUT, "/v2/a/blobs/uploads/u?digest=sha256:ab"),
            Kind::Upload
        );
        assert_eq!(kind(Method::PUT, "/v2/a/manifests/v1"), Kind::ManifestWrite);
    }

    /// Writes (uploads and manifest writes, one pace) start at 32 a
    /// second and speed up fast while clean; a throttle halves the pace,
    /// once per window; then it grows by about one a second each second.
    #[tokio::test(start_paused = true)]
    async fn writes_start_slow_then_halve_on_a_throttle_and_grow_while_clean() {
        let pace = Pace::default();
        let start = Instant::now();
        for i in 0..32 {
            let kind = if i % 2 == 0 {
                Kind::Upload
            } else {
                Kind::ManifestWrite
            };
            pace.before(kind).await;
        }
        // The 32nd starts 31/32 s in (to the millisecond: tokio's timer):
        // both kinds take turns in one pace.
        let took = start.elapsed().as_secs_f64();
        assert!((took - 31.0 / 32.0).abs() < 0.002, "{took}");
        for _ in 0..8 {
            pace.clean(Kind::Upload, true);
            tokio::time::advance(Duration::from_millis(125)).await;
        }
        assert_eq!(pace.settled(), None, "nothing to report before a throttle");
        // 32 × 1.1⁸ ≈ 68.6 a second, halved (34.3), but not above half
        // the 8 answers the registry gave in the last second (what it
        // accepted may include a burst it will not give again).
        let sent = Instant::now();
        for _ in 0..5 {
            pace.throttled(Kind::Upload, &Method::PUT, sent);
        }
        let settled = pace.settled().unwrap();
        assert_eq!(settled.throttled, 5);
        let found = 4.0;
        assert_eq!(settled.pace.len(), 2);
        for (kind, (got, rate)) in Kind::ALL[2..].iter().zip(&settled.pace) {
            assert_eq!(got, kind);
            assert!((rate - found).abs() < 1e-6, "{kind:?}: {rate}");
        }
        // Then fast up to just under the 8 accepted (0.8 × 8 = 6.4: four
        // answers), then slowly: five more answers, about one more.
        for _ in 0..9 {
            pace.before(Kind::Upload).await;
            pace.clean(Kind::Upload, true);
        }
        let rate = pace.settled().unwrap().pace[0].1;
        let fast = found * GROWTH.powi(4);
        assert!(rate > fast + 0.8 && rate < fast + 0.9, "{rate}");
        // A 429 to a request sent before the pace was lowered changes
        // nothing; one to a request sent after, a second after, halves it.
        pace.throttled(Kind::Upload, &Method::PUT, sent);
        assert_eq!(pace.settled().unwrap().pace[0].1, rate);
        tokio::time::advance(Duration::from_secs(1)).await;
        pace.throttled(Kind::Upload, &Method::PUT, Instant::now());
        assert_eq!(pace.settled().unwrap().pace[0].1, rate / 2.0);
        // Then back fast, by a tenth per clean answer, to just under where
        // it was throttled (within 6 answers: 1.1⁶ > 1.6), then slowly:
        // writes that keep to the pace (a pace nobody uses does not grow).
        for _ in 0..6 {
            pace.before(Kind::Upload).await;
            pace.clean(Kind::Upload, true);
        }
        let back = pace.settled().unwrap().pace[0].1;
        assert!(
            back <= rate * RECOVER_TO && back > rate * RECOVER_TO / GROWTH,
            "{back} from {rate}"
        );
    }

    /// After a throttle the pace grows back fast, and requests already
    /// waiting for a slot at the lowered pace take the faster one: a queue
    /// of them would otherwise keep the lowered pace for as long as it is.
    #[tokio::test(start_paused = true)]
    async fn waiting_requests_take_the_pace_as_it_grows_back() {
        // 10 a second, to grow back fast to four fifths of the 20 accepted.
        let pace = paced_at_ten().await;
        let start = Instant::now();
        let waiting = waiters(&pace, 20);
        tokio::task::yield_now().await;
        // Five clean answers: 10 × 1.1⁴ ≈ 14.6, then one a second slower.
        for _ in 0..5 {
            pace.clean(Kind::Upload, true);
        }
        let rate = pace.settled().unwrap().pace[0].1;
        assert!(rate > 14.6 && rate < 14.8, "{rate}");
        let mut last = start;
        for waiter in waiting {
            last = last.max(waiter.await.unwrap());
        }
        // The 20th starts 19 slots in: at 14.7 a second, 1.3 s (at the 10
        // a second they were handed first, 1.9 s).
        let took = last.duration_since(start).as_secs_f64();
        assert!(took < 1.4, "{took}");
    }

    /// Clean answers to a trickle of writes (uploads still under way)
    /// say nothing about a faster pace: it grows no further than twice
    /// the rate writes started at, so the PUTs that then come together
    /// (the uploads ending at once) keep to it. Grown on every clean
    /// answer, it was 32 × 1.1²⁰ ≈ 215 a second here, and they went out
    /// in 42 ms.
    #[tokio::test(start_paused = true)]
    async fn a_pace_used_in_part_does_not_grow_past_twice_its_use() {
        let pace = std::sync::Arc::new(Pace::default());
        for _ in 0..20 {
            pace.before(Kind::Upload).await;
            tokio::time::advance(Duration::from_millis(100)).await;
            pace.clean(Kind::Upload, true);
        }
        let start = Instant::now();
        let bunch = waiters(&pace, 10);
        let mut last = start;
        for waiter in bunch {
            last = last.max(waiter.await.unwrap());
        }
        // Ten a second used: the pace stays at the 32 it started at.
        let took = last.duration_since(start).as_secs_f64();
        assert!(took >= 9.0 / 32.0 - 0.002, "{took}");
    }

    /// Requests that took their slots in turn, then waited for a
    /// connection together (every one busy), are sent an interval apart,
    /// not together when the connections free up.
    #[tokio::test(start_paused = true)]
    async fn requests_released_together_by_the_connections_leave_an_interval_apart() {
        let pace = paced_at_ten().await;
        let connections = std::sync::Arc::new(tokio::sync::Barrier::new(5));
        let waiting: Vec<_> = (0..5)
            .map(|_| {
                let (pace, connections) = (pace.clone(), connections.clone());
                tokio::spawn(async move {
                    pace.before(Kind::Upload).await;
                    connections.wait().await;
                    pace.spaced(Kind::Upload).await;
                    Instant::now()
                })
            })
            .collect();
        let gaps = gaps(waiting).await;
        assert!(gaps.iter().all(|gap| *gap > 0.099), "{gaps:?}");
    }

    /// A client held off the CPU (a busy runner) wakes late for its
    /// slots: the requests whose slots passed meanwhile do not start
    /// together, but one interval apart from when it woke.
    #[tokio::test(start_paused = true)]
    async fn turns_missed_while_held_off_the_cpu_are_not_made_up_at_once() {
        let pace = paced_at_ten().await;
        let waiting: Vec<_> = (0..12)
            .map(|_| {
                let pace = pace.clone();
                tokio::spawn(async move {
                    pace.before(Kind::Upload).await;
                    Instant::now()
                })
            })
            .collect();
        tokio::task::yield_now().await;
        // The clock jumps a second with no task run: the slots of the
        // first ten pass unseen.
        tokio::time::advance(Duration::from_secs(1)).await;
        let gaps = gaps(waiting).await;
        assert!(gaps.iter().all(|gap| *gap > 0.099), "{gaps:?}");
    }

    /// An upload session's POST and PATCHes take no slot of the write
    /// pace until the registry throttles one; then they do, and their
    /// recent clean answers count in what the registry accepted.
    #[tokio::test(start_paused = true)]
    async fn upload_sessions_take_slots_once_the_registry_throttles_one() {
        let pace = Pace::default();
        assert!(pace.takes_slot(Kind::Upload, &Method::PUT));
        assert!(pace.takes_slot(Kind::ManifestWrite, &Method::PUT));
        assert!(!pace.takes_slot(Kind::Upload, &Method::POST));
        assert!(!pace.takes_slot(Kind::Upload, &Method::PATCH));
        // Three sessions answered for each PUT, 16 answers in 15/16 s.
        for i in 0..16 {
            if i > 0 {
                tokio::time::advance(Duration::from_micros(62_500)).await;
            }
            pace.clean(Kind::Upload, i % 4 == 3);
        }
        pace.throttled(Kind::Upload, &Method::POST, Instant::now());
        assert!(pace.takes_slot(Kind::Upload, &Method::POST));
        assert!(pace.takes_slot(Kind::Upload, &Method::PATCH));
        // Half the 17 a second accepted (counting the 4 PUTs alone: 2.7).
        let rate = pace.settled().unwrap().pace[0].1;
        assert!((rate - 8.53).abs() < 0.01, "{rate}");
    }

    /// A throttle before the registry answered enough writes to tell what
    /// it accepts (the first moments of a run) halves the pace; it does
    /// not take the few answers for the registry's limit.
    #[tokio::test(start_paused = true)]
    async fn a_throttle_before_enough_answers_halves_the_pace() {
        let pace = Pace::default();
        pace.clean(Kind::Upload, false);
        pace.throttled(Kind::Upload, &Method::PUT, Instant::now());
        assert_eq!(pace.settled().unwrap().pace[0].1, FIRST_WRITES / 2.0);
    }

    /// Reads are not paced until throttled; then at what the registry
    /// accepted in the last second.
    #[tokio::test(start_paused = true)]
    async fn reads_are_unpaced_until_throttled_then_kept_to_what_was_accepted() {
        let pace = Pace::default();
        let start = Instant::now();
        for _ in 0..40 {
            pace.before(Kind::ManifestRead).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..10 {
            pace.clean(Kind::ManifestRead, true);
        }
        pace.throttled(Kind::ManifestRead, &Method::GET, Instant::now());
        assert_eq!(
            pace.settled().unwrap().pace,
            vec![(Kind::ManifestRead, 10.0), (Kind::BlobRead, 10.0)]
        );
    }
}
