use super::*;
use std::path::Path;

fn spec_in(dir: &Path) -> Spec {
    let text = "[experiment]\nname = \"x\"\n[stream]\n[[stream.task]]\nname = \"a\"\nsource = \"synthetic\"\nfamily = \"vessels\"\n[[strategy]]\npreset = \"zeroshot\"\n";
    Spec::from_str_at(text, &dir.join("spec.toml"), dir).unwrap()
}

/// A gzip stream with stored (uncompressed) deflate blocks.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    let crc = !crc;
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let chunks: Vec<&[u8]> = data.chunks(65535).collect();
    for (i, c) in chunks.iter().enumerate() {
        out.push((i + 1 == chunks.len()) as u8);
        let n = c.len() as u16;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(!n).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[test]
fn reads_slices_and_splits_by_case() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("vols");
    std::fs::create_dir_all(&d).unwrap();
    // 4 cases, 6x5x4 volumes; label foreground only in slices z = 1 and 2, value 1 at x < 2 (z=1), 2 at z=2
    for c in 0..4 {
        write_nifti_f32(&d.join(format!("case{c}.nii")), [6, 5, 4], |x, y, z| {
            (c * 100 + x + 10 * y + z) as f32
        })
        .unwrap();
        write_nifti_f32(
            &d.join(format!("case{c}_seg.nii")),
            [6, 5, 4],
            |x, _, z| match z {
                1 if x < 2 => 1.0,
                2 if x >= 3 => 2.0,
                _ => 0.0,
            },
        )
        .unwrap();
    }
    let v = read_volume(&d.join("case1.nii")).unwrap();
    assert_eq!(v.dims, [6, 5, 4]);
    // logical index (x*Y + y)*Z + z
    assert_eq!(v.data[(3 * 5 + 2) * 4 + 1], (100 + 3 + 20 + 1) as f32);

    let spec = spec_in(dir.path());
    let n: NiftiSpec = toml::from_str(
        "root = \"vols\"\nimages = \"case*.nii\"\nlabels = \"case*_seg.nii\"\nstrip = [\"_seg\"]\ntest_ids = [\"case2\"]",
    )
    .unwrap();
    n.validate().unwrap();
    let (tr, te) = n.load(&spec, "a").unwrap();
    // 3 train cases x 2 foreground slices; 1 test volume with 2 prompted slices
    assert_eq!((tr.len(), te.len(), te[0].slices.len()), (6, 1, 2));
    assert_eq!(te[0].id, "case2");
    assert!(tr.iter().all(|c| !c.id.starts_with("case2/")));
    // the volume keeps its whole label in the slice frame (4 slices of 5 rows x 6 columns)
    assert_eq!(te[0].dims, [4, 5, 6]);
    assert_eq!(te[0].gt.iter().filter(|&&g| g).count(), 2 * 5 + 3 * 5);
    assert_eq!(
        te[0].slices.iter().map(|(z, _)| *z).collect::<Vec<_>>(),
        [1, 2]
    );
    let c = &te[0].slices[0].1;
    assert_eq!(c.id, "case2/001");
    assert_eq!((c.mask.w, c.mask.h), (6, 5)); // axis 2: rows = y, cols = x
    assert_eq!(c.mask.count(), 2 * 5);
    match &c.image {
        ImageSource::Raw(r) => assert_eq!(r.data[2 * 6 + 4], (200 + 4 + 20 + 1) as f32), // (y=2, x=4)
        _ => panic!(),
    }
    // label_values picks only value 2 -> only slice 2 stays
    let n2: NiftiSpec = toml::from_str(
        "root = \"vols\"\nimages = \"case*.nii\"\nlabels = \"case*_seg.nii\"\nstrip = [\"_seg\"]\ntest_fraction = 0.5\nlabel_values = [2]\naxis = 2",
    )
    .unwrap();
    let (tr, te) = n2.load(&spec, "a").unwrap();
    assert_eq!((tr.len(), te.len()), (2, 2));
    assert!(te
        .iter()
        .all(|v| v.slices.len() == 1 && v.gt.iter().filter(|&&g| g).count() == 3 * 5));
    assert!(tr
        .iter()
        .all(|c| !te.iter().any(|v| c.id.starts_with(&format!("{}/", v.id)))));
    // all slices, axis 0
    let n3: NiftiSpec = toml::from_str(
        "root = \"vols\"\nimages = \"case*.nii\"\nlabels = \"case*_seg.nii\"\nstrip = [\"_seg\"]\ntest_ids = [\"case0\"]\naxis = 0\nforeground_only = false",
    )
    .unwrap();
    let (tr, te) = n3.load(&spec, "a").unwrap();
    // axis 0: 6 slices of 4 rows (z) x 5 columns (y) per volume; every slice prompted
    assert_eq!((tr.len(), te.len(), te[0].slices.len()), (18, 1, 6));
    let m = &te[0].slices[0].1.mask;
    assert_eq!((m.w, m.h), (5, 4));
    assert_eq!(te[0].dims, [6, 4, 5]);

    // .nii.gz volumes (gzip with stored deflate blocks) read the same
    let gz = |src: &Path, dst: &Path| {
        let raw = std::fs::read(src).unwrap();
        std::fs::write(dst, gzip_stored(&raw)).unwrap();
    };
    let g = dir.path().join("gz");
    std::fs::create_dir_all(&g).unwrap();
    gz(&d.join("case1.nii"), &g.join("case1.nii.gz"));
    let vz = read_volume(&g.join("case1.nii.gz")).unwrap();
    assert_eq!(vz.dims, v.dims);
    assert_eq!(vz.data, v.data);

    // corrupt file -> error naming it, no panic
    std::fs::write(d.join("case3.nii"), b"garbage").unwrap();
    let e = n.load(&spec, "a").err().unwrap().to_string();
    assert!(e.contains("case3.nii"), "{e}");
    // missing label
    std::fs::remove_file(d.join("case1_seg.nii")).unwrap();
    let e = n.plan(&spec, "a").err().unwrap().to_string();
    assert!(e.contains("case1.nii") && e.contains("no label"), "{e}");
    assert!(toml::from_str::<NiftiSpec>(
        "images = \"a\"\nlabels = \"b\"\naxis = 3\ntest_fraction = 0.2"
    )
    .unwrap()
    .validate()
    .is_err());
}

#[test]
fn max_test_counts_volumes_and_old_key_is_refused() {
    let base = "images = \"a\"\nlabels = \"b\"\ntest_fraction = 0.2\n";
    let e = toml::from_str::<NiftiSpec>(&format!("{base}max_test = 4"))
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.path.to_string(), "max_test");
    assert!(e.msg.contains("max_test_volumes"), "{}", e.msg);
    for bad in [
        "max_test_volumes = 0",
        "intensity = { clip = [99.0, 1.0] }",
        "intensity = { clip = [0.0, 101.0] }",
    ] {
        assert!(
            toml::from_str::<NiftiSpec>(&format!("{base}{bad}"))
                .unwrap()
                .validate()
                .is_err(),
            "{bad}"
        );
    }
    let ok: NiftiSpec = toml::from_str(&format!("{base}max_test_volumes = 2")).unwrap();
    ok.validate().unwrap();
    assert_eq!(ok.intensity.clip, [0.5, 99.5]);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("v");
    std::fs::create_dir_all(&d).unwrap();
    for c in 0..5 {
        write_nifti_f32(&d.join(format!("k{c}.nii")), [4, 4, 3], |x, y, z| {
            (x + y + z) as f32
        })
        .unwrap();
        write_nifti_f32(&d.join(format!("k{c}_seg.nii")), [4, 4, 3], |x, _, _| {
            (x == 1) as u8 as f32
        })
        .unwrap();
    }
    let spec = spec_in(dir.path());
    let n: NiftiSpec = toml::from_str(
        "root = \"v\"\nimages = \"k*.nii\"\nlabels = \"k*_seg.nii\"\nstrip = [\"_seg\"]\ntest_ids = [\"k0\", \"k1\", \"k2\", \"k3\"]\nmax_test_volumes = 2",
    )
    .unwrap();
    let (_, te) = n.load(&spec, "a").unwrap();
    assert_eq!(te.len(), 2);
    assert!(te.iter().all(|v| v.slices.len() == 3));
    // label values that mark nothing: an input error naming the task
    let none: NiftiSpec = toml::from_str(
        "root = \"v\"\nimages = \"k*.nii\"\nlabels = \"k*_seg.nii\"\nstrip = [\"_seg\"]\ntest_ids = [\"k0\"]\nlabel_values = [7]",
    )
    .unwrap();
    let e = none.load(&spec, "prostate").err().unwrap().to_string();
    assert!(
        e.contains("\"prostate\"") && e.contains("label_values"),
        "{e}"
    );
}

#[test]
fn percentile_clip_matches_numpy() {
    // numpy.percentile(0..=99, [0.5, 99.5]) = [0.495, 98.505]; values outside are clipped to them
    let mut v: Vec<f32> = (0..100).rev().map(|x| x as f32).collect();
    let (lo, hi) = clip_percentiles(&mut v, 0.5, 99.5);
    assert!(
        (lo - 0.495).abs() < 1e-5 && (hi - 98.505).abs() < 1e-4,
        "{lo} {hi}"
    );
    assert_eq!(v[0], hi);
    assert_eq!(v[99], lo);
    assert_eq!(v[50], 49.0);
    // a bright outlier no longer sets the top of the scale
    let mut w = vec![1.0f32; 999];
    w.push(1e6);
    let (_, hi) = clip_percentiles(&mut w, 0.5, 99.5);
    assert_eq!(hi, 1.0);
}

#[test]
fn spacing_is_read_and_predictions_keep_the_affine() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.nii");
    write_nifti_f32_spaced(&img, [5, 4, 3], [0.625, 0.6, 3.6], |x, y, z| {
        (x * y * z) as f32
    })
    .unwrap();
    let v = read_volume(&img).unwrap();
    assert_eq!(v.spacing, [0.625f32 as f64, 0.6f32 as f64, 3.6f32 as f64]);
    // axis 2: slice frame (slices, rows, cols) = (z, y, x)
    assert_eq!(
        slice_frame(2, v.spacing),
        [v.spacing[2], v.spacing[1], v.spacing[0]]
    );
    let mask: Vec<u8> = (0..60).map(|i| (i % 7 == 0) as u8).collect();
    let out = dir.path().join("pred/img.nii.gz");
    write_mask_volume(&out, [5, 4, 3], &mask, &img).unwrap();
    let back = read_volume(&out).unwrap();
    assert_eq!(back.dims, [5, 4, 3]);
    assert_eq!(
        back.data,
        mask.iter().map(|&m| m as f32).collect::<Vec<_>>()
    );
    assert_eq!(back.spacing, v.spacing);
    let (a, b) = (
        nifti::NiftiHeader::from_file(&img).unwrap(),
        nifti::NiftiHeader::from_file(&out).unwrap(),
    );
    assert_eq!(
        (a.srow_x, a.srow_y, a.srow_z, a.sform_code),
        (b.srow_x, b.srow_y, b.srow_z, b.sform_code)
    );
    assert_eq!(b.datatype, 2); // uint8
}
