use super::*;

fn grid(dims: &[usize], f: impl Fn(&[usize]) -> bool) -> Vec<bool> {
    let total: usize = dims.iter().product();
    let mut idx = vec![0; dims.len()];
    (0..total)
        .map(|i| {
            unravel(i, dims, &mut idx);
            f(&idx)
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn identical_and_empty_masks() {
    let dims = [6, 7];
    let m = grid(&dims, |i| (1..4).contains(&i[0]) && (2..6).contains(&i[1]));
    let s = case_scores(&m, &m, &dims, &[1.0, 1.0], 2.0);
    assert_eq!((s.dice, s.nsd, s.hd95), (1.0, 1.0, 0.0));
    let none = vec![false; 42];
    let s = case_scores(&none, &none, &dims, &[1.0, 1.0], 2.0);
    assert_eq!((s.dice, s.nsd, s.hd95), (1.0, 1.0, 0.0));
    // one empty: Dice 0, NSD 0, HD95 = the grid's diagonal in physical units
    let s = case_scores(&none, &m, &dims, &[2.0, 0.5], 2.0);
    assert_eq!((s.dice, s.nsd), (0.0, 0.0));
    assert!(close(s.hd95, (12.0f64 * 12.0 + 3.5 * 3.5).sqrt()));
}

#[test]
fn two_points_with_anisotropic_spacing() {
    let dims = [5, 6];
    let p = grid(&dims, |i| i == [0, 0]);
    let g = grid(&dims, |i| i == [3, 4]);
    let s = case_scores(&p, &g, &dims, &[1.0, 1.0], 5.0);
    assert_eq!((s.dice, s.nsd, s.hd95), (0.0, 1.0, 5.0));
    assert_eq!(case_scores(&p, &g, &dims, &[1.0, 1.0], 4.99).nsd, 0.0);
    // rows 2 mm apart, columns 0.5 mm: sqrt(6^2 + 2^2)
    let s = case_scores(&p, &g, &dims, &[2.0, 0.5], 1.0);
    assert!(close(s.hd95, 40f64.sqrt()), "{}", s.hd95);
}

#[test]
fn two_squares_by_hand() {
    // G: rows 0..4 x cols 0..4 (border: 12 pixels), P: rows 0..4 x cols 0..6 (border: 16 pixels) in 10 x 10.
    // d(P -> G): 10 zeros, 2 ones ((0,4), (3,4)), 4 twos ((0,5), (3,5), (1,5), (2,5));
    // d(G -> P): 10 zeros, 2 ones ((1,3) and (2,3) lie inside P, one pixel from its top/bottom rows).
    let dims = [10, 10];
    let g = grid(&dims, |i| i[0] < 4 && i[1] < 4);
    let p = grid(&dims, |i| i[0] < 4 && i[1] < 6);
    assert_eq!(border(&g, &dims).iter().filter(|&&b| b).count(), 12);
    let s = case_scores(&p, &g, &dims, &[1.0, 1.0], 1.0);
    assert!(close(s.dice, 32.0 / 40.0));
    assert!(close(s.nsd, 24.0 / 28.0), "{}", s.nsd);
    // p95 of d(P->G) over 16 values: position 14.25 between 2 and 2; of d(G->P) over 12: 10.45 between 1 and 1
    assert!(close(s.hd95, 2.0), "{}", s.hd95);
    assert!(close(
        case_scores(&p, &g, &dims, &[1.0, 1.0], 0.5).nsd,
        20.0 / 28.0
    ));
    // two parallel lines 3 apart: every border distance is 3
    let a = grid(&dims, |i| i[1] == 2);
    let b = grid(&dims, |i| i[1] == 5);
    let s = case_scores(&a, &b, &dims, &[1.0, 1.0], 2.0);
    assert_eq!((s.dice, s.nsd, s.hd95), (0.0, 0.0, 3.0));
    // columns 0.7 mm apart: 2.1 mm
    let s = case_scores(&a, &b, &dims, &[1.0, 0.7], 2.2);
    assert!(close(s.hd95, 2.1) && s.nsd == 1.0);
}

#[test]
fn cubes_and_spheres_in_3d() {
    // a cube shifted by one slice with 3 mm slices and 0.5 mm in plane: the z faces are 3 mm apart
    let dims = [8, 10, 10];
    let g = grid(&dims, |i| {
        (2..5).contains(&i[0]) && (2..8).contains(&i[1]) && (2..8).contains(&i[2])
    });
    let p = grid(&dims, |i| {
        (3..6).contains(&i[0]) && (2..8).contains(&i[1]) && (2..8).contains(&i[2])
    });
    let s = case_scores(&p, &g, &dims, &[3.0, 0.5, 0.5], 2.0);
    assert!(close(s.dice, 2.0 * 2.0 / 6.0));
    assert!(close(s.hd95, 3.0), "{}", s.hd95);
    // concentric balls of radius 8 and 5: every border distance is 3 up to the voxel discretisation (< 1)
    let dims = [21, 21, 21];
    let ball = |r: f64| {
        grid(&dims, move |i| {
            i.iter().map(|&x| (x as f64 - 10.0).powi(2)).sum::<f64>() <= r * r
        })
    };
    let (g, p) = (ball(8.0), ball(5.0));
    let s = case_scores(&p, &g, &dims, &[1.0, 1.0, 1.0], 2.0);
    assert!((s.hd95 - 3.0).abs() < 1.0, "{}", s.hd95);
    assert!(s.nsd < 0.2, "{}", s.nsd);
    assert!(case_scores(&p, &g, &dims, &[1.0, 1.0, 1.0], 4.0).nsd > 0.95);
    let vol = |m: &[bool]| m.iter().filter(|&&b| b).count() as f64;
    assert!(close(s.dice, 2.0 * vol(&p) / (vol(&p) + vol(&g))));
}

/// A small deterministic generator (no test dependency on rand's algorithms).
fn lcg(state: &mut u64) -> f64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

fn random_blobs(dims: &[usize], seed: u64, n: usize) -> Vec<bool> {
    let mut s = seed;
    let centres: Vec<(Vec<f64>, f64)> = (0..n)
        .map(|_| {
            let c = dims.iter().map(|&d| lcg(&mut s) * d as f64).collect();
            (c, 1.0 + lcg(&mut s) * 3.0)
        })
        .collect();
    grid(dims, |i| {
        centres.iter().any(|(c, r)| {
            i.iter()
                .zip(c)
                .map(|(&x, &y)| (x as f64 - y).powi(2))
                .sum::<f64>()
                <= r * r
        })
    })
}

#[test]
fn distance_transform_equals_brute_force() {
    for (dims, spacing, seed) in [
        (vec![9usize, 13], vec![1.0, 1.0], 1u64),
        (vec![7, 11], vec![2.5, 0.4], 2),
        (vec![5, 8, 6], vec![3.6, 0.6, 0.625], 3),
    ] {
        let f = random_blobs(&dims, seed, 2)
            .iter()
            .zip(random_blobs(&dims, seed + 10, 3))
            .map(|(&a, b)| a && !b)
            .collect::<Vec<_>>();
        let d = distance_sq(&f, &dims, &spacing);
        let (mut ia, mut ib) = (vec![0; dims.len()], vec![0; dims.len()]);
        for (i, &di) in d.iter().enumerate() {
            unravel(i, &dims, &mut ia);
            let mut best = f64::INFINITY;
            for j in (0..f.len()).filter(|&j| f[j]) {
                unravel(j, &dims, &mut ib);
                let d2: f64 = (0..dims.len())
                    .map(|a| ((ia[a] as f64 - ib[a] as f64) * spacing[a]).powi(2))
                    .sum();
                best = best.min(d2);
            }
            assert!(
                (di - best).abs() <= 1e-9 * best.max(1.0)
                    || (di.is_infinite() && best.is_infinite()),
                "{dims:?} voxel {i}: {di} vs brute force {best}"
            );
        }
    }
}

/// The same cases scored by `scripts/surface_reference.py` (SciPy's distance transform). Needs a Python with
/// NumPy and SciPy: `EVOSAM_PYTHON` names it (`.ci/run` builds one); ignored elsewhere.
#[test]
#[ignore = "needs Python with NumPy + SciPy in EVOSAM_PYTHON (.ci/run sets it up)"]
fn matches_scipy_reference() {
    let python = std::env::var("EVOSAM_PYTHON")
        .expect("EVOSAM_PYTHON must name a Python with NumPy and SciPy for this test");
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for k in 0..12u64 {
        let (dims, spacing): (Vec<usize>, Vec<f64>) = match k % 3 {
            0 => (vec![24, 31], vec![1.0, 1.0]),
            1 => (vec![19, 23], vec![0.8, 1.7]),
            _ => (vec![6, 17, 15], vec![3.6, 0.625, 0.6]),
        };
        let gt = random_blobs(&dims, 100 + k, 3);
        // a prediction near the ground truth: the same blobs' generator with other radii, or an empty one
        let pred = if k == 11 {
            vec![false; gt.len()]
        } else {
            random_blobs(&dims, 100 + k + 50 * (k % 2), 3)
        };
        let tau = [1.0, 2.0, 2.5][(k % 3) as usize];
        let s = case_scores(&pred, &gt, &dims, &spacing, tau);
        ours.push([s.dice, s.nsd, s.hd95]);
        let bits = |m: &[bool]| m.iter().map(|&b| b as u8).collect::<Vec<_>>();
        cases.push(serde_json::json!({
            "dims": dims, "spacing": spacing, "tau": tau, "pred": bits(&pred), "gt": bits(&gt)
        }));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/surface_reference.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::json!({ "cases": cases }).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "reference script failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (k, (r, o)) in v["scores"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&ours)
        .enumerate()
    {
        for m in 0..3 {
            let want = r[m].as_f64().unwrap();
            assert!(
                (want - o[m]).abs() < 1e-9,
                "case {k} metric {m}: ours {} scipy {want}",
                o[m]
            );
        }
    }
    eprintln!("{} cases match SciPy (Dice, NSD, HD95)", ours.len());
}
