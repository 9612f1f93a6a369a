//! Reservoir sampling (Vitter's Algorithm R) for the experience-replay memory.
//!
//! After `n` items have been offered to a reservoir of capacity `m`, each of them is held with probability
//! `min(1, m / n)`, whatever the order of arrival. The memory stores item handles (e.g. task and case
//! indices), not images, and serialises with the cell's checkpoint.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A uniform sample of at most `capacity` of the items offered so far (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reservoir<T> {
    capacity: usize,
    seen: u64,
    items: Vec<T>,
}

impl<T> Reservoir<T> {
    /// An empty reservoir holding at most `capacity` items (0: it keeps nothing).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: 0,
            items: Vec::with_capacity(capacity),
        }
    }

    /// Offer one item. Returns true when it was stored.
    pub fn offer<R: Rng + ?Sized>(&mut self, item: T, rng: &mut R) -> bool {
        self.seen += 1;
        if self.capacity == 0 {
            return false;
        }
        if self.items.len() < self.capacity {
            self.items.push(item);
            return true;
        }
        // Keep the new item with probability capacity / seen, replacing a uniformly chosen slot.
        let j = rng.random_range(0..self.seen);
        if (j as usize) < self.capacity {
            self.items[j as usize] = item;
            true
        } else {
            false
        }
    }

    /// The items held, in slot order (not arrival order).
    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// Number of items held: `min(capacity, seen)`.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is held (nothing offered yet, or capacity 0).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The most items it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of items offered so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn each_item_kept_with_probability_m_over_n() {
        // N = 200 items, M = 20: each item must be kept with probability 0.1.
        let (n, m, trials) = (200usize, 20usize, 4000usize);
        let mut rng = ChaCha8Rng::seed_from_u64(12345);
        let mut counts = vec![0usize; n];
        for _ in 0..trials {
            let mut r = Reservoir::new(m);
            for i in 0..n {
                r.offer(i, &mut rng);
            }
            assert_eq!(r.len(), m);
            for &i in r.items() {
                counts[i] += 1;
            }
        }
        let p = m as f64 / n as f64;
        let expected = p * trials as f64;
        let sd = (trials as f64 * p * (1.0 - p)).sqrt();
        // Pearson chi-square over the N items (df = N - 1): mean 199, sd ~ 20; 4.5 sd margin.
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / (expected * (1.0 - p)))
            .sum();
        assert!(
            chi2 < (n - 1) as f64 + 4.5 * (2.0 * (n - 1) as f64).sqrt(),
            "chi2 {chi2}"
        );
        // Early and late items are equally likely (no bias toward the start or end of the stream).
        let first: usize = counts[..n / 2].iter().sum();
        let last: usize = counts[n / 2..].iter().sum();
        let half = expected * (n / 2) as f64;
        let half_sd = sd * ((n / 2) as f64).sqrt();
        assert!(
            (first as f64 - half).abs() < 5.0 * half_sd,
            "first half {first} vs {half}"
        );
        assert!(
            (last as f64 - half).abs() < 5.0 * half_sd,
            "last half {last} vs {half}"
        );
        for &c in &counts {
            assert!(
                (c as f64 - expected).abs() < 5.0 * sd,
                "count {c} vs expected {expected}"
            );
        }
    }

    #[test]
    fn keeps_everything_until_full_and_zero_capacity_keeps_nothing() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut r = Reservoir::new(5);
        for i in 0..5 {
            assert!(r.offer(i, &mut rng));
        }
        assert_eq!(r.items(), &[0, 1, 2, 3, 4]);
        let mut z = Reservoir::new(0);
        assert!(!z.offer(1, &mut rng));
        assert!(z.is_empty());
        assert_eq!(z.seen(), 1);
    }

    #[test]
    fn serde_roundtrip() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut r = Reservoir::new(3);
        for i in 0..10u32 {
            r.offer((0usize, i), &mut rng);
        }
        let s = serde_json::to_string(&r).unwrap();
        let back: Reservoir<(usize, u32)> = serde_json::from_str(&s).unwrap();
        assert_eq!(back, r);
    }
}
