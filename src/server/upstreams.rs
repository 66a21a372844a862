//! Upstream state that outlives a plan: each group's balancer state (smooth weighted
//! round-robin weights, active connections, passive health), keyed by the group's name, so a
//! reload that keeps a group keeps its rotation, its connection counts and its view of which
//! servers are down.
//!
//! The selection follows nginx's peer modules step by step (`ngx_http_upstream_round_robin.c`
//! and the `least_conn`, `ip_hash`, `hash`, `random` modules): a [`Selection`] is one request's
//! walk through the group, a [`Lease`] one attempt on one server. A server is skipped when it
//! is `down`, out after `max_fails` failures within `fail_timeout`, at its `max_conns`, or
//! already tried by this request; backups are tried when no primary server can be.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::plan::{Balance, Peer, PeerAddr, Upstream};

#[derive(Default)]
pub struct Upstreams {
    groups: Mutex<crate::plan::LookupMap<String, Arc<Mutex<Group>>>>,
}

/// One group's state. Rebuilt when the plan's group changes, carrying each server's health
/// and connection count over by address.
struct Group {
    /// The plan's group this state was made for: while it is the one asked for, its
    /// servers need no comparing (a reload makes a new one).
    from: std::sync::Weak<Upstream>,
    servers: Vec<Peer>,
    tiers: [Tier; 2],
    /// `hash ... consistent`: the ring of (point, primary index), sorted, points unique.
    ring: Vec<(u32, usize)>,
}

#[derive(Default)]
struct Tier {
    peers: Vec<Slot>,
    total_weight: u64,
}

/// nginx's `ngx_http_upstream_rr_peer_t`, less the address.
struct Slot {
    /// Shared with each lease of it: a lease costs a count, not a copy of the address.
    peer: Arc<Peer>,
    current_weight: i64,
    effective_weight: i64,
    conns: u32,
    fails: u32,
    /// When the last failure happened.
    accessed: Option<Instant>,
    /// When the server was last failed or given a new chance.
    checked: Option<Instant>,
}

impl Slot {
    fn new(peer: &Peer) -> Slot {
        Slot {
            peer: Arc::new(peer.clone()),
            current_weight: 0,
            effective_weight: peer.weight as i64,
            conns: 0,
            fails: 0,
            accessed: None,
            checked: None,
        }
    }

    /// Out after failures: `max_fails` reached and `fail_timeout` not yet over.
    fn failed(&self, now: Instant) -> bool {
        self.peer.max_fails != 0
            && self.fails >= self.peer.max_fails
            && self
                .checked
                .is_some_and(|t| now.duration_since(t) <= secs(self.peer.fail_timeout))
    }

    fn full(&self) -> bool {
        self.peer.max_conns != 0 && self.conns >= self.peer.max_conns
    }

    /// Can be given this request (ignoring whether it was tried).
    fn usable(&self, now: Instant) -> bool {
        !self.peer.down && !self.failed(now) && !self.full()
    }

    /// Chosen: a server whose time out is over gets its new chance now.
    fn chosen(&mut self, now: Instant) {
        if self
            .checked
            .is_none_or(|t| now.duration_since(t) > secs(self.peer.fail_timeout))
        {
            self.checked = Some(now);
        }
        self.conns += 1;
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl Group {
    fn new(up: &Upstream, old: Option<&Group>) -> Group {
        let mut tiers = [Tier::default(), Tier::default()];
        for peer in &up.servers {
            let tier = &mut tiers[peer.backup as usize];
            let mut slot = Slot::new(peer);
            // The same server in the old group keeps its health and its connection count.
            if let Some(o) = old.and_then(|g| g.find(&peer.addr, peer.backup)) {
                slot.conns = o.conns;
                slot.fails = o.fails;
                slot.accessed = o.accessed;
                slot.checked = o.checked;
            }
            tier.total_weight += peer.weight as u64;
            tier.peers.push(slot);
        }
        let ring = match up.balance {
            Balance::Hash {
                consistent: true, ..
            } => ring(&tiers[0]),
            _ => Vec::new(),
        };
        Group {
            from: std::sync::Weak::new(),
            servers: up.servers.clone(),
            tiers,
            ring,
        }
    }

    fn find(&self, addr: &PeerAddr, backup: bool) -> Option<&Slot> {
        self.tiers[backup as usize]
            .peers
            .iter()
            .find(|s| s.peer.addr == *addr)
    }

    /// One primary server and no backup: nginx's `single`, tried whatever its health.
    fn single(&self) -> bool {
        self.tiers[0].peers.len() == 1 && self.tiers[1].peers.is_empty()
    }
}

/// The consistent-hash ring, as nginx builds it (compatible with Cache::Memcached::Fast):
/// 160 points per unit of weight, each the CRC32 of `HOST \0 PORT` and the previous point.
fn ring(tier: &Tier) -> Vec<(u32, usize)> {
    let mut points = Vec::new();
    for (i, slot) in tier.peers.iter().enumerate() {
        let (host, port) = match &slot.peer.addr {
            PeerAddr::Unix { path } => (path.clone(), String::new()),
            PeerAddr::Tcp { host, port } if host.contains(':') => {
                (format!("[{host}]"), port.to_string())
            }
            PeerAddr::Tcp { host, port } => (host.clone(), port.to_string()),
        };
        let mut base = crc32fast::Hasher::new();
        base.update(host.as_bytes());
        base.update(b"\0");
        base.update(port.as_bytes());
        let mut prev: u32 = 0;
        for _ in 0..slot.peer.weight as usize * 160 {
            let mut h = base.clone();
            h.update(&prev.to_le_bytes());
            prev = h.finalize();
            points.push((prev, i));
        }
    }
    points.sort_by_key(|&(h, _)| h);
    points.dedup_by_key(|&mut (h, _)| h);
    points
}

/// The balancing method with what this request brings to it.
enum Method {
    RoundRobin,
    LeastConn,
    /// The client address bytes nginx hashes (three octets of IPv4, all of IPv6), and the
    /// running hash.
    IpHash {
        addr: Vec<u8>,
        hash: u64,
    },
    Hash {
        key: String,
        hash: u64,
        rehash: u64,
    },
    /// The point on the ring to start from.
    Consistent {
        point: usize,
    },
    Random {
        two: bool,
    },
}

/// One request's walk through a group.
pub struct Selection {
    group: Arc<Mutex<Group>>,
    method: Method,
    /// Which tier is being tried (0 primary, 1 backup), and which of its servers were.
    tier: usize,
    /// In place up to 16 servers: no allocation per request.
    tried: smallvec::SmallVec<[bool; 16]>,
    /// Attempts a hash method made before falling back to round-robin (nginx allows 20).
    hash_tries: u32,
    /// Attempts left: the number of servers, capped by `proxy_next_upstream_tries`.
    tries: usize,
}

/// One attempt on one server: counts as a connection to it until dropped.
pub struct Lease {
    group: Arc<Mutex<Group>>,
    tier: usize,
    index: usize,
    pub peer: Arc<Peer>,
    reported: bool,
}

impl Upstreams {
    /// The state of `up`'s group, and what `look` reads of it under the same lock (one lock
    /// a request: five were a tenth of a proxied request's atomic operations).
    fn group_with<R>(
        &self,
        up: &Arc<Upstream>,
        look: impl FnOnce(&Group) -> R,
    ) -> (Arc<Mutex<Group>>, R) {
        let mut groups = lock(&self.groups);
        if let Some(g) = groups.get(&up.name) {
            let mut state = lock(g);
            if !std::ptr::eq(state.from.as_ptr(), Arc::as_ptr(up)) {
                if state.servers != up.servers {
                    // The group changed under the same name (a reload): carry what can be
                    // carried.
                    *state = Group::new(up, Some(&state));
                }
                state.from = Arc::downgrade(up);
            }
            let seen = look(&state);
            drop(state);
            return (g.clone(), seen);
        }
        let mut group = Group::new(up, None);
        group.from = Arc::downgrade(up);
        let seen = look(&group);
        let g = Arc::new(Mutex::new(group));
        groups.insert(up.name.clone(), g.clone());
        (g, seen)
    }

    /// Starts one request's selection in `up`. `client` feeds `ip_hash`; `key` is the
    /// evaluated `hash` key. `cap` is `proxy_next_upstream_tries` (0: no cap).
    pub fn select(
        &self,
        up: &Arc<Upstream>,
        client: Option<IpAddr>,
        key: Option<&str>,
        cap: usize,
    ) -> Selection {
        let key = key.unwrap_or_default();
        let consistent = matches!(
            up.balance,
            Balance::Hash {
                consistent: true,
                ..
            }
        );
        let (group, (primary, tries, point)) = self.group_with(up, |g| {
            // nginx counts the servers not marked `down`.
            let tries = g
                .tiers
                .iter()
                .flat_map(|t| &t.peers)
                .filter(|s| !s.peer.down)
                .count();
            // The first point at or after the key's hash (may be one past the end).
            let point = consistent.then(|| {
                let h = crc32fast::hash(key.as_bytes());
                g.ring.partition_point(|&(p, _)| p < h)
            });
            (g.tiers[0].peers.len(), tries, point)
        });
        let method = match &up.balance {
            Balance::RoundRobin => Method::RoundRobin,
            Balance::LeastConn => Method::LeastConn,
            Balance::IpHash => Method::IpHash {
                addr: match client {
                    Some(IpAddr::V4(a)) => a.octets()[..3].to_vec(),
                    Some(IpAddr::V6(a)) => a.octets().to_vec(),
                    None => vec![0; 3],
                },
                hash: 89,
            },
            Balance::Hash {
                consistent: false, ..
            } => Method::Hash {
                key: key.to_string(),
                hash: 0,
                rehash: 0,
            },
            Balance::Hash {
                consistent: true, ..
            } => match point {
                Some(point) if !key.is_empty() => Method::Consistent { point },
                _ => Method::RoundRobin,
            },
            Balance::Random { two } => Method::Random { two: *two },
        };
        let method = match method {
            Method::Hash { ref key, .. } if key.is_empty() => Method::RoundRobin,
            m => m,
        };
        let mut tries = tries;
        if cap != 0 {
            tries = tries.min(cap);
        }
        Selection {
            group,
            method,
            tier: 0,
            tried: smallvec::smallvec![false; primary],
            hash_tries: 0,
            tries,
        }
    }
}

impl Selection {
    /// Whether another attempt may follow the current one.
    pub fn tries_left(&self) -> bool {
        self.tries > 0
    }

    /// The next server to try at `now`, or `None` when none can be (nginx's "no live
    /// upstreams").
    pub fn next(&mut self, now: Instant) -> Option<Lease> {
        if self.tries == 0 {
            return None;
        }
        let group = self.group.clone();
        let mut g = lock(&group);
        loop {
            let found = if g.single() {
                let s = &g.tiers[0].peers[0];
                (!s.peer.down && !s.full()).then_some(0)
            } else if self.tier == 0 {
                self.pick(&mut g, now)
            } else {
                // Backups: nginx's round-robin (least_conn's own when that is the method).
                match self.method {
                    Method::LeastConn => least_conn(&mut g.tiers[1], &self.tried, now),
                    _ => round_robin(&mut g.tiers[1], &self.tried, now),
                }
            };
            if let Some(index) = found {
                let slot = &mut g.tiers[self.tier].peers[index];
                slot.chosen(now);
                if let Some(t) = self.tried.get_mut(index) {
                    *t = true;
                }
                return Some(Lease {
                    group: self.group.clone(),
                    tier: self.tier,
                    index,
                    peer: slot.peer.clone(),
                    reported: false,
                });
            }
            if self.tier == 0 && !g.tiers[1].peers.is_empty() {
                self.tier = 1;
                self.tried = smallvec::smallvec![false; g.tiers[1].peers.len()];
                continue;
            }
            return None;
        }
    }

    /// A primary server by the group's method; after 20 misses the hash methods fall back
    /// to round-robin, as nginx's do.
    fn pick(&mut self, g: &mut Group, now: Instant) -> Option<usize> {
        loop {
            if self.hash_tries > 20 {
                return round_robin(&mut g.tiers[0], &self.tried, now);
            }
            let tier = &mut g.tiers[0];
            let total = tier.total_weight.max(1);
            let candidate = match &mut self.method {
                Method::RoundRobin => return round_robin(tier, &self.tried, now),
                Method::LeastConn => return least_conn(tier, &self.tried, now),
                Method::IpHash { addr, hash } => {
                    for b in addr.iter() {
                        *hash = (*hash * 113 + *b as u64) % 6271;
                    }
                    by_weight(tier, *hash % total)
                }
                Method::Hash { key, hash, rehash } => {
                    // Compatible with Cache::Memcached: ((crc32([REHASH] KEY) >> 16) & 0x7fff)
                    // added to the previous hash, REHASH left out the first time.
                    let mut h = crc32fast::Hasher::new();
                    if *rehash > 0 {
                        h.update(rehash.to_string().as_bytes());
                    }
                    h.update(key.as_bytes());
                    *hash += ((h.finalize() >> 16) & 0x7fff) as u64;
                    *rehash += 1;
                    by_weight(tier, *hash % total)
                }
                Method::Consistent { point } => {
                    if g.ring.is_empty() {
                        self.hash_tries = 21;
                        continue;
                    }
                    let server = g.ring[*point % g.ring.len()].1;
                    let addr = g.tiers[0].peers[server].peer.addr.clone();
                    // Every usable server of that name (nginx has one per address), by
                    // round-robin among them.
                    let best = weighted(&mut g.tiers[0], &self.tried, now, |s| s.peer.addr == addr);
                    if best.is_some() {
                        return best;
                    }
                    *point += 1;
                    self.hash_tries += 1;
                    continue;
                }
                Method::Random { two } => {
                    let two = *two;
                    let mut prev: Option<usize> = None;
                    loop {
                        let p = by_weight(tier, fastrand::u64(0..total));
                        if Some(p) != prev && !self.tried[p] && tier.peers[p].usable(now) {
                            if !two {
                                return Some(p);
                            }
                            if let Some(q) = prev {
                                // Fewer connections for the weight wins; the second on a tie.
                                let (a, b) = (&tier.peers[p], &tier.peers[q]);
                                let first_better = a.conns as u64 * b.peer.weight as u64
                                    > b.conns as u64 * a.peer.weight as u64;
                                return Some(if first_better { q } else { p });
                            }
                            prev = Some(p);
                        }
                        self.hash_tries += 1;
                        if self.hash_tries > 20 {
                            break;
                        }
                    }
                    continue;
                }
            };
            if !self.tried[candidate] && tier.peers[candidate].usable(now) {
                return Some(candidate);
            }
            self.hash_tries += 1;
        }
    }
}

/// The server that `w` (below the total weight) falls on, walking the weights in order.
fn by_weight(tier: &Tier, mut w: u64) -> usize {
    for (i, s) in tier.peers.iter().enumerate() {
        if w < s.peer.weight as u64 {
            return i;
        }
        w -= s.peer.weight as u64;
    }
    tier.peers.len() - 1
}

/// nginx's smooth weighted round-robin over the usable, untried servers that `among` admits.
fn weighted(
    tier: &mut Tier,
    tried: &[bool],
    now: Instant,
    among: impl Fn(&Slot) -> bool,
) -> Option<usize> {
    let mut best: Option<(usize, i64)> = None;
    let mut total = 0;
    for (i, s) in tier.peers.iter_mut().enumerate() {
        if tried[i] || !s.usable(now) || !among(s) {
            continue;
        }
        s.current_weight += s.effective_weight;
        total += s.effective_weight;
        if s.effective_weight < s.peer.weight as i64 {
            s.effective_weight += 1;
        }
        if best.is_none_or(|(_, w)| s.current_weight > w) {
            best = Some((i, s.current_weight));
        }
    }
    let (b, _) = best?;
    tier.peers[b].current_weight -= total;
    Some(b)
}

fn round_robin(tier: &mut Tier, tried: &[bool], now: Instant) -> Option<usize> {
    weighted(tier, tried, now, |_| true)
}

/// nginx's least_conn: the fewest connections for the weight; ties by round-robin among the
/// tied servers from the first of them on.
fn least_conn(tier: &mut Tier, tried: &[bool], now: Instant) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut many = false;
    for (i, s) in tier.peers.iter().enumerate() {
        if tried[i] || !s.usable(now) {
            continue;
        }
        match best {
            None => best = Some(i),
            Some(b) => {
                let bs = &tier.peers[b];
                let (l, r) = (
                    s.conns as u64 * bs.peer.weight as u64,
                    bs.conns as u64 * s.peer.weight as u64,
                );
                if l < r {
                    best = Some(i);
                    many = false;
                } else if l == r {
                    many = true;
                }
            }
        }
    }
    let first = best?;
    if !many {
        return Some(first);
    }
    let (fc, fw) = (
        tier.peers[first].conns as u64,
        tier.peers[first].peer.weight as u64,
    );
    // The tied servers all come at or after `first`: an earlier one would have been best.
    weighted(tier, tried, now, |s| {
        s.conns as u64 * fw == fc * s.peer.weight as u64
    })
    .or(Some(first))
}

impl Lease {
    /// Records the outcome of this attempt: a failure counts towards `max_fails` and lowers
    /// the server's effective weight; a success after a new chance clears its failures.
    /// Returns whether the request may try another server after this one.
    pub fn report(&mut self, failed: bool, selection: &mut Selection) {
        self.reported = true;
        let mut g = lock(&self.group);
        if g.single() {
            selection.tries = 0;
            return;
        }
        let s = &mut g.tiers[self.tier].peers[self.index];
        if failed {
            let now = Instant::now();
            s.fails += 1;
            s.accessed = Some(now);
            s.checked = Some(now);
            if s.peer.max_fails != 0 {
                s.effective_weight -= (s.peer.weight / s.peer.max_fails) as i64;
                if s.fails >= s.peer.max_fails {
                    tracing::warn!(upstream = %s.peer.addr, "upstream server temporarily disabled");
                }
            }
            s.effective_weight = s.effective_weight.max(0);
        } else if s.accessed < s.checked {
            // Chosen again after its time out (or never failed): the server is live.
            s.fails = 0;
        }
        selection.tries = selection.tries.saturating_sub(1);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut g = lock(&self.group);
        if let Some(s) = g.tiers[self.tier].peers.get_mut(self.index) {
            s.conns = s.conns.saturating_sub(1);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
