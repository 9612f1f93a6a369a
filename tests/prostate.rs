//! The prostate MRI path on real volumes (../shared/data/prostate, or $EVOSAM_SHARED_DATA): test cases are whole
//! volumes, their scores are those of the saved prediction volumes, and the saved volumes carry the input's
//! affine (checked with nibabel where `EVOSAM_PYTHON` names a Python that has it).

mod common;

use common::{read, run, shared_data, text, write};
use std::path::PathBuf;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Two strategies on 2 training + 1 test RUNMC volumes through the shipped study's data settings.
#[test]
#[ignore = "needs ../shared/data/prostate or $EVOSAM_SHARED_DATA, and the LiteMedSAM weights (run with --ignored)"]
fn volume_scores_match_saved_predictions() {
    let data = shared_data().join("prostate");
    assert!(
        data.join("RUNMC").is_dir(),
        "this test needs prostate/RUNMC under {} (set EVOSAM_SHARED_DATA)",
        shared_data().display()
    );
    let data = data.canonicalize().unwrap();
    let shipped = read(&crate_dir().join("experiments/prostate-mri.toml"));
    // the study's first task only, on Case00-Case02 (Case02 is the test volume), two strategies, one epoch
    let task_end = shipped
        .find("\n[[stream.task]]\nname = \"NCI-384\"")
        .unwrap();
    let head = &shipped[..task_end];
    let head = head
        .replace(
            "${EVOSAM_SHARED_DATA:-../../shared/data}/prostate",
            &data.display().to_string(),
        )
        .replace(
            "images = \"Case*.nii.gz\"",
            "images = \"Case0[0-2].nii.gz\"",
        )
        .replace(
            "labels = \"Case*_Segmentation.nii.gz\"",
            "labels = \"Case0[0-2]_Segmentation.nii.gz\"",
        )
        .replace("test_fraction = 0.3", "test_ids = [\"Case02\"]")
        .replace("max_train = 32", "max_train = 8")
        .replace("max_test_volumes = 5\n", "")
        .replace("seeds = [0, 1, 2]", "seeds = [0]")
        .replace("orders = [\"given\", \"reverse\"]", "orders = [\"given\"]");
    let spec = format!(
        "{head}\n[model]\nweights = \"lite_medsam\"\n\n[train]\nepochs = 1\nbatch_size = 4\n\n[eval]\nsave_predictions = true\n\n\
         [[strategy]]\npreset = \"zeroshot\"\n\n[[strategy]]\npreset = \"finetune\"\n"
    );
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "prostate.toml", &spec);
    let o = run(&p, &tmp.path().join("out"), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let dir = tmp.path().join("out/prostate-mri");
    let scores = read(&dir.join("scores.csv"));
    let header: Vec<&str> = scores.lines().next().unwrap().split(',').collect();
    let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
    let rows: Vec<Vec<&str>> = scores
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    // one row per (strategy, stage) for the one test volume: no slice rows
    assert_eq!(rows.len(), 2 * 2, "{scores}");
    assert!(rows.iter().all(|r| r[col("case")] == "Case02"), "{scores}");
    let label =
        evosam::data::nifti::read_volume(&data.join("RUNMC/Case02_Segmentation.nii.gz")).unwrap();
    for strategy in ["zeroshot", "finetune"] {
        let r = rows
            .iter()
            .find(|r| r[col("strategy")] == strategy && r[col("stage")] == "1")
            .unwrap();
        let pred_path = dir.join(format!(
            "predictions/{strategy}__seed0__given/RUNMC/Case02.nii.gz"
        ));
        let pred = evosam::data::nifti::read_volume(&pred_path).unwrap();
        assert_eq!(pred.dims, label.dims);
        let (mut inter, mut np, mut ng) = (0usize, 0usize, 0usize);
        for (p, g) in pred.data.iter().zip(&label.data) {
            let (p, g) = (*p > 0.5, *g > 0.5);
            inter += (p && g) as usize;
            np += p as usize;
            ng += g as usize;
        }
        let dice = 2.0 * inter as f64 / (np + ng) as f64;
        let written: f64 = r[col("dice")].parse().unwrap();
        assert!(
            (dice - written).abs() < 1e-12,
            "{strategy}: scores.csv {written}, saved volume {dice}"
        );
        let nsd: f64 = r[col("nsd")].parse().unwrap();
        let hd95: f64 = r[col("hd95")].parse().unwrap();
        assert!((0.0..=1.0).contains(&nsd) && hd95 >= 0.0, "{nsd} {hd95}");
        eprintln!("{strategy}: volume Dice {dice:.4} (scores.csv {written:.4}), NSD {nsd:.4}, HD95 {hd95:.2} mm");
        if strategy == "zeroshot" {
            // LiteMedSAM with the label's boxes segments the gland well on RUNMC
            assert!(dice > 0.7, "zero-shot volume Dice {dice}");
        }
        check_affine_with_nibabel(&pred_path, &data.join("RUNMC/Case02.nii.gz"));
    }
    // the secondary per-slice table: one row per prompted slice of Case02, per strategy and stage
    let slices = read(&dir.join("slice_scores.csv"));
    let n_slices = slices
        .lines()
        .skip(1)
        .filter(|l| l.contains(",Case02/0"))
        .count();
    assert!(n_slices >= 2 * 2 * 5 && n_slices % 4 == 0, "{slices}");
    assert!(dir.join("report-nsd/tables/summary.md").is_file());
    let md = read(&dir.join("report-nsd/tables/summary.md"));
    assert!(md.contains("NSD RUNMC"), "{md}");
}

/// The saved prediction opens with nibabel and has the image's affine and shape (where EVOSAM_PYTHON has
/// nibabel; otherwise says it was not checked).
fn check_affine_with_nibabel(pred: &std::path::Path, image: &std::path::Path) {
    let Ok(python) = std::env::var("EVOSAM_PYTHON") else {
        eprintln!(
            "note: EVOSAM_PYTHON not set: the nibabel check of {} was not run",
            pred.display()
        );
        return;
    };
    let code = "import sys, nibabel as nib, numpy as np\n\
                p, i = nib.load(sys.argv[1]), nib.load(sys.argv[2])\n\
                assert p.shape == i.shape, (p.shape, i.shape)\n\
                assert np.allclose(p.affine, i.affine), (p.affine, i.affine)\n\
                print('nibabel: shape', p.shape, 'affine matches')";
    let o = std::process::Command::new(python)
        .arg("-c")
        .arg(code)
        .arg(pred)
        .arg(image)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    eprint!("{}", String::from_utf8_lossy(&o.stdout));
}
