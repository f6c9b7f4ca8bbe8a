//! Load balancing over weighted backends: which backend the next connection goes to.
//!
//! [`Balancer`] is the algorithm alone (no sockets, no clock, no lock): it knows the
//! backends' names and weights and keeps what its strategy needs between picks. The caller
//! says which backends may be picked now (healthy, breaker not open, not drained) and how
//! many connections each has; [`Backends`](crate::Backends) does that for the pool.
//!
//! | [`Strategy`] | picks | weights |
//! | --- | --- | --- |
//! | [`RoundRobin`](Strategy::RoundRobin) | each eligible backend in turn, in order | ignored (0 drains) |
//! | [`LeastConnections`](Strategy::LeastConnections) | the less loaded of two random eligible backends (power of two choices) | load is divided by weight |
//! | [`WeightedRoundRobin`](Strategy::WeightedRoundRobin) | smooth weighted round-robin (the nginx algorithm): weight `w` out of `W` gets `w` of every `W` picks, spread out | yes |
//! | [`IpHash`](Strategy::IpHash) | the backend with the highest rendezvous score for the key (a client address) | yes |
//!
//! ## The hash
//!
//! IP-hash must send a key to the same backend in every process and every release, so it
//! does not use std's `DefaultHasher` (whose algorithm may change) or a randomly keyed
//! hasher. The crate's own, fixed function is [`hash64`]: 64-bit FNV-1a (offset basis
//! `0xcbf29ce484222325`, prime `0x100000001b3`) followed by the MurmurHash3 64-bit finalizer
//! [`mix64`] for avalanche. The score of key `k` on backend `b` is
//! `mix64(hash64(k) ^ hash64(name(b)))`.
//!
//! Rendezvous (highest random weight) hashing gives each key its own ranking of backends
//! and takes the top eligible one, so removing (or excluding) a backend moves only the keys
//! that were on it, each to its second choice; no other key moves. With unequal weights the
//! score is `weight / -ln(u)`, `u` the score mapped into (0, 1) (weighted rendezvous): share
//! in proportion to weight, with the same minimal movement. With equal weights the integer
//! scores are compared directly, so the choice involves no floating point at all.

/// How a [`Balancer`] picks a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Strategy {
    /// Each eligible backend in turn.
    #[default]
    RoundRobin,
    /// Power of two choices: of two distinct eligible backends drawn at random, the one
    /// with fewer connections per unit of weight (ties: the first drawn).
    LeastConnections,
    /// Smooth weighted round-robin (nginx): every pick adds each eligible backend's weight
    /// to its running score and takes the highest, which then gives back the total.
    WeightedRoundRobin,
    /// Rendezvous hashing of the key (a client's IP address): the same key goes to the same
    /// backend while it is eligible. Without a key, round-robin.
    IpHash,
}

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a of `data` (no finalizer): part of the fixed, documented hash that IP-hash
/// relies on.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The MurmurHash3 64-bit finalizer (`fmix64`): a bijection with full avalanche.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// The crate's fixed hash: `mix64(fnv1a64(data))`. Stable across processes, platforms and
/// releases (changing it would be a breaking change).
pub fn hash64(data: &[u8]) -> u64 {
    mix64(fnv1a64(data))
}

/// The rendezvous score of a key (already hashed with [`hash64`]) on a backend whose name
/// hashed to `name_hash`.
pub fn rendezvous_score(key_hash: u64, name_hash: u64) -> u64 {
    mix64(key_hash ^ name_hash)
}

/// The bytes of an IP address as IP-hash keys it: 4 for IPv4, 16 for IPv6 (an IPv4-mapped
/// IPv6 address keys as its IPv4 address, so a dual-stack listener is consistent).
pub fn ip_key(ip: std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets().to_vec(),
        },
    }
}

/// SplitMix64: a small, seedable generator (for the random draws of least-connections).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix_splitmix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift (bias below 2^-32 for small `n`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

fn mix_splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Clone)]
struct Node {
    name: String,
    weight: u32,
    name_hash: u64,
    /// Smooth weighted round-robin's running score.
    current: i64,
}

/// The balancing algorithm over a list of named, weighted backends (see the
/// [module docs](self)). Backends are addressed by their index in the list.
#[derive(Debug, Clone)]
pub struct Balancer {
    strategy: Strategy,
    nodes: Vec<Node>,
    cursor: usize,
    rng: SplitMix64,
}

impl Balancer {
    /// A balancer over `backends` (name, weight). Names identify backends for IP-hash (use
    /// the URL, or any stable name); a weight of 0 is never picked. The random generator
    /// of least-connections is seeded from the operating system; see
    /// [`with_seed`](Self::with_seed).
    pub fn new<I, S>(strategy: Strategy, backends: I) -> Self
    where
        I: IntoIterator<Item = (S, u32)>,
        S: Into<String>,
    {
        let mut seed = [0u8; 8];
        // A failed generator only makes the draws predictable, which is harmless here.
        let _ = getrandom::fill(&mut seed);
        let mut b = Balancer {
            strategy,
            nodes: Vec::new(),
            cursor: 0,
            rng: SplitMix64::new(u64::from_le_bytes(seed)),
        };
        for (name, weight) in backends {
            b.push(name, weight);
        }
        b
    }

    /// Seeds the random draws (least-connections), for reproducible tests.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = SplitMix64::new(seed);
        self
    }

    /// Adds a backend; its index.
    pub fn push(&mut self, name: impl Into<String>, weight: u32) -> usize {
        let name = name.into();
        self.nodes.push(Node {
            name_hash: hash64(name.as_bytes()),
            name,
            weight,
            current: 0,
        });
        self.nodes.len() - 1
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// How many backends it knows.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether it knows none.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Backend `i`'s name.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Backend `i`'s weight.
    pub fn weight(&self, i: usize) -> u32 {
        self.nodes[i].weight
    }

    /// Picks a backend among those for which `eligible(i)` holds (and whose weight is not
    /// 0); `load(i)` is backend `i`'s connection count (least-connections), `key` the
    /// IP-hash key (see [`ip_key`]). `None` when no backend is eligible.
    pub fn pick(
        &mut self,
        key: Option<&[u8]>,
        eligible: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> usize,
    ) -> Option<usize> {
        let ok = |nodes: &[Node], i: usize| nodes[i].weight > 0 && eligible(i);
        match self.strategy {
            Strategy::RoundRobin => self.round_robin(ok),
            Strategy::IpHash => match key {
                Some(k) => self.rendezvous(k, ok),
                None => self.round_robin(ok),
            },
            Strategy::WeightedRoundRobin => self.smooth_weighted(ok),
            Strategy::LeastConnections => self.two_choices(ok, load),
        }
    }

    fn round_robin(&mut self, ok: impl Fn(&[Node], usize) -> bool) -> Option<usize> {
        let n = self.nodes.len();
        for step in 0..n {
            let i = (self.cursor + step) % n;
            if ok(&self.nodes, i) {
                self.cursor = (i + 1) % n;
                return Some(i);
            }
        }
        None
    }

    fn smooth_weighted(&mut self, ok: impl Fn(&[Node], usize) -> bool) -> Option<usize> {
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for i in 0..self.nodes.len() {
            if !ok(&self.nodes, i) {
                continue;
            }
            let node = &mut self.nodes[i];
            node.current += i64::from(node.weight);
            total += i64::from(node.weight);
            if best.is_none_or(|(_, c)| node.current > c) {
                best = Some((i, node.current));
            }
        }
        let (b, _) = best?;
        self.nodes[b].current -= total;
        Some(b)
    }

    fn two_choices(
        &mut self,
        ok: impl Fn(&[Node], usize) -> bool,
        load: impl Fn(usize) -> usize,
    ) -> Option<usize> {
        let nodes = &self.nodes;
        let count = (0..nodes.len()).filter(|&i| ok(nodes, i)).count();
        let nth = |n: usize| (0..nodes.len()).filter(|&i| ok(nodes, i)).nth(n);
        match count {
            0 => return None,
            1 => return nth(0),
            _ => {}
        }
        let a = self.rng.below(count);
        let mut b = self.rng.below(count - 1);
        if b >= a {
            b += 1;
        }
        let (a, b) = (nth(a)?, nth(b)?);
        // load(a)/w(a) <= load(b)/w(b), without division.
        let lhs = load(a) as u128 * u128::from(self.nodes[b].weight);
        let rhs = load(b) as u128 * u128::from(self.nodes[a].weight);
        Some(if lhs <= rhs { a } else { b })
    }

    fn rendezvous(&self, key: &[u8], ok: impl Fn(&[Node], usize) -> bool) -> Option<usize> {
        let kh = hash64(key);
        let nodes = &self.nodes;
        let uniform = {
            let mut eligible = (0..nodes.len()).filter(|&i| ok(nodes, i));
            let first = eligible.next().map(|i| self.nodes[i].weight);
            eligible.all(|i| Some(self.nodes[i].weight) == first)
        };
        let mut best: Option<(usize, u64, f64)> = None;
        for (i, node) in nodes.iter().enumerate() {
            if !ok(nodes, i) {
                continue;
            }
            let s = rendezvous_score(kh, node.name_hash);
            let w = if uniform {
                0.0
            } else {
                // u in (0, 1): the top 53 bits, offset by half a step.
                let u = ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                f64::from(node.weight) / -u.ln()
            };
            let better = match best {
                None => true,
                Some((_, bs, _)) if uniform => s > bs,
                Some((_, _, bw)) => w > bw,
            };
            if better {
                best = Some((i, s, w));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(n: usize, weight: u32) -> Vec<(String, u32)> {
        (0..n)
            .map(|i| (format!("ws://10.0.0.{i}:9001/"), weight))
            .collect()
    }

    #[test]
    fn the_hash_is_the_documented_one() {
        // FNV-1a 64 reference values.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
        // fmix64 of 0 is 0, and it is not the identity elsewhere.
        assert_eq!(mix64(0), 0);
        assert_ne!(mix64(1), 1);
        // Pinned: a change to the hash would move every IP-hash key.
        assert_eq!(hash64(b"a"), mix64(0xaf63_dc4c_8601_ec8c));
        assert_eq!(hash64(b"10.0.0.1"), hash64(b"10.0.0.1"));
    }

    #[test]
    fn round_robin_is_exact_and_skips_ineligible_backends() {
        let mut b = Balancer::new(Strategy::RoundRobin, named(3, 1));
        let picks: Vec<usize> = (0..9)
            .map(|_| b.pick(None, |_| true, |_| 0).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
        let picks: Vec<usize> = (0..6)
            .map(|_| b.pick(None, |i| i != 1, |_| 0).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 0, 2, 0, 2]);
        assert_eq!(b.pick(None, |_| false, |_| 0), None);
    }

    #[test]
    fn weight_zero_is_never_picked() {
        let mut b = Balancer::new(Strategy::WeightedRoundRobin, [("a", 0), ("b", 3)]);
        assert!((0..100).all(|_| b.pick(None, |_| true, |_| 0) == Some(1)));
        let mut b = Balancer::new(Strategy::RoundRobin, [("a", 0)]);
        assert_eq!(b.pick(None, |_| true, |_| 0), None);
    }

    #[test]
    fn smooth_weighted_round_robin_matches_nginx_and_weights_within_one_percent() {
        // nginx's example: weights 5, 1, 1 give a a b a c a a.
        let mut b = Balancer::new(Strategy::WeightedRoundRobin, [("a", 5), ("b", 1), ("c", 1)]);
        let seq: Vec<usize> = (0..7)
            .map(|_| b.pick(None, |_| true, |_| 0).unwrap())
            .collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);

        let weights = [1u32, 2, 3, 7, 13];
        let total: u32 = weights.iter().sum();
        let mut b = Balancer::new(
            Strategy::WeightedRoundRobin,
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| (format!("b{i}"), w)),
        );
        let picks = 100_003usize;
        let mut counts = [0usize; 5];
        for _ in 0..picks {
            counts[b.pick(None, |_| true, |_| 0).unwrap()] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            let want = picks as f64 * f64::from(w) / f64::from(total);
            let err = (counts[i] as f64 - want).abs() / want;
            assert!(
                err < 0.01,
                "backend {i}: {} picks, want {want:.0}",
                counts[i]
            );
        }
    }

    #[test]
    fn least_connections_prefers_the_less_loaded_and_is_reproducible() {
        let loads = [10usize, 0, 10, 10];
        let mut b = Balancer::new(Strategy::LeastConnections, named(4, 1)).with_seed(7);
        let mut counts = [0usize; 4];
        for _ in 0..3000 {
            counts[b.pick(None, |_| true, |i| loads[i]).unwrap()] += 1;
        }
        // Backend 1 wins every draw it is in: 1/2 of the draws of 2 out of 4.
        assert!(counts[1] > 1400 && counts[1] < 1600, "{counts:?}");
        // Same seed, same sequence.
        let run = |seed| {
            let mut b = Balancer::new(Strategy::LeastConnections, named(4, 1)).with_seed(seed);
            (0..50)
                .map(|_| b.pick(None, |_| true, |_| 0).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        // Weighted: 20 connections on weight 4 is less than 10 on weight 1.
        let mut b = Balancer::new(Strategy::LeastConnections, [("a", 4), ("b", 1)]).with_seed(1);
        let loads = [20usize, 10];
        assert!((0..20).all(|_| b.pick(None, |_| true, |i| loads[i]) == Some(0)));
        // One eligible: always it.
        assert!((0..20).all(|_| b.pick(None, |i| i == 1, |_| 0) == Some(1)));
    }

    fn assign(b: &mut Balancer, keys: &[Vec<u8>], eligible: impl Fn(usize) -> bool) -> Vec<usize> {
        keys.iter()
            .map(|k| b.pick(Some(k), &eligible, |_| 0).unwrap())
            .collect()
    }

    fn keys(n: u32) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| ip_key(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()))
            .collect()
    }

    #[test]
    fn ip_hash_is_stable_spread_and_moves_only_the_removed_backends_keys() {
        let keys = keys(20_000);
        let mut b = Balancer::new(Strategy::IpHash, named(5, 1));
        let before = assign(&mut b, &keys, |_| true);
        // Stable across calls and across balancer instances (no per-process state).
        assert_eq!(before, assign(&mut b, &keys, |_| true));
        let mut fresh = Balancer::new(Strategy::IpHash, named(5, 1));
        assert_eq!(before, assign(&mut fresh, &keys, |_| true));
        // Spread: each of 5 gets 20 % ± 2 %.
        for i in 0..5 {
            let n = before.iter().filter(|&&x| x == i).count();
            assert!((3600..4400).contains(&n), "backend {i} has {n} keys");
        }
        // Remove backend 2 by building the list without it (same names), and by excluding it.
        let mut without: Vec<(String, u32)> = named(5, 1);
        without.remove(2);
        let mut smaller = Balancer::new(Strategy::IpHash, without);
        let after_removed: Vec<usize> = assign(&mut smaller, &keys, |_| true)
            .into_iter()
            .map(|i| if i >= 2 { i + 1 } else { i })
            .collect();
        let after_excluded = assign(&mut b, &keys, |i| i != 2);
        assert_eq!(after_removed, after_excluded);
        let moved = before
            .iter()
            .zip(&after_excluded)
            .filter(|(a, b)| a != b)
            .count();
        let on_removed = before.iter().filter(|&&x| x == 2).count();
        assert_eq!(moved, on_removed, "only the removed backend's keys move");
        assert!(after_excluded.iter().all(|&x| x != 2));
        // And they come back when it returns.
        assert_eq!(before, assign(&mut b, &keys, |_| true));
    }

    #[test]
    fn weighted_ip_hash_shares_by_weight_and_moves_minimally() {
        let keys = keys(40_000);
        let weights = [1u32, 2, 5];
        let mut b = Balancer::new(
            Strategy::IpHash,
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| (format!("n{i}"), w)),
        );
        let before = assign(&mut b, &keys, |_| true);
        for (i, &w) in weights.iter().enumerate() {
            let want = keys.len() as f64 * f64::from(w) / 8.0;
            let n = before.iter().filter(|&&x| x == i).count() as f64;
            assert!(
                (n - want).abs() / want < 0.05,
                "backend {i}: {n} want {want}"
            );
        }
        let after = assign(&mut b, &keys, |i| i != 1);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(moved, before.iter().filter(|&&x| x == 1).count());
    }

    #[test]
    fn ip_hash_without_a_key_is_round_robin_and_mapped_ipv4_keys_as_ipv4() {
        let mut b = Balancer::new(Strategy::IpHash, named(2, 1));
        let seq: Vec<usize> = (0..4)
            .map(|_| b.pick(None, |_| true, |_| 0).unwrap())
            .collect();
        assert_eq!(seq, [0, 1, 0, 1]);
        let v4: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(v4), ip_key(mapped));
        assert_eq!(ip_key("2001:db8::1".parse().unwrap()).len(), 16);
    }
}
