//! Time limits that cost nothing when they are not needed.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

/// The limit passed before the work finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// `tokio::time::timeout`, with no timer set when `fut` is done at its first poll, as most
/// writes are (the socket's buffer takes them whole). A timer is a registration in tokio's
/// wheel and a removal from it: on a small answer it cost more than the write's own work.
/// The limit then counts from the first time `fut` had to wait.
pub async fn within<F: Future>(wait: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let mut fut = std::pin::pin!(fut);
    match first_poll(fut.as_mut()).await {
        Some(v) => Ok(v),
        None => tokio::time::timeout(wait, fut).await.map_err(|_| Elapsed),
    }
}

/// `tokio::time::timeout_at`, with no timer set when `fut` is done at its first poll (a
/// request's head that is all in the socket already).
pub async fn by<F: Future>(deadline: tokio::time::Instant, fut: F) -> Result<F::Output, Elapsed> {
    let mut fut = std::pin::pin!(fut);
    match first_poll(fut.as_mut()).await {
        Some(v) => Ok(v),
        None => tokio::time::timeout_at(deadline, fut)
            .await
            .map_err(|_| Elapsed),
    }
}

/// `fut`, noting in `waited` whether it ever had to wait (when it did not, no time passed
/// and no clock needs reading for its end).
pub async fn noting_wait<F: Future>(fut: F, waited: &mut bool) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        let poll = fut.as_mut().poll(cx);
        if poll.is_pending() {
            *waited = true;
        }
        poll
    })
    .await
}

/// `fut` polled once: its output if it had it.
async fn first_poll<F: Future>(mut fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match fut.as_mut().poll(cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    })
    .await
}

/// A timer kept for a connection's life and moved at each wait: moved later, it stays where
/// it is in tokio's wheel (tokio re-files it when it comes due before its deadline), so a wait
/// per request (an upstream's answer) costs no registration in the wheel and no removal from
/// it, which cost more than the rest of the wait. Boxed, made at the first wait.
#[derive(Default)]
pub struct Lazy(Option<std::pin::Pin<Box<tokio::time::Sleep>>>);

impl Lazy {
    /// Resolves at `deadline`, not before.
    pub async fn until(&mut self, deadline: tokio::time::Instant) {
        let timer = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().reset(deadline);
        timer.as_mut().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_work_needs_no_time_and_slow_work_times_out() {
        assert_eq!(within(Duration::from_millis(5), async { 7 }).await, Ok(7));
        let slow = tokio::time::sleep(Duration::from_secs(60));
        assert_eq!(within(Duration::from_millis(5), slow).await, Err(Elapsed));
        let in_time = tokio::time::sleep(Duration::from_millis(3));
        assert_eq!(within(Duration::from_millis(5), in_time).await, Ok(()));
        let soon = tokio::time::Instant::now() + Duration::from_millis(5);
        assert_eq!(by(soon, async { 7 }).await, Ok(7));
        let slow = tokio::time::sleep(Duration::from_secs(60));
        assert_eq!(by(soon, slow).await, Err(Elapsed));
    }

    #[tokio::test]
    async fn a_lazy_timer_fires_at_each_deadline_not_before() {
        use tokio::time::Instant;
        let mut timer = Lazy::default();
        let start = Instant::now();
        timer.until(start + Duration::from_millis(5)).await;
        assert!(start.elapsed() >= Duration::from_millis(5));
        // A later deadline: the timer fired already, and is re-armed rather than done.
        let later = Instant::now() + Duration::from_millis(20);
        timer.until(later).await;
        assert!(Instant::now() >= later);
        // A sooner one than it is set for moves it.
        let far = Instant::now() + Duration::from_secs(60);
        let near = Instant::now() + Duration::from_millis(5);
        let wait = tokio::time::timeout(Duration::from_millis(1), timer.until(far)).await;
        assert!(wait.is_err());
        let before = Instant::now();
        timer.until(near).await;
        assert!(before.elapsed() < Duration::from_secs(5));
    }
}
