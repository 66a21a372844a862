//! Upstream state that outlives a plan: the balancer's position in each group and each
//! server's recent failures, keyed by the group's name and the server's address, so that a
//! reload with the same group keeps its rotation and its view of which servers are down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::plan::{Peer, Upstream};

#[derive(Default)]
pub struct Upstreams {
    groups: Mutex<HashMap<String, Rotation>>,
    health: Mutex<HashMap<(String, String), Health>>,
}

/// nginx's smooth weighted round-robin state.
#[derive(Default)]
struct Rotation {
    current: HashMap<String, i64>,
}

/// Passive health: `max_fails` failures within `fail_timeout` take a server out for
/// `fail_timeout`.
#[derive(Default)]
struct Health {
    fails: u32,
    since: Option<Instant>,
}

impl Upstreams {
    fn available(&self, group: &str, p: &Peer) -> bool {
        if p.max_fails == 0 {
            return true;
        }
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match health.get(&(group.to_string(), p.addr.to_string())) {
            Some(h) if h.fails >= p.max_fails => h
                .since
                .is_some_and(|t| t.elapsed() >= Duration::from_secs(p.fail_timeout)),
            _ => true,
        }
    }

    /// Records the outcome of an attempt on `peer` of `group`.
    pub fn report(&self, group: &str, peer: &Peer, failed: bool) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let h = health
            .entry((group.to_string(), peer.addr.to_string()))
            .or_default();
        if failed {
            let window = Duration::from_secs(peer.fail_timeout);
            if h.since.is_none_or(|t| t.elapsed() >= window) {
                h.fails = 0;
            }
            h.fails += 1;
            h.since = Some(Instant::now());
        } else if h.fails < peer.max_fails || peer.max_fails == 0 {
            h.fails = 0;
            h.since = None;
        } else {
            // A server back after its time out: one success brings it back.
            h.fails = 0;
            h.since = None;
        }
    }

    /// The servers to try for one request, in order: the weighted round-robin choice first,
    /// then the other live ones (for `proxy_next_upstream`), backups last. Servers marked
    /// `down` or out after failures are left out.
    pub fn order(&self, group: &Upstream) -> Vec<Peer> {
        let live = |p: &&Peer| !p.down && self.available(&group.name, p);
        let primary: Vec<&Peer> = group
            .servers
            .iter()
            .filter(|p| !p.backup)
            .filter(live)
            .collect();
        let backup: Vec<&Peer> = group
            .servers
            .iter()
            .filter(|p| p.backup)
            .filter(live)
            .collect();
        let mut out = Vec::new();
        if !primary.is_empty() {
            let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            let rot = groups.entry(group.name.clone()).or_default();
            let total: i64 = primary.iter().map(|p| p.weight as i64).sum();
            let mut best: Option<(usize, i64)> = None;
            for (i, p) in primary.iter().enumerate() {
                let cw = rot.current.entry(p.addr.to_string()).or_insert(0);
                *cw += p.weight as i64;
                if best.is_none_or(|(_, b)| *cw > b) {
                    best = Some((i, *cw));
                }
            }
            let (b, _) = best.expect("primary is not empty");
            if let Some(cw) = rot.current.get_mut(&primary[b].addr.to_string()) {
                *cw -= total;
            }
            out.push(primary[b].clone());
            // nginx tries the others in its own rotation order; round-robin from the choice.
            for k in 1..primary.len() {
                out.push(primary[(b + k) % primary.len()].clone());
            }
        }
        out.extend(backup.into_iter().cloned());
        out
    }
}
