//! Boxes for the futures made per request, kept for reuse on their thread.
//!
//! A request's state (2 KiB) and a proxied exchange's are boxed, so that an idle connection
//! holds neither. From the allocator, such a box cost more than 200 instructions per request
//! (callgrind): one block of a size is taken and given back per request, and mimalloc finds
//! the block given back only on its slow path. Here a thread keeps the boxes given back, by
//! size, and hands the last one out again: a push and a pop, and memory that is still in the
//! cache. What a thread keeps is bounded ([`KEEP`] per size), not tied to its connections.

use std::alloc::Layout;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// How many free boxes of one size a thread keeps: as many as requests it serves at once,
/// about. 64 of the request's 2 KiB boxes are 128 KiB.
const KEEP: usize = 64;

/// The free boxes of one thread, a list per layout (a few: one per kind of future).
struct Free(Vec<(Layout, Vec<NonNull<u8>>)>);

impl Drop for Free {
    fn drop(&mut self) {
        for (layout, ptrs) in &self.0 {
            for p in ptrs {
                // SAFETY: each was allocated with this layout and is not in use.
                unsafe { std::alloc::dealloc(p.as_ptr(), *layout) };
            }
        }
    }
}

thread_local! {
    static FREE: RefCell<Free> = const { RefCell::new(Free(Vec::new())) };
}

/// Memory for a `T`, from this thread's free boxes or the allocator.
fn take(layout: Layout) -> NonNull<u8> {
    let kept = FREE
        .try_with(|f| {
            let mut f = f.borrow_mut();
            f.0.iter_mut()
                .find(|(l, _)| *l == layout)
                .and_then(|(_, ptrs)| ptrs.pop())
        })
        .ok()
        .flatten();
    kept.unwrap_or_else(|| {
        // SAFETY: the layout is not zero-sized (checked by the caller).
        let p = unsafe { std::alloc::alloc(layout) };
        NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
    })
}

/// Gives `p` back to this thread's free boxes, or to the allocator when they are full.
fn give(p: NonNull<u8>, layout: Layout) {
    let kept = FREE.try_with(|f| {
        let mut f = f.borrow_mut();
        let at = match f.0.iter().position(|(l, _)| *l == layout) {
            Some(at) => at,
            None => {
                f.0.push((layout, Vec::with_capacity(KEEP)));
                f.0.len() - 1
            }
        };
        let ptrs = &mut f.0[at].1;
        if ptrs.len() < KEEP {
            ptrs.push(p);
            true
        } else {
            false
        }
    });
    if kept != Ok(true) {
        // SAFETY: allocated with this layout, and no longer in use.
        unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
    }
}

/// Room for one `F`, to write a future into (see [`reused!`]).
pub struct Slot<F> {
    ptr: NonNull<F>,
}

impl<F: Future> Slot<F> {
    #[inline(always)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Slot<F> {
        let layout = Layout::new::<F>();
        let ptr = if layout.size() == 0 {
            NonNull::dangling()
        } else {
            take(layout).cast()
        };
        Slot { ptr }
    }

    /// The future, written into the slot; it stays there until it is dropped.
    #[inline(always)]
    pub fn write(self, fut: F) -> Reused<F> {
        let ptr = self.ptr;
        std::mem::forget(self);
        // SAFETY: `ptr` is valid for a write of `F`, and uninitialised.
        unsafe { ptr.as_ptr().write(fut) };
        Reused { ptr }
    }
}

impl<F> Drop for Slot<F> {
    fn drop(&mut self) {
        // Never written (the future's expression panicked): the memory goes back unused.
        let layout = Layout::new::<F>();
        if layout.size() != 0 {
            give(self.ptr.cast(), layout);
        }
    }
}

/// A future in a reused box: `Box::pin`, without the allocator on each request.
pub struct Reused<F> {
    ptr: NonNull<F>,
}

// SAFETY: `Reused` owns its `F` as a `Box` would; the memory it gives back is plain memory,
// valid on any thread.
unsafe impl<F: Send> Send for Reused<F> {}
// SAFETY: as above; `&Reused` gives no access to `F`.
unsafe impl<F: Sync> Sync for Reused<F> {}

impl<F> Unpin for Reused<F> {}

impl<F: Future> Future for Reused<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future stays at `ptr` from its write to its drop: it is pinned.
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

impl<F> Drop for Reused<F> {
    fn drop(&mut self) {
        // SAFETY: written by `Slot::write`, dropped only here. The box is given back after
        // the drop, which may itself give back the boxes `F` holds.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        let layout = Layout::new::<F>();
        if layout.size() != 0 {
            give(self.ptr.cast(), layout);
        }
    }
}

/// `fut` in a reused box, written in place (a function taking it by value would build it on
/// the stack and copy it in).
macro_rules! reused {
    ($fut:expr) => {
        $crate::server::reuse::Slot::new().write($fut)
    };
}
pub(crate) use reused;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_box_given_back_is_handed_out_again_and_each_future_is_dropped_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let make = |d: Arc<AtomicUsize>| async move {
            let c = Counted(d);
            let big = [7u8; 1500];
            tokio::task::yield_now().await;
            drop(c);
            big[1499] as usize
        };
        let first = reused!(make(drops.clone()));
        let at = first.ptr.as_ptr() as usize;
        assert_eq!(first.await, 7);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        let second = reused!(make(drops.clone()));
        assert_eq!(second.ptr.as_ptr() as usize, at, "the box was reused");
        // Dropped before it finished: what it holds is dropped all the same.
        let mut second = second;
        assert!(futures_poll_once(&mut second).is_pending());
        drop(second);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        // Nested: a reused future that holds another.
        let outer = reused!(async {
            let inner = reused!(make(drops.clone()));
            inner.await + 1
        });
        assert_eq!(outer.await, 8);
        assert_eq!(drops.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn zero_sized_futures_take_no_memory() {
        assert_eq!(Layout::new::<std::future::Pending<()>>().size(), 0);
        let z = reused!(std::future::pending::<()>());
        assert_eq!(z.ptr, NonNull::dangling());
        drop(z);
    }

    fn futures_poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        Pin::new(f).poll(&mut cx)
    }
}
