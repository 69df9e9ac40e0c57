//! `maglev`: Google's Maglev consistent hashing (Eisenbud et al., NSDI 2016) with Envoy's
//! weighting. A lookup table of [`TABLE_SIZE`] slots, each naming an endpoint; a request's
//! key hash picks slot `hash % TABLE_SIZE` — one array read, faster and flatter than a ring's
//! binary search.
//!
//! Each endpoint walks its own permutation of the slots, `(offset + j * skip) % M` with
//! offset and skip two hashes of its key; the endpoints take turns claiming their next free
//! slot until the table is full. Every skip in `1..M` generates all M slots only because M is
//! prime, hence 65,537 (Envoy's default and the paper's choice for small backends: about 100
//! slots per endpoint at several hundred endpoints keeps shares within about 1 %, and a table
//! is 256 KiB). Weights are Envoy's MaglevTable: an endpoint claims in a round only when its
//! running target reaches the heaviest endpoint's weight, so it fills slots in proportion to
//! its weight. Turns go in the order of the endpoints' keys, not of the list, so the table —
//! and every key's endpoint — depends only on the keys and weights. Adding or removing an
//! endpoint moves a little more than its own share of keys (some contested slots change
//! hands), as the paper measures.
//!
//! Fallback: when a slot's endpoint is not usable, the next slots in table order (wrapping)
//! are tried. The table interleaves endpoints, so the unusable one's keys spread over the
//! others and no other key moves.

use super::hash::hash_seeded;

/// The table's size: prime (every skip visits every slot), Envoy's default.
pub const TABLE_SIZE: usize = 65_537;

/// The seeds of an endpoint's offset and skip: two independent hashes of its key (Envoy uses
/// xxHash64 with seeds 0 and 1 likewise).
const OFFSET_SEED: u64 = 0;
const SKIP_SEED: u64 = 1;

/// A built table: slot -> index of the endpoint in the list it was built from. Immutable;
/// rebuilt when the endpoints change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    /// TABLE_SIZE slots, or none when there are no endpoints.
    table: Vec<u32>,
}

/// An endpoint's state while the table fills.
struct Builder {
    index: u32,
    weight: u64,
    /// The endpoint's next slot in its permutation.
    next: u64,
    skip: u64,
    /// Envoy's running target: claims when it reaches the heaviest weight.
    target: u64,
}

impl Maglev {
    /// `endpoints[i]` = (stable key of endpoint i, e.g. its "ip:port" address, weight >= 1).
    /// A weight of 0 counts as 1 (the config validator rejects 0; this keeps a slip from
    /// starving the build). With more endpoints than slots, some get none.
    ///
    /// offset = hash_seeded(key, A) % M, skip = hash_seeded(key, B) % (M-1) + 1;
    /// permutation(j) = (offset + j*skip) % M. Weighted fill as Envoy's MaglevTable: each round
    /// every endpoint adds its weight to a running target and claims its next free slot only
    /// when the target reaches the maximum weight (then subtracts it); until all M slots are
    /// filled.
    pub fn new(endpoints: &[(&str, u32)]) -> Maglev {
        const FREE: u32 = u32::MAX;
        if endpoints.is_empty() {
            return Maglev { table: Vec::new() };
        }
        let m = TABLE_SIZE as u64;
        let mut order: Vec<usize> = (0..endpoints.len()).collect();
        // Turns by key (then index, for a key listed twice): the list's order decides nothing.
        order.sort_by(|&a, &b| endpoints[a].0.cmp(endpoints[b].0).then(a.cmp(&b)));
        let mut builders: Vec<Builder> = order
            .into_iter()
            .map(|i| {
                let key = endpoints[i].0.as_bytes();
                Builder {
                    index: i as u32,
                    weight: u64::from(endpoints[i].1.max(1)),
                    next: hash_seeded(key, OFFSET_SEED) % m,
                    skip: hash_seeded(key, SKIP_SEED) % (m - 1) + 1,
                    target: 0,
                }
            })
            .collect();
        let max_weight = builders.iter().map(|b| b.weight).max().unwrap_or(1);

        let mut table = vec![FREE; TABLE_SIZE];
        let mut filled = 0;
        while filled < TABLE_SIZE {
            for builder in &mut builders {
                builder.target += builder.weight;
                if builder.target < max_weight {
                    continue;
                }
                builder.target -= max_weight;
                while table[builder.next as usize] != FREE {
                    builder.next = (builder.next + builder.skip) % m;
                }
                table[builder.next as usize] = builder.index;
                builder.next = (builder.next + builder.skip) % m;
                filled += 1;
                if filled == TABLE_SIZE {
                    break;
                }
            }
        }
        Maglev { table }
    }

    /// table[hash % M]; when not usable, the next slots (idx+1, idx+2, ... wrapping) until a
    /// usable endpoint; None if empty / none usable (walks M slots at most, asking `usable`
    /// once per run of one endpoint's slots). Allocates nothing.
    pub fn pick(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let start = (hash % TABLE_SIZE as u64) as usize;
        let (after, before) = (&self.table[start..], &self.table[..start]);
        let mut refused = None;
        for &endpoint in after.iter().chain(before) {
            if refused == Some(endpoint) {
                continue;
            }
            if usable(endpoint as usize) {
                return Some(endpoint as usize);
            }
            refused = Some(endpoint);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::hash::hash;
    use super::*;
    use std::fmt::Write as _;

    const KEYS: usize = 100_000;

    fn key_hashes() -> Vec<u64> {
        let mut s = String::new();
        (0..KEYS)
            .map(|i| {
                s.clear();
                let _ = write!(s, "key-{i}");
                hash(s.as_bytes())
            })
            .collect()
    }

    fn weighted(weights: &[u32]) -> Vec<(String, u32)> {
        (0..weights.len())
            .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
            .zip(weights.iter().copied())
            .collect()
    }

    fn maglev(endpoints: &[(String, u32)]) -> Maglev {
        let list: Vec<(&str, u32)> = endpoints.iter().map(|(k, w)| (k.as_str(), *w)).collect();
        Maglev::new(&list)
    }

    fn all(_: usize) -> bool {
        true
    }

    fn picks(table: &Maglev, keys: &[u64], usable: impl Fn(usize) -> bool + Copy) -> Vec<Option<usize>> {
        keys.iter().map(|&k| table.pick(k, usable)).collect()
    }

    fn slots(table: &Maglev, n: usize) -> Vec<usize> {
        let mut per = vec![0; n];
        for &e in &table.table {
            per[e as usize] += 1;
        }
        per
    }

    /// Each endpoint's share of the keys is within 5 % (relative) of its weight's share.
    fn assert_shares(weights: &[u32]) {
        let table = maglev(&weighted(weights));
        let mut counts = vec![0usize; weights.len()];
        for k in key_hashes() {
            counts[table.pick(k, all).unwrap()] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, (&count, &w)) in counts.iter().zip(weights).enumerate() {
            let share = count as f64 / KEYS as f64;
            let want = f64::from(w) / f64::from(total);
            assert!((share / want - 1.0).abs() <= 0.05, "endpoint {i} (weight {w}): {share:.4}, want {want:.4}");
        }
    }

    #[test]
    fn weighted_shares_hold() {
        assert_shares(&[1, 1, 1, 2]);
        // The slots themselves are within one round of exact: 65,537 / 5 = 13,107.4.
        let per = slots(&maglev(&weighted(&[1, 1, 1, 2])), 4);
        assert_eq!(per.iter().sum::<usize>(), TABLE_SIZE);
        for (count, want) in per.iter().zip([13_107.4, 13_107.4, 13_107.4, 26_214.8]) {
            assert!((*count as f64 - want).abs() <= 2.0, "{per:?}");
        }
    }

    #[test]
    fn equal_shares_hold() {
        assert_shares(&[1, 1, 1, 1, 1]);
    }

    #[test]
    fn table_is_full_and_names_only_listed_endpoints() {
        let table = maglev(&weighted(&[3, 1, 7]));
        assert_eq!(table.table.len(), TABLE_SIZE);
        assert!(table.table.iter().all(|&e| e < 3));
        let per = slots(&table, 3);
        for (count, w) in per.iter().zip([3.0, 1.0, 7.0]) {
            let want = TABLE_SIZE as f64 * w / 11.0;
            assert!((*count as f64 - want).abs() <= 2.0, "{per:?}");
        }
    }

    fn moved(before: &[Option<usize>], after: &[Option<usize>]) -> f64 {
        before.iter().zip(after).filter(|(b, a)| b != a).count() as f64 / before.len() as f64
    }

    #[test]
    fn adding_and_removing_an_endpoint_moves_few_keys() {
        let n = 10.0;
        let keys = key_hashes();
        let ten = weighted(&[1; 10]);
        let before = picks(&maglev(&ten), &keys, all);

        let after = picks(&maglev(&weighted(&[1; 11])), &keys, all);
        let fraction = moved(&before, &after);
        println!("add: {fraction:.4} of keys moved (ideal {:.4})", 1.0 / (n + 1.0));
        assert!(fraction <= 1.5 / (n + 1.0), "adding one endpoint moved {fraction:.4} of keys");
        assert!(fraction >= 0.9 / (n + 1.0), "the new endpoint took only {fraction:.4} of keys");

        let mut nine = ten.clone();
        nine.remove(3);
        let after: Vec<Option<usize>> =
            picks(&maglev(&nine), &keys, all).into_iter().map(|p| p.map(|i| if i >= 3 { i + 1 } else { i })).collect();
        let fraction = moved(&before, &after);
        println!("remove: {fraction:.4} of keys moved (ideal {:.4})", 1.0 / n);
        assert!(fraction <= 1.5 / n, "removing one endpoint moved {fraction:.4} of keys");
        // Every key of the removed endpoint moved, of course.
        assert!(before.iter().zip(&after).all(|(b, a)| *b != Some(3) || a != b));
    }

    #[test]
    fn an_unusable_endpoints_keys_spread_over_the_others() {
        let keys = key_hashes();
        let table = maglev(&weighted(&[1; 10]));
        let before = picks(&table, &keys, all);
        let down = 4;
        let after = picks(&table, &keys, |i| i != down);
        let mut went_to = [0usize; 10];
        for (b, a) in before.iter().zip(&after) {
            if *b == Some(down) {
                let a = a.expect("a usable endpoint");
                assert_ne!(a, down);
                went_to[a] += 1;
            } else {
                assert_eq!(b, a, "a key of a usable endpoint moved");
            }
        }
        assert!(went_to.iter().sum::<usize>() > KEYS / 20, "endpoint {down} owned few keys: {went_to:?}");
        let receivers = went_to.iter().filter(|&&c| c > 0).count();
        assert!(receivers >= 5, "the unusable endpoint's keys went to only {receivers} endpoints: {went_to:?}");

        assert!(picks(&table, &keys[..1000], |i| i == 7).iter().all(|p| *p == Some(7)));
        assert!(picks(&table, &keys[..20], |_| false).iter().all(Option::is_none));
    }

    #[test]
    fn pick_reads_the_slot_then_the_next_ones_wrapping() {
        let table = maglev(&weighted(&[1; 3]));
        for slot in [0, 1, 500, TABLE_SIZE - 1] {
            assert_eq!(table.pick(slot as u64, all), Some(table.table[slot] as usize));
            assert_eq!(table.pick((slot + TABLE_SIZE) as u64, all), Some(table.table[slot] as usize));
            // The slot's endpoint down: the first later slot (wrapping) with another endpoint.
            let down = table.table[slot];
            let want = (1..TABLE_SIZE).map(|d| table.table[(slot + d) % TABLE_SIZE]).find(|&e| e != down);
            assert_eq!(table.pick(slot as u64, |i| i != down as usize), want.map(|e| e as usize));
        }
        let asked = std::cell::Cell::new(0usize);
        let none = table.pick(9, |_| {
            asked.set(asked.get() + 1);
            false
        });
        assert_eq!(none, None);
        assert!(asked.get() >= 3 && asked.get() < TABLE_SIZE, "{} questions", asked.get());
    }

    #[test]
    fn deterministic_and_independent_of_list_order() {
        let keys = key_hashes();
        let endpoints = weighted(&[1, 2, 3, 1, 1, 5, 1]);
        assert_eq!(maglev(&endpoints), maglev(&endpoints));
        let before = picks(&maglev(&endpoints), &keys, all);

        let mut shuffled = endpoints.clone();
        shuffled.reverse();
        shuffled.swap(0, 3);
        let after = picks(&maglev(&shuffled), &keys, all);
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(endpoints[b.unwrap()].0, shuffled[a.unwrap()].0);
        }
        let down = &endpoints[5].0;
        let before = picks(&maglev(&endpoints), &keys, |i| endpoints[i].0 != *down);
        let after = picks(&maglev(&shuffled), &keys, |i| shuffled[i].0 != *down);
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(endpoints[b.unwrap()].0, shuffled[a.unwrap()].0);
        }
    }

    #[test]
    fn empty_and_single_endpoint() {
        let empty = Maglev::new(&[]);
        assert_eq!(empty.pick(42, all), None);
        let one = Maglev::new(&[("10.0.0.1:80", 3)]);
        assert!(one.table.iter().all(|&e| e == 0));
        assert_eq!(one.pick(u64::MAX, all), Some(0));
        assert_eq!(one.pick(7, |_| false), None);
    }

    #[test]
    fn weight_zero_counts_as_one() {
        assert_eq!(Maglev::new(&[("a:1", 0), ("b:1", 1)]), Maglev::new(&[("a:1", 1), ("b:1", 1)]));
        // A skewed list still fills (the light endpoint claims rarely, the heavy one always).
        let skewed = Maglev::new(&[("a:1", 1), ("b:1", u32::MAX)]);
        assert_eq!(skewed.table.len(), TABLE_SIZE);
    }

    #[test]
    fn builds_a_thousand_endpoints() {
        let endpoints = weighted(&[1; 1000]);
        let started = tokio::time::Instant::now();
        let table = maglev(&endpoints);
        println!("maglev of 1,000 endpoints built in {:?}", started.elapsed());
        let per = slots(&table, 1000);
        // 65.5 slots each: within one round.
        assert!(per.iter().all(|&c| c == 65 || c == 66), "{:?}", (per.iter().min(), per.iter().max()));
        let skewed: Vec<(String, u32)> = weighted(&(0..1000).map(|i| i % 10 + 1).collect::<Vec<_>>());
        let started = tokio::time::Instant::now();
        let _ = maglev(&skewed);
        println!("maglev of 1,000 endpoints, weights 1..10, built in {:?}", started.elapsed());
    }
}
