//! Draining: which listening addresses are closing (removed by a reload, or all of them at a
//! graceful shutdown) and how many connections are still open. A connection asks
//! [`Drain::closing`] between requests and ends after its current one; the shutdown waits on
//! [`Drain::idle`] until the last connection is gone. A request that arrives on a removed
//! listener is served by the last plan that had it, as nginx's old worker would serve it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::plan::{ListenAddr, Plan};

pub struct Drain {
    /// Set once, at a graceful or fast shutdown: every connection is closing.
    shutting_down: AtomicBool,
    /// Listening addresses a reload removed: their connections are closing. With the last
    /// plan that had them, until the next reload.
    removed: Mutex<HashMap<ListenAddr, Option<Arc<Plan>>>>,
    /// Whether `removed` has any: the common case asks no lock.
    any_removed: AtomicBool,
    open: AtomicUsize,
    /// Bumped when a connection ends.
    ended: watch::Sender<u64>,
}

impl Default for Drain {
    fn default() -> Drain {
        Drain {
            shutting_down: AtomicBool::new(false),
            removed: Mutex::new(HashMap::new()),
            any_removed: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            ended: watch::channel(0).0,
        }
    }
}

/// Held by a connection's task: counts it as open until dropped.
pub struct Tracked(Arc<super::Shared>);

impl Drop for Tracked {
    fn drop(&mut self) {
        let drain = &self.0.drain;
        drain.open.fetch_sub(1, Ordering::AcqRel);
        drain.ended.send_modify(|n| *n += 1);
    }
}

/// Counts a connection of `shared` as open while the returned guard lives.
pub fn track(shared: &Arc<super::Shared>) -> Tracked {
    shared.drain.open.fetch_add(1, Ordering::AcqRel);
    Tracked(shared.clone())
}

impl Drain {
    /// Whether connections that came in through `configured` should end after their current
    /// request (and say `Connection: close` in its answer).
    pub fn closing(&self, configured: &ListenAddr) -> bool {
        self.shutting_down.load(Ordering::Acquire)
            || (self.any_removed.load(Ordering::Acquire)
                && self
                    .removed
                    .lock()
                    .map(|r| r.contains_key(configured))
                    .unwrap_or(false))
    }

    /// Resolves once connections of `configured` are closing; an idle connection waits on
    /// this next to its read of the next request.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The plan a request on `configured` uses when a reload removed that listener.
    pub fn plan_of_removed(&self, configured: &ListenAddr) -> Option<Arc<Plan>> {
        if !self.any_removed.load(Ordering::Acquire) {
            return None;
        }
        self.removed.lock().ok()?.get(configured).cloned().flatten()
    }

    /// A reload dropped these listeners of `old`: their open connections finish what they are
    /// doing. The plans kept for those of the reload before are let go (their connections have
    /// had a reload's time to send a request; later ones get the current plan).
    pub fn remove(&self, addrs: impl IntoIterator<Item = ListenAddr>, old: &Arc<Plan>) {
        let addrs: Vec<ListenAddr> = addrs.into_iter().collect();
        if let Ok(mut r) = self.removed.lock() {
            for plan in r.values_mut() {
                *plan = None;
            }
            r.extend(addrs.iter().map(|a| (a.clone(), Some(old.clone()))));
            self.any_removed.store(!r.is_empty(), Ordering::Release);
        }
        if !addrs.is_empty() {
            wake_all();
        }
    }

    /// A reload bound these (again): connections accepted on them are not closing.
    pub fn restore(&self, addrs: &[ListenAddr]) {
        if let Ok(mut r) = self.removed.lock() {
            for a in addrs {
                r.remove(a);
            }
            self.any_removed.store(!r.is_empty(), Ordering::Release);
        }
    }

    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        wake_all();
    }

    /// Resolves when no connection is open.
    pub async fn idle(&self) {
        let mut rx = self.ended.subscribe();
        while self.open_connections() > 0 {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Plans replaced so far, and the `worker_shutdown_timeout` of the latest: a long-lived
/// connection (a WebSocket tunnel) opened on an older plan ends that long after the plan
/// was replaced, rather than piling up across reloads. Process-wide, as the plan is.
fn retirements() -> &'static watch::Sender<(u64, Option<Duration>)> {
    static CELL: OnceLock<watch::Sender<(u64, Option<Duration>)>> = OnceLock::new();
    CELL.get_or_init(|| watch::channel((0, None)).0)
}

/// Called by a reload once the new plan is in.
pub fn retire_plan(timeout: Option<Duration>) {
    retirements().send_modify(|(generation, t)| {
        *generation += 1;
        GENERATION.store(*generation, Ordering::Release);
        *t = timeout;
    });
    wake_all();
}

/// The generation of [`retirements`], readable without its lock (asked on every request).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Wakes every connection waiting for a request to look again: a listener closing, a
/// shutdown, a plan retired. One small `Notified` per idle connection, where two watch receivers and their
/// futures would be three times its size.
fn wake() -> &'static tokio::sync::Notify {
    static WAKE: OnceLock<tokio::sync::Notify> = OnceLock::new();
    WAKE.get_or_init(tokio::sync::Notify::new)
}

/// Wake-ups so far: a connection that saw this count has nothing new to look at.
static WAKES: AtomicU64 = AtomicU64::new(0);

fn wake_all() {
    WAKES.fetch_add(1, Ordering::Release);
    wake().notify_waiters();
}

/// A connection's standing registration for wake-ups, kept across its requests and made
/// again only after one (a `Notified` made and dropped at each wait took the Notify's lock
/// three times a request). Made before the connection first looks at what it waits for.
pub struct Wakeups {
    /// [`WAKES`] at the last look.
    seen: u64,
    /// The `Notified` beside it is registered with the task's waker and not yet used up.
    armed: bool,
}

impl Wakeups {
    pub fn new() -> Wakeups {
        Wakeups {
            seen: WAKES.load(Ordering::Acquire),
            armed: false,
        }
    }

    /// `Ready` when there was a wake-up since the last look: the connection looks again at
    /// what it waits for. `notified` is the registration, replaced when it is not armed.
    pub fn poll(
        &mut self,
        mut notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'static>>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::future::Future;
        if self.armed && WAKES.load(Ordering::Acquire) == self.seen {
            // The registration wakes the task when a wake-up comes.
            return std::task::Poll::Pending;
        }
        // Registered first, counted after: a wake-up in between is seen by one or the other.
        notified.set(woken());
        let fired = notified.as_mut().poll(cx).is_ready();
        let now = WAKES.load(Ordering::Acquire);
        let changed = now != self.seen;
        self.seen = now;
        if fired || changed {
            // The registration may be used up: made anew at the next look.
            self.armed = false;
            std::task::Poll::Ready(())
        } else {
            self.armed = true;
            std::task::Poll::Pending
        }
    }
}

/// Resolves at the next [`wake`]-up. Enable it before looking at what it wakes for, so that
/// a change in between is not missed.
pub fn woken() -> tokio::sync::futures::Notified<'static> {
    wake().notified()
}

/// Resolves when a connection waiting for its next request must close instead: draining
/// started (checked only once it is `idle`, between requests), or worker_shutdown_timeout has
/// run since a reload replaced the plan of `generation`. One small `Notified` wakes it; the
/// timer is made (boxed) only after such a reload.
///
/// Not an `async fn` (it would keep its arguments twice), and no `select!`: every idle
/// connection holds this future.
pub fn closed_while_waiting<'a>(
    drain: &'a Drain,
    configured: &'a ListenAddr,
    idle: bool,
    generation: u64,
) -> impl std::future::Future<Output = ()> + Send + 'a {
    use std::future::Future;
    use std::task::Poll;
    async move {
        let mut retire: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let woken = woken();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if idle && drain.closing(configured) {
                return;
            }
            if retire.is_none() {
                retire = retired_since(generation).map(|t| Box::pin(tokio::time::sleep(t)));
            }
            // Ready(true): the timeout ran; Ready(false): woken, look again.
            let timed_out = std::future::poll_fn(|cx| {
                if let Some(sleep) = retire.as_mut()
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(true);
                }
                woken.as_mut().poll(cx).map(|()| false)
            })
            .await;
            if timed_out {
                return;
            }
        }
    }
}

/// `worker_shutdown_timeout`, when the plan of `generation` has been replaced and it is set.
pub fn retired_since(generation: u64) -> Option<Duration> {
    if GENERATION.load(Ordering::Acquire) <= generation {
        return None;
    }
    let (now, timeout) = *retirements().borrow();
    if now > generation { timeout } else { None }
}

/// The plan generation now: a tunnel notes it when it opens.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Resolves `worker_shutdown_timeout` after the plan of `generation` was replaced; never when
/// the timeout is not set (nginx's default: no bound).
pub async fn retired(generation: u64) {
    let mut rx = retirements().subscribe();
    loop {
        let (now, timeout) = *rx.borrow_and_update();
        if now > generation
            && let Some(t) = timeout
        {
            // Boxed: every idle connection waits on this future, the timer only after a
            // reload.
            return Box::pin(tokio::time::sleep(t)).await;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
