//! Idle upstream connections kept for reuse (`keepalive` in an `upstream` block). The pool lives
//! in [`super::Shared`], outside the plan: a reload keeps the connections of unchanged peers.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

/// An upstream connection, TCP or unix.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A connection with what its reuse is bounded by.
pub struct Conn {
    pub io: Box<dyn Stream>,
    /// Requests already sent over it (`keepalive_requests`).
    pub requests: u64,
    /// When it was opened (`keepalive_time`).
    pub opened: Instant,
    /// The wait for the upstream's answers (`proxy_read_timeout`).
    pub timer: super::deadline::Lazy,
    /// Its group and peer (as `$upstream_addr` writes it): where it goes back to when idle,
    /// copied once per connection, not at each return.
    pub group: String,
    pub peer: String,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Idle connections per upstream group, most recently used last.
#[derive(Default)]
pub struct Pool {
    groups: Mutex<crate::plan::LookupMap<String, VecDeque<Idle>>>,
}

impl Pool {
    /// An idle connection to `peer` of `group` that has been idle less than `timeout` at `now`.
    pub fn take(&self, group: &str, peer: &str, timeout: Duration, now: Instant) -> Option<Conn> {
        let mut groups = self.groups.lock().ok()?;
        let idle = groups.get_mut(group)?;
        // Kept in the order they went idle: the expired ones are at the front.
        while idle
            .front()
            .is_some_and(|i| now.saturating_duration_since(i.since) >= timeout)
        {
            idle.pop_front();
        }
        let at = idle.iter().rposition(|i| i.conn.peer == peer)?;
        idle.remove(at).map(|i| i.conn)
    }

    /// Keeps `conn` for reuse in its group, dropping the least recently used past `max` idle
    /// connections. `since`: when it went idle.
    pub fn put(&self, conn: Conn, max: usize, since: Instant) {
        let Ok(mut groups) = self.groups.lock() else {
            return;
        };
        // The group's name is copied only the first time it keeps a connection.
        if !groups.contains_key(conn.group.as_str()) {
            groups.insert(conn.group.clone(), Default::default());
        }
        let Some(idle) = groups.get_mut(conn.group.as_str()) else {
            return;
        };
        idle.push_back(Idle { conn, since });
        while idle.len() > max {
            idle.pop_front();
        }
    }

    /// How many idle connections `group` holds.
    #[cfg(test)]
    fn idle(&self, group: &str) -> usize {
        self.groups
            .lock()
            .map(|g| g.get(group).map_or(0, |v| v.len()))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(peer: &str) -> Conn {
        let (a, _b) = tokio::io::duplex(16);
        Conn {
            io: Box::new(a),
            requests: 1,
            opened: Instant::now(),
            timer: Default::default(),
            group: "app".to_string(),
            peer: peer.to_string(),
        }
    }

    #[test]
    fn keeps_at_most_max_and_by_peer() {
        let pool = Pool::default();
        for _ in 0..3 {
            pool.put(conn("a:1"), 2, Instant::now());
        }
        assert_eq!(pool.idle("app"), 2);
        assert!(
            pool.take("app", "b:1", Duration::from_secs(60), Instant::now())
                .is_none()
        );
        assert!(
            pool.take("app", "a:1", Duration::from_secs(60), Instant::now())
                .is_some()
        );
        assert_eq!(pool.idle("app"), 1);
        assert!(
            pool.take("app", "a:1", Duration::ZERO, Instant::now())
                .is_none()
        );
        assert_eq!(pool.idle("app"), 0);
    }
}
