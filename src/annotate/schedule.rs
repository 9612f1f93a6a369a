//! The blinded model schedule: which model serves each case, in which order, for one annotator.
//!
//! Two arms: 0 = EvoSAM (its experts routed by its matcher), 1 = the comparison. The page never learns the arm;
//! only the study's logs do.
//! - `split`: every case once; the arms are balanced over the cases (they differ by at most one), drawn from the
//!   study seed, and flipped for every second annotator (in the order annotators joined the study), so two
//!   annotators together cover every case under both arms.
//! - `crossover`: every case twice, first under one arm (balanced as in `split`), then, in a second block, under
//!   the other; both blocks in their own seeded order, so a case's two sessions are far apart.
//!
//! Case order is shuffled per annotator, seeded by the study seed and the annotator's name.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::util::derive_seed;

/// The study design (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Design {
    /// Every case once per annotator, arms balanced (complementary between consecutive annotators).
    Split,
    /// Every case twice per annotator, once under each arm, in two blocks.
    Crossover,
}

/// One entry of an annotator's schedule: a case (index into the study's case list) and the arm serving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Index into the study's case list.
    pub case: usize,
    /// 0 = EvoSAM, 1 = the comparison.
    pub arm: usize,
}

/// The balanced arm of each case for the study (before the per-annotator flip): a seeded permutation of
/// `[0, 1, 0, 1, ...]`.
fn base_arms(n_cases: usize, seed: u64) -> Vec<usize> {
    let mut arms: Vec<usize> = (0..n_cases).map(|i| i % 2).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&["annotate-arms", &seed.to_string()]));
    arms.shuffle(&mut rng);
    arms
}

/// The schedule of the annotator who joined the study `annotator_index`-th (0-based), named `annotator`.
pub fn schedule(
    n_cases: usize,
    seed: u64,
    design: Design,
    annotator: &str,
    annotator_index: usize,
) -> Vec<Slot> {
    let flip = annotator_index % 2;
    let arms: Vec<usize> = base_arms(n_cases, seed)
        .into_iter()
        .map(|a| a ^ flip)
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&[
        "annotate-order",
        &seed.to_string(),
        annotator,
    ]));
    let mut block = |second: bool| -> Vec<Slot> {
        let mut order: Vec<usize> = (0..n_cases).collect();
        order.shuffle(&mut rng);
        order
            .into_iter()
            .map(|case| Slot {
                case,
                arm: arms[case] ^ (second as usize),
            })
            .collect()
    };
    let mut slots = block(false);
    if design == Design::Crossover {
        slots.extend(block(true));
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_balanced_complete_and_seeded() {
        for n in [1usize, 2, 7, 10] {
            let s = schedule(n, 3, Design::Split, "ann", 0);
            let mut cases: Vec<usize> = s.iter().map(|x| x.case).collect();
            cases.sort();
            assert_eq!(cases, (0..n).collect::<Vec<_>>());
            let ones = s.iter().filter(|x| x.arm == 1).count();
            assert!(ones == n / 2, "n {n}: {ones} cases on arm 1");
            assert_eq!(s, schedule(n, 3, Design::Split, "ann", 0));
        }
        // another seed or annotator changes the order
        let a = schedule(20, 3, Design::Split, "ann", 0);
        assert_ne!(a, schedule(20, 4, Design::Split, "ann", 0));
        let b = schedule(20, 3, Design::Split, "bob", 0);
        assert_ne!(
            a.iter().map(|x| x.case).collect::<Vec<_>>(),
            b.iter().map(|x| x.case).collect::<Vec<_>>()
        );
        // the arm of a case depends on the seed and the annotator's index, not the name
        let arm_of = |s: &[Slot], c: usize| s.iter().find(|x| x.case == c).unwrap().arm;
        for c in 0..20 {
            assert_eq!(arm_of(&a, c), arm_of(&b, c));
        }
    }

    #[test]
    fn consecutive_annotators_cover_both_arms() {
        let a = schedule(9, 1, Design::Split, "a", 0);
        let b = schedule(9, 1, Design::Split, "b", 1);
        for c in 0..9 {
            let x = a.iter().find(|s| s.case == c).unwrap().arm;
            let y = b.iter().find(|s| s.case == c).unwrap().arm;
            assert_ne!(x, y, "case {c}");
        }
    }

    #[test]
    fn crossover_has_every_case_under_both_arms_in_two_blocks() {
        let n = 6;
        let s = schedule(n, 5, Design::Crossover, "a", 0);
        assert_eq!(s.len(), 2 * n);
        for c in 0..n {
            let first = s[..n].iter().find(|x| x.case == c).unwrap().arm;
            let second = s[n..].iter().find(|x| x.case == c).unwrap().arm;
            assert_ne!(first, second);
        }
        for blk in [&s[..n], &s[n..]] {
            assert_eq!(blk.iter().filter(|x| x.arm == 0).count(), n / 2);
        }
    }
}
