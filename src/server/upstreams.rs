//! Upstream state that outlives a plan: the balancer's position in each group, keyed by the
//! group's name and peers, so that a reload with the same group keeps its rotation. Health
//! (`max_fails`/`fail_timeout`) and connection pools belong here too (issue 4 continues).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::plan::{Peer, Upstream};

#[derive(Default)]
pub struct Upstreams {
    groups: Mutex<HashMap<String, Rotation>>,
}

/// nginx's smooth weighted round-robin state.
#[derive(Default)]
struct Rotation {
    current: Vec<i64>,
}

impl Upstreams {
    /// The peers to try for one request, in order: the round-robin choice first, then the
    /// others (for `proxy_next_upstream`), backups last.
    pub fn order(&self, group: &Upstream) -> Vec<Peer> {
        let primary: Vec<&Peer> = group
            .servers
            .iter()
            .filter(|p| !p.backup && !p.down)
            .collect();
        let backup: Vec<&Peer> = group
            .servers
            .iter()
            .filter(|p| p.backup && !p.down)
            .collect();
        let mut out = Vec::new();
        if !primary.is_empty() {
            let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            let key = format!("{}#{}", group.name, group.servers.len());
            let rot = groups.entry(key).or_default();
            if rot.current.len() != primary.len() {
                rot.current = vec![0; primary.len()];
            }
            let total: i64 = primary.iter().map(|p| p.weight as i64).sum();
            let mut best = 0;
            for (i, p) in primary.iter().enumerate() {
                rot.current[i] += p.weight as i64;
                if rot.current[i] > rot.current[best] {
                    best = i;
                }
            }
            rot.current[best] -= total;
            out.push(primary[best].clone());
            for (i, p) in primary.iter().enumerate() {
                if i != best {
                    out.push((*p).clone());
                }
            }
        }
        out.extend(backup.into_iter().cloned());
        out
    }
}
