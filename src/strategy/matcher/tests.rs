//! The matcher against a batch ridge fit on all features, and its running-sum bookkeeping.

use nalgebra::{DMatrix, DVector};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::*;

/// Solve the ridge problem directly on a full feature matrix (the reference the tests compare the running sums
/// with): rows of `h` are features (already mapped by `features`), `y` are task indices.
fn batch_ridge(
    h: &[Vec<f64>],
    y: &[usize],
    n_tasks: usize,
    lambda: f64,
    weights: &[f64],
) -> Vec<f64> {
    let d = h[0].len();
    let x = DMatrix::from_fn(h.len(), d, |i, j| h[i][j]);
    let sw = DVector::from_fn(h.len(), |i, _| weights[y[i]].sqrt());
    let xw = DMatrix::from_fn(h.len(), d, |i, j| x[(i, j)] * sw[i]);
    let yw = DMatrix::from_fn(h.len(), n_tasks, |i, k| if y[i] == k { sw[i] } else { 0.0 });
    let a = xw.transpose() * &xw + DMatrix::identity(d, d) * lambda;
    let b = xw.transpose() * yw;
    let w = a.lu().solve(&b).expect("solvable");
    let mut out = vec![0.0; d * n_tasks];
    for i in 0..d {
        for k in 0..n_tasks {
            out[i * n_tasks + k] = w[(i, k)];
        }
    }
    out
}

fn task_feats(seed: u64, n: usize, dim: usize, shift: f64) -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            (0..dim)
                .map(|j| {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    z + if j % 3 == (seed as usize % 3) {
                        shift
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect()
}

fn check_incremental_equals_batch(cfg: MatcherConfig) {
    let dim = 12;
    let tasks: Vec<Vec<Vec<f64>>> = vec![
        task_feats(1, 20, dim, 2.0),
        task_feats(2, 35, dim, -1.5),
        task_feats(3, 9, dim, 3.0),
    ];
    let mut m = RidgeMatcher::new(dim, cfg.clone()).unwrap();
    for (k, t) in tasks.iter().enumerate() {
        m.add_task(&format!("t{k}"), t).unwrap();
    }
    // Batch fit on all features at once.
    let mut h = Vec::new();
    let mut y = Vec::new();
    for (k, t) in tasks.iter().enumerate() {
        for p in t {
            h.push(m.features(p).unwrap());
            y.push(k);
        }
    }
    let sizes: Vec<f64> = tasks.iter().map(|t| t.len() as f64).collect();
    let mean = sizes.iter().sum::<f64>() / sizes.len() as f64;
    let weights: Vec<f64> = if cfg.class_balanced {
        sizes.iter().map(|n| mean / n).collect()
    } else {
        vec![1.0; 3]
    };
    let wb = batch_ridge(&h, &y, 3, m.lambda, &weights);
    let wi = m.weights();
    assert_eq!(wb.len(), wi.len());
    let max = wb
        .iter()
        .zip(wi)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(max < 1e-9, "incremental vs batch max diff {max}");
}

#[test]
fn incremental_fit_equals_batch_fit() {
    check_incremental_equals_batch(MatcherConfig {
        lambda: 0.5,
        ..Default::default()
    });
}

#[test]
fn incremental_fit_equals_batch_fit_projected_balanced() {
    check_incremental_equals_batch(MatcherConfig {
        lambda: 2.0,
        projection_dim: 40,
        class_balanced: true,
        seed: 7,
        ..Default::default()
    });
}

#[test]
fn routes_separable_tasks() {
    let dim = 8;
    let mut m = RidgeMatcher::new(
        dim,
        MatcherConfig {
            lambda: 0.1,
            ..Default::default()
        },
    )
    .unwrap();
    let a = task_feats(10, 30, dim, 4.0); // seed % 3 == 1
    let b = task_feats(11, 30, dim, 4.0); // seed % 3 == 2
    m.add_task("a", &a).unwrap();
    m.add_task("b", &b).unwrap();
    let test_a = task_feats(100 * 3 + 1, 20, dim, 4.0);
    let test_b = task_feats(100 * 3 + 2, 20, dim, 4.0);
    let ok_a = test_a
        .iter()
        .filter(|p| m.route(p).unwrap().expert == Some(0))
        .count();
    let ok_b = test_b
        .iter()
        .filter(|p| m.route(p).unwrap().expert == Some(1))
        .count();
    assert!(
        ok_a >= 19 && ok_b >= 19,
        "routing accuracy too low: {ok_a}/20, {ok_b}/20"
    );
}

#[test]
fn lambda_selection_picks_a_candidate_and_save_load_roundtrips() {
    let dim = 6;
    let cfg = MatcherConfig {
        lambda_candidates: vec![1e-3, 1e-1, 10.0, 1e4],
        seed: 3,
        ..Default::default()
    };
    let mut m = RidgeMatcher::new(dim, cfg).unwrap();
    m.add_task("a", &task_feats(1, 25, dim, 3.0)).unwrap();
    m.add_task("b", &task_feats(2, 25, dim, 3.0)).unwrap();
    assert!([1e-3, 1e-1, 10.0, 1e4].contains(&m.lambda));
    // An absurd penalty shrinks every score to ~0 and cannot route; it must not be chosen here.
    assert!(m.lambda < 1e4);
    let back = RidgeMatcher::from_json(&m.to_json().unwrap()).unwrap();
    let p = vec![0.3; dim];
    assert_eq!(back.scores(&p).unwrap(), m.scores(&p).unwrap());
    // every saved number parses back bit for bit (serde_json's `float_roundtrip`; without it a resumed run's
    // novelty threshold differed in the 11th digit): the re-saved text is the same
    assert_eq!(back.to_json().unwrap(), m.to_json().unwrap());
}

#[test]
fn open_set_threshold_routes_to_base() {
    let dim = 4;
    let cfg = MatcherConfig {
        lambda: 0.1,
        open_set_threshold: Some(0.75),
        ..Default::default()
    };
    let mut m = RidgeMatcher::new(dim, cfg).unwrap();
    // Task a is shifted along feature 1, task b along feature 2 (seed % 3).
    m.add_task("a", &task_feats(1, 40, dim, 5.0)).unwrap();
    m.add_task("b", &task_feats(2, 40, dim, 5.0)).unwrap();
    // A typical image of each task is routed to its expert with a confident score...
    assert_eq!(m.route(&[0.0, 5.0, 0.0, 0.0]).unwrap().expert, Some(0));
    assert_eq!(m.route(&[0.0, 0.0, 5.0, 0.0]).unwrap().expert, Some(1));
    // ...an image halfway between the two tasks scores about 0.5 for both and goes to the base model.
    let r = m.route(&[0.0, 2.5, 2.5, 0.0]).unwrap();
    assert_eq!(r.expert, None, "score {}", r.score);
    assert!(r.score > 0.2 && r.score < 0.75, "score {}", r.score);
}

#[test]
fn rejects_bad_input() {
    assert!(RidgeMatcher::new(0, MatcherConfig::default()).is_err());
    assert!(RidgeMatcher::new(
        3,
        MatcherConfig {
            lambda: -1.0,
            ..Default::default()
        }
    )
    .is_err());
    let mut m = RidgeMatcher::new(3, MatcherConfig::default()).unwrap();
    assert!(m.add_task("x", &[]).is_err());
    assert!(m.route(&[0.0; 3]).is_err());
    assert!(m.features(&[0.0; 2]).is_err());
}

#[test]
fn pooling_is_channel_mean() {
    let emb = [1.0f32, 3.0, 5.0, 7.0, 0.0, 2.0];
    assert_eq!(global_average_pool(&emb, 2).unwrap(), vec![3.0, 3.0]);
    assert!(global_average_pool(&emb, 4).is_err());
}
